"""Controller side of a run: spec, round loop, Ray, MLflow."""
