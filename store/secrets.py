"""Secrets never leave the machine they were given on: one place decides what is masked.

Masked: the password of any URL with credentials (`scheme://user:pass@host`) wherever it appears
in text, and values whose key is exactly a secret's name (`password`, `api_key`, ...). Matching is
by whole key name, never by substring: `tokens` (a stage's token budget) or `tokenizer` are what
users compare across runs and stay visible.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
SECRET_KEYS = frozenset({
    "password", "passwd", "pwd", "secret", "secret_key", "client_secret", "token", "auth_token",
    "access_token", "refresh_token", "api_token", "api_key", "apikey", "access_key", "access_key_id",
    "secret_access_key", "aws_secret_access_key", "private_key", "credentials",
})
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@", re.I)


_QUERY_SECRETS = re.compile(r"(?P<key>[?&;](?P<name>[A-Za-z0-9_.-]+)=)(?P<value>[^&;#\s'\"]+)")


def redact(text: str) -> str:
    """`text` with the password of every URL in it masked (`user:***@`), and the value of every
    secret-named query parameter (`?secret_key=...`, `&token=...`)."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _QUERY_SECRETS.sub(lambda m: f"{m['key']}{MASK}" if is_secret_key(m["name"]) else m[0], text)


def is_secret_key(key: str) -> bool:
    """Whether a (possibly dotted) key names a secret, by its last component."""
    return key.rsplit(".", 1)[-1].strip().lower().replace("-", "_") in SECRET_KEYS


def redact_tree(value: Any, key: str = "") -> Any:
    """A copy of a JSON-like tree with secret-named values masked and URL passwords redacted."""
    if key and is_secret_key(key) and value not in (None, ""):
        return MASK
    if isinstance(value, dict):
        return {k: redact_tree(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def redacted_yaml(tree: dict[str, Any]) -> str:
    """A config tree as YAML with secrets masked: what may go to MLflow or into a report."""
    import yaml

    return yaml.safe_dump(redact_tree(tree), sort_keys=False)
