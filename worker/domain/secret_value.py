"""Turn a secret's JSON value into credentials, naming the field at fault and never the value."""

from __future__ import annotations

import json
from typing import Any

from worker.domain.errors import SecretFormatError
from worker.domain.model import AccessKeyCredentials, Credentials, RoleCredentials

_KEY_ID_FIELDS = ("access_key_id", "AccessKeyId", "aws_access_key_id")
_SECRET_FIELDS = ("secret_access_key", "SecretAccessKey", "aws_secret_access_key")


def parse_secret_value(raw: str | None, *, where: str) -> Credentials:
    """Parse the JSON of one secret version. ``where`` names it in errors (never the value)."""
    if raw is None:
        raise SecretFormatError(
            f"{where}: the secret has no SecretString (binary secrets are not supported)"
        )
    try:
        data = json.loads(raw)
    except ValueError:
        raise SecretFormatError(f"{where}: the secret value is not valid JSON") from None
    if not isinstance(data, dict):
        raise SecretFormatError(f"{where}: the secret value must be a JSON object")
    region = _optional_str(data, "region", where)
    endpoint = _optional_str(data, "endpoint_url", where)
    if "role_arn" in data or "RoleArn" in data:
        role = _first(data, ("role_arn", "RoleArn"), where, "role_arn")
        if not role.startswith("arn:"):
            raise SecretFormatError(f"{where}: field 'role_arn' is not an ARN")
        return RoleCredentials(
            role_arn=role,
            external_id=_optional_str(data, "external_id", where),
            region=region,
            endpoint_url=endpoint,
        )
    key_id = _first(data, _KEY_ID_FIELDS, where, "access_key_id")
    secret = _first(data, _SECRET_FIELDS, where, "secret_access_key")
    if len(key_id) < 4 or not key_id.isalnum():
        raise SecretFormatError(
            f"{where}: field 'access_key_id' does not look like an access key id"
        )
    return AccessKeyCredentials(
        access_key_id=key_id, secret_access_key=secret, region=region, endpoint_url=endpoint
    )


def _first(data: dict[str, Any], names: tuple[str, ...], where: str, label: str) -> str:
    for name in names:
        if name in data:
            value = data[name]
            if not isinstance(value, str) or not value:
                raise SecretFormatError(f"{where}: field '{name}' must be a non-empty string")
            return _printable(value, name, where)
    spelled = " or ".join(f"'{n}'" for n in names[:2])
    raise SecretFormatError(f"{where}: missing field {spelled} ({label})")


def _optional_str(data: dict[str, Any], name: str, where: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SecretFormatError(f"{where}: field '{name}' must be a non-empty string")
    return _printable(value, name, where)


def _printable(value: str, name: str, where: str) -> str:
    """A credential is text Databend can take in a statement: a control character (NUL, a
    newline) is refused here, naming the field, rather than by a statement half a run later."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise SecretFormatError(f"{where}: field '{name}' holds a control character")
    return value
