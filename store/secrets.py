"""Secrets never leave the machine they were given on: one place decides what is masked.

Masked: the credentials of any URL in text (`scheme://user:PASS@host` -> `user:***@`, and a bare
`scheme://TOKEN@host` -> `***@`), found by taking each URL apart rather than by one pattern, so a
password holding `/` or `@` is masked whole; the value of every secret-named query or
connection-string parameter (`?sig=`, `&X-Amz-Security-Token=`, `;AccountKey=`); and values whose
key is exactly a secret's name (`password`, `aws_session_token`, ...). Matching is by whole key name,
never by substring: `tokens` (a stage's token budget) or `tokenizer` are what users compare across
runs and stay visible.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
SECRET_KEYS = frozenset({
    "password", "passwd", "pwd", "secret", "secret_key", "client_secret", "token", "auth_token",
    "access_token", "refresh_token", "api_token", "api_key", "apikey", "access_key", "access_key_id",
    "secret_access_key", "aws_secret_access_key", "private_key", "credentials",
    # cloud object storage: session credentials, signed URLs, Azure keys and connection strings
    "session_token", "aws_session_token", "security_token", "x_amz_security_token", "x_amz_signature",
    "x_amz_credential", "x_goog_signature", "x_goog_credential", "sig", "signature", "sas_token", "sas",
    "account_key", "accountkey", "sharedaccesskey", "sharedaccesssignature", "connection_string",
    "connectionstring",
})
_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.I)
_HOST = re.compile(r"[\w.\-\[\]:%]+(?![\w.\-\[\]:%@])")
_QUERY_SECRETS = re.compile(r"(?P<key>[?&;](?P<name>[A-Za-z0-9_.-]+)=)(?P<value>[^&;#\s'\"]+)")


def _redact_url(url: str) -> str:
    """One URL with its userinfo masked. The userinfo ends at the last `@` followed by a host, so
    a password holding `/`, `?`, `#` or `@` is masked whole; a bare `TOKEN@host` (a token as the user
    name) is masked whole, while `s3://bucket/key@v2` (an `@` in a path) is left alone."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    while at >= 0 and not _HOST.match(rest, at + 1):
        at = rest.rfind("@", 0, at)
    if at < 0:
        return url
    info = rest[:at]
    user, colon, _ = info.partition(":")
    if colon and not set("/?#") & set(user):
        return f"{scheme}{sep}{user}:{MASK}{rest[at:]}"
    if not colon and info and not set("/?#") & set(info):
        return f"{scheme}{sep}{MASK}{rest[at:]}"
    return url


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it masked, and the value of every secret-named
    query or connection-string parameter."""
    text = _URL.sub(lambda m: _redact_url(m[0]), text)
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
