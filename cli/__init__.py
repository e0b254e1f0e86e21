"""The typer CLI: thin commands that parse, call and print."""
