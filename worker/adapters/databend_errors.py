"""The Databend adapter's one error translator: what ``databend-driver`` raises, and Databend's own
(code, message) pairs, mapped onto the tree of ``worker.domain.errors``. Databend echoes SQL (and
so credentials) in some errors: every message passes the redaction guard on its way out."""

from __future__ import annotations

import re

from worker.domain.errors import (
    ConcurrentTableChange,
    DatabendQueryError,
    DatabendUnavailable,
    RotatorError,
    StoragePermissionDenied,
    StorageUnavailable,
)
from worker.observe.redaction import redact

_PERMISSION_CODES = {3002, 1063, 2201}  # StoragePermissionDenied, PermissionDenied, AuthFailure
_TRANSIENT_TEXT = re.compile(
    r"timed? ?out|timeout|connection (reset|refused|closed|error)|broken pipe|temporarily|"
    r"slow ?down|throttl|503|502|500 internal|504|service unavailable|no free engine session|"
    r"error sending request|tcp connect",
    re.I,
)
_DRIVER_CODE = re.compile(r"\[(\d{3,5})\]")


def classify_databend_error(code: int, message: str) -> RotatorError:
    """Map Databend's (code, message) onto the tree."""
    if code in _PERMISSION_CODES or re.search(r"\b403\b|access ?denied|forbidden", message, re.I):
        return StoragePermissionDenied(code, message)
    if code == 3901:  # StorageUnavailable: an invalid new key looks the same as an S3 outage
        if _TRANSIENT_TEXT.search(message):
            return StorageUnavailable(f"[{code}] {message}")
        return DatabendQueryError(code, message)
    if code == 2009 or "TableVersionMismatched" in message:
        return ConcurrentTableChange(f"[{code}] {message}")
    if code in (1043, 1079) or (code in (1001, 0) and _TRANSIENT_TEXT.search(message)):
        return DatabendUnavailable(f"[{code}] {message}")
    return DatabendQueryError(code, message)


def classify_driver_error(exc: BaseException) -> RotatorError:
    """Map an exception raised by ``databend_driver`` onto the tree."""
    text = str(exc)
    kind = type(exc).__name__
    match = _DRIVER_CODE.search(text)
    if "QueryFailed" in text and match:
        return classify_databend_error(int(match.group(1)), _driver_message(text))
    if "AuthFailure" in text or re.search(r"\b401\b", text):
        # wrong user or password: retrying cannot help (the driver raises it as an
        # OperationalError, like a connection failure)
        return DatabendQueryError(2201, _driver_message(text))
    if kind in ("OperationalError", "InterfaceError") or _TRANSIENT_TEXT.search(text):
        return DatabendUnavailable(_driver_message(text))
    if match:
        return classify_databend_error(int(match.group(1)), _driver_message(text))
    return DatabendQueryError(0, _driver_message(text))


def _driver_message(text: str) -> str:
    """The driver's text without its prefix and version suffix, credentials redacted."""
    text = re.sub(r"^APIError: ", "", text.strip())
    return redact(re.sub(r"\s*\[v\d+\.\d+\.\d+\]\s*$", "", text))
