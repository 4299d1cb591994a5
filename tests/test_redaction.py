"""Redaction, table-driven: by key (top level and nested), by registered value (escaped forms too)
and by shape (URL passwords, STS session tokens, SQL literals Databend echoes back in errors)."""

from __future__ import annotations

import base64
import json
import logging
import os

import pytest
import structlog

from worker.adapters.databend_errors import classify_driver_error
from worker.observe.redaction import (
    MASK,
    redact,
    redact_field,
    register_secret,
    register_secret_value,
)

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/lake-main-AbCdEf"
# a secret with a quote, a space and a backslash: every way of escaping it differs
TRICKY = "wJalr'XUtn FEMI\\K7MDENG'bPxRfiCY"
TRICKY_PARTS = ("wJalr", "XUtn", "FEMI", "K7MDENG", "bPxRfiCY")
STS_TOKEN = "IQoJb3JpZ2luX2VjE" + base64.b64encode(os.urandom(300)).decode()
MOTO_TOKEN = "FQoGZXIvYXdzEBYaD" + base64.b64encode(os.urandom(266)).decode()[17:]


def assert_hidden(text: str, *parts: str) -> None:
    for part in parts:
        assert part not in text, f"{part!r} leaked in {text!r}"


# --- by key ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("password", "hunter2-password", MASK),
        ("secret", "plain-secret-value", MASK),
        ("secret", ARN, ARN),  # which secret, not its value
        ("token", "opaque-token-123", MASK),
        ("aws_session_token", STS_TOKEN, MASK),
        ("SessionToken", MOTO_TOKEN, MASK),
        ("SecretString", '{"a": 1}', MASK),
        ("external_id", "ext-id-secret", MASK),
        ("ExternalId", "ext-id-secret", MASK),
        ("access_key_id", "AKIAIOSFODNN7EXAMPLE", "******PLE"),
        ("secret_id", "databend/lake-main", "databend/lake-main"),
        ("ClientRequestToken", "0f3c2b1a-version", "0f3c2b1a-version"),
        (
            "dsn",
            "databend://rotator:pw-in-dsn@db.example:8000/default?sslmode=disable",
            f"databend://rotator:{MASK}@db.example:8000/default?sslmode=disable",
        ),
        ("redis_url", "redis://:pw-for-redis@10.0.0.5:6379/0", f"redis://:{MASK}@10.0.0.5:6379/0"),
        ("table", "sales.orders", "sales.orders"),
        ("tables", 3, 3),
    ],
)
def test_a_field_is_masked_by_its_key(key: str, value: object, shown: object) -> None:
    assert redact_field(key, value) == shown
    assert redact_field("nested", {key: value}) == {key: shown}


def test_top_level_fields_of_a_log_line_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.observe.logs import configure_logging

    configure_logging("INFO", "json")
    structlog.get_logger("t").info(
        "connected",
        password="hunter2-password",
        secret="plain-secret-value",
        token="opaque-token-123",
        dsn="databend://rotator:pw-in-dsn@db.example:8000/default",
        aws_session_token=STS_TOKEN,
        SessionToken=MOTO_TOKEN,
    )
    structlog.get_logger("t").info("run started", secret=ARN)
    logging.getLogger("celery.x").warning("broker redis://:pw-for-redis@10.0.0.5:6379/0 lost")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    text = json.dumps(lines)
    assert_hidden(
        text,
        "hunter2-password",
        "plain-secret-value",
        "opaque-token-123",
        "pw-in-dsn",
        STS_TOKEN[:40],
        MOTO_TOKEN[:40],
        "pw-for-redis",
    )
    assert lines[0]["dsn"] == f"databend://rotator:{MASK}@db.example:8000/default"
    assert lines[1]["secret"] == ARN


# --- by shape -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hidden", "kept"),
    [
        ("dsn databend://u:p%40ss-w0rd@h:8000/db", ("p%40ss-w0rd",), ("databend://u:", "@h:8000")),
        ("to databend://u:raw@pass/word@h:8000/db", ("raw@pass/word",), ("@h:8000",)),
        ("host=db password=Pa55-word! port=5", ("Pa55-word!",), ("host=db", "port=5")),
        ("?user=u&password=Pa55word&x=1", ("Pa55word",), ("&x=1",)),
        (f"AWS_SESSION_TOKEN={STS_TOKEN}", (STS_TOKEN[:40], STS_TOKEN[-40:]), ()),
        (f"token {MOTO_TOKEN} expired", (MOTO_TOKEN[:40], MOTO_TOKEN[-40:]), ("expired",)),
        ("no secret in s3://bucket/path/ or http://127.0.0.1:5055/", (), ("127.0.0.1:5055",)),
    ],
)
def test_secrets_are_found_by_their_shape(
    text: str, hidden: tuple[str, ...], kept: tuple[str, ...]
) -> None:
    out = redact(text)
    assert_hidden(out, *hidden)
    for part in kept:
        assert part in out


