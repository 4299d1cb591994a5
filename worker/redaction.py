"""Keep secret values out of every log line, error and result.

Adapters that read a secret register its sensitive strings here; ``redact`` replaces any
registered string (and anything that looks like an AWS secret access key) wherever it appears.
Access key ids are shortened to Databend's own ``******XYZ`` form.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

_lock = threading.Lock()
_secrets: dict[str, str] = {}  # value -> replacement
_SENSITIVE_FIELDS = re.compile(r"secret|password|token|external_id|access_key", re.I)
# 40-character base64-ish strings are how AWS secret access keys look
_SECRET_KEY_SHAPE = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
MASK = "[REDACTED]"


def register_secret(value: str, replacement: str = MASK) -> None:
    if isinstance(value, str) and len(value) >= 4:
        with _lock:
            _secrets[value] = replacement


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
        if re.search(r"access_?key_?id", key, re.I):
            register_secret(value, f"******{value[-3:]}")
        elif _SENSITIVE_FIELDS.search(key):
            register_secret(value)


def redact(text: str) -> str:
    with _lock:
        items = sorted(_secrets.items(), key=lambda kv: -len(kv[0]))
    for value, replacement in items:
        if value in text:
            text = text.replace(value, replacement)
    return _SECRET_KEY_SHAPE.sub(MASK, text)


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            k: (
                MASK
                if _SENSITIVE_FIELDS.search(str(k))
                and isinstance(v, str)
                and not str(k).lower().endswith("_id")
                else redact_value(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value
