"""Keep secret values out of every log line, error and result.

Two guards, applied together:

- **By value.** Adapters that read a secret register its sensitive strings here; ``redact``
  replaces each of them, and the forms they take once escaped into SQL (``''``, ``\\'``) or into
  JSON / a Rust debug string (``\\"``, ``\\\\``), wherever they appear. Access key ids are
  shortened to Databend's own ``******XYZ`` form.
- **By shape.** Whatever was never registered: a 40-character AWS secret access key, an STS
  session token, the password of a URL (``databend://user:pw@host``, ``redis://:pw@host``) or of a
  ``password=`` parameter, and the quoted value after ``SECRET_ACCESS_KEY=``, ``SESSION_TOKEN=``,
  ``PASSWORD=`` … in SQL that Databend echoes back in an error, however it escaped the quotes
  and even when the echo is cut off inside the literal.

``redact_field`` also masks a value by its key (``password``, ``secret``, ``token``, ``dsn``, …),
at the top level of a log event as in nested data; identifiers under such keys stay readable
(a secret's ARN under ``secret``, ``secret_id``, ``access_key_id`` as ``******XYZ``).
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

_lock = threading.Lock()
_secrets: dict[str, str] = {}  # value -> replacement
_longest_first: list[tuple[str, str]] = []  # _secrets' items, longest value first
MASK = "[REDACTED]"

# keys whose values are secrets
_SENSITIVE_FIELDS = re.compile(
    r"secret|password|passwd|token|external_?id|access_?key|credential|private_?key|dsn", re.I
)
# ... unless the key names an identifier (a secret's id, ARN or name; a version's request token)
_IDENTIFIER_FIELD = re.compile(r"(_id|Id|_ID|_arn|Arn|_ARN|_name|Name|_NAME|[Rr]equest_?[Tt]oken)$")
_SECRET_VALUE_FIELD = re.compile(r"external_?id$", re.I)  # an "_id" that is a secret
_KEY_ID_FIELD = re.compile(r"access_?key_?id", re.I)
_URL_FIELD = re.compile(r"dsn|url|uri", re.I)  # keep the address, mask only its password
_SECRET_ARN = re.compile(r"arn:aws[\w-]*:secretsmanager:[\w-]+:\d{12}:secret:[\w/+=.@-]+\Z")

# 40-character base64-ish strings are how AWS secret access keys look
_SECRET_KEY_SHAPE = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
# STS session tokens: base64 with a known start (FwoG…, FQoG…, IQoJ…, AgoJ…, AQoD…), or any
# base64 run of 100+ characters (no identifier of this project is that long)
_SESSION_TOKEN_SHAPE = re.compile(
    r"(?<![A-Za-z0-9/+])(?:(?:FwoG|FQoG|IQoJ|AgoJ|AQoD)[A-Za-z0-9/+]{40,}|[A-Za-z0-9/+]{100,})=*"
)
# scheme://user:password@host (the password may hold '@' or '/': up to the last '@')
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"]*:)([^\s'\"]+)@")
_PASSWORD_PARAM = re.compile(r"\b(password|passwd|pwd)=(?!\[REDACTED\])[^\s&;,'\")]+", re.I)
# KEY = '…' in SQL. The literal ends at a quote that is not escaped (no backslash or quote just
# before it, no quote just after it) and is followed by a delimiter; without one, at the end of the
# text (an echo cut off inside the literal). Ambiguous escapes make it end later, never earlier.
_SQL_SECRET = re.compile(
    r"(?P<key>\b[A-Z_]{0,40}?"
    r"(?:SECRET|PASSWORD|TOKEN|CREDENTIAL|EXTERNAL_ID|ACCOUNT_KEY|PRIVATE_KEY)"
    r"[A-Z_]{0,40}\s*=\s*)(?P<quote>['\"])(?P<body>.*?)"
    r"(?:(?<![\\'\"])(?P<end>(?P=quote))(?!['\"])(?=[\s,);]|\Z)|\Z)",
    re.I | re.S,
)


def _escaped_forms(value: str) -> set[str]:
    """How ``value`` may be spelled in an echoed statement or a quoted error message."""
    sql = {
        value.replace("\\", "\\\\").replace("'", "''"),  # worker.domain.sql.quote_string
        value.replace("\\", "\\\\").replace("'", "\\'"),
        value.replace("'", "''"),
    }
    quoted = {v.replace("\\", "\\\\").replace('"', '\\"') for v in sql | {value}}
    return (sql | quoted) - {value}


def register_secret(value: str, replacement: str = MASK) -> None:
    global _longest_first
    if isinstance(value, str) and len(value) >= 4:
        with _lock:
            _secrets[value] = replacement
            for form in _escaped_forms(value):
                _secrets.setdefault(form, replacement)
            _longest_first = sorted(_secrets.items(), key=lambda kv: -len(kv[0]))


def register_secret_value(raw: str) -> None:
    """Register the sensitive fields of a secret's JSON value (and the raw value itself)."""
    register_secret(raw)
    try:
        data = json.loads(raw)
    except ValueError:
        return
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        if not isinstance(value, str):
            continue
        if _KEY_ID_FIELD.search(key):
            register_secret(value, f"******{value[-3:]}")
        elif _SENSITIVE_FIELDS.search(key):
            register_secret(value)


def _mask_sql_literal(match: re.Match[str]) -> str:
    quote = match["quote"]
    return f"{match['key']}{quote}{MASK}{quote if match['end'] else ''}"


def redact(text: str) -> str:
    for value, replacement in _longest_first:  # (a list replaced whole, never changed in place)
        if value in text:
            text = text.replace(value, replacement)
    # each pattern runs only where it could match: the SQL literal and the password parameter
    # need an '=', a URL's password '://' and '@', a key or a token 40 characters in a row
    if "=" in text:
        text = _SQL_SECRET.sub(_mask_sql_literal, text)
    if "://" in text and "@" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m[1]}{MASK}@", text)
    if "=" in text:
        text = _PASSWORD_PARAM.sub(lambda m: f"{m[1]}={MASK}", text)
    if len(text) >= 40:
        text = _SESSION_TOKEN_SHAPE.sub(MASK, text)
        text = _SECRET_KEY_SHAPE.sub(MASK, text)
    return text


def redact_field(key: Any, value: Any) -> Any:
    """A value under ``key``: masked whole when the key says it is a secret, else redacted."""
    name = str(key)
    if isinstance(value, str) and _SENSITIVE_FIELDS.search(name):
        if _KEY_ID_FIELD.search(name):
            return f"******{value[-3:]}" if len(value) > 3 else MASK
        if _URL_FIELD.search(name):
            return redact(value)
        if _SECRET_ARN.match(value):  # e.g. secret=<ARN>: which secret, not its value
            return value
        if _IDENTIFIER_FIELD.search(name) and not _SECRET_VALUE_FIELD.search(name):
            return redact(value)
        return MASK
    return redact_value(value)


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_field(k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value