def _sql(literal: str) -> str:
    """A CREATE CONNECTION statement with ``literal`` as its secret key, as Databend echoes it."""
    return (
        "CREATE CONNECTION c STORAGE_TYPE='s3' ACCESS_KEY_ID='AKIAIOSFODNN7EXAMPLE' "
        f"SECRET_ACCESS_KEY={literal} ENDPOINT_URL='http://127.0.0.1:5055' REGION='us-east-1'"
    )


_DOUBLED = "'" + TRICKY.replace("\\", "\\\\").replace("'", "''") + "'"  # domain.sql.quote_string
_BACKSLASHED = "'" + TRICKY.replace("\\", "\\\\").replace("'", "\\'") + "'"


@pytest.mark.parametrize(
    ("echo", "endpoint_kept"),
    [
        (_sql(_DOUBLED), True),
        (_sql(_BACKSLASHED), True),
        # the same statement inside a quoted (Rust debug / JSON) error string: escaped once more
        (json.dumps(_sql(_BACKSLASHED))[1:-1], False),
        (json.dumps(_sql(_DOUBLED))[1:-1], True),
        # a double-quoted literal
        (_sql('"' + TRICKY.replace("\\", "\\\\") + '"'), True),
        # cut off inside the literal, as a truncated echo is
        (_sql(_BACKSLASHED)[: _sql(_BACKSLASHED).index("bPxRfiCY") + 5] + "…", False),
        # Databend's parser error: the statement on a numbered line, a caret line below
        (
            "SyntaxException. Code: 1005, Text = error:\n  --> SQL:1:96\n  |\n1 | "
            + _sql(_DOUBLED)
            + "\n  |     ^^^^^^ unexpected `ENDPOINT_URL`",
            True,
        ),
    ],
    ids=[
        "doubled",
        "backslashed",
        "backslashed-in-json",
        "doubled-in-json",
        "double-quoted",
        "truncated",
        "parser-error",
    ],
)
def test_secrets_in_echoed_sql_are_masked_however_escaped(echo: str, endpoint_kept: bool) -> None:
    """None of these strings was registered: the guard is the shape of the statement."""
    out = redact(echo)
    assert_hidden(out, *TRICKY_PARTS)
    assert "SECRET_ACCESS_KEY=" in out and "STORAGE_TYPE='s3'" in out
    if endpoint_kept:
        assert "ENDPOINT_URL='http://127.0.0.1:5055'" in out or "127.0.0.1:5055" in out


def test_a_registered_secret_is_masked_in_its_escaped_forms_too() -> None:
    secret = "Reg'istered\\Secret-value"
    register_secret(secret)
    for form in (
        secret,
        secret.replace("\\", "\\\\").replace("'", "''"),
        secret.replace("\\", "\\\\").replace("'", "\\'"),
        json.dumps(secret)[1:-1],
        json.dumps(secret.replace("\\", "\\\\").replace("'", "''"))[1:-1],
    ):
        out = redact(f"value <{form}> here")
        assert out == f"value <{MASK}> here", form


def test_a_driver_error_echoing_a_statement_leaks_nothing() -> None:
    from databend_driver import ProgrammingError

    secret = "Zr7Kq'Plm Wx\\Tv9Bn'Hj4Ld"
    value = json.dumps({"access_key_id": "AKIAZZZZZZZZZZZZZQRS", "secret_access_key": secret})
    register_secret_value(value)
    literal = "'" + secret.replace("\\", "\\\\").replace("'", "\\'") + "'"
    error = classify_driver_error(
        ProgrammingError(
            "APIError: QueryFailed: [1005]error: "
            + _sql(literal).replace("AKIAIOSFODNN7EXAMPLE", "AKIAZZZZZZZZZZZZZQRS")
            + " [v0.34.2]"
        )
    )
    assert_hidden(str(error), "Zr7Kq", "Plm", "Tv9Bn", "Hj4Ld", "AKIAZZZZZZZZZZZZZQRS")
    assert "******QRS" in str(error)
