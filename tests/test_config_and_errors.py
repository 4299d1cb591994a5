"""Pure logic: secret values, bindings files, the error classifier, redaction of log lines."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
from botocore.exceptions import ClientError, EndpointConnectionError

from worker.adapters.databend_errors import classify_databend_error, classify_driver_error
from worker.domain.bindings import load_bindings, parse_bindings
from worker.domain.errors import (
    AwsPermanentError,
    AwsTransientError,
    ConcurrentTableChange,
    ConfigError,
    DatabendQueryError,
    DatabendUnavailable,
    SecretFormatError,
    StoragePermissionDenied,
    StorageUnavailable,
    UnknownSecretError,
    classify_aws_error,
)
from worker.domain.model import AccessKeyCredentials, RoleCredentials, parse_storage_param
from worker.domain.secret_value import parse_secret_value
from worker.observe.redaction import redact, register_secret_value

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


# --- secret values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": SECRET},
        {"AccessKeyId": "AKIAIOSFODNN7EXAMPLE", "SecretAccessKey": SECRET, "region": "eu-west-1"},
    ],
)
def test_access_key_secrets_in_both_spellings(value: dict[str, str]) -> None:
    creds = parse_secret_value(json.dumps(value), where="s v1")
    assert isinstance(creds, AccessKeyCredentials)
    assert creds.fingerprint == "ak:AKIAIOSFODNN7EXAMPLE"  # compared through worker.domain.masking
    assert SECRET not in repr(creds)


def test_role_secret() -> None:
    creds = parse_secret_value(
        json.dumps({"role_arn": "arn:aws:iam::1:role/r", "external_id": "ext"}), where="s"
    )
    assert isinstance(creds, RoleCredentials) and creds.external_id == "ext"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json " + SECRET, "not valid JSON"),
        ('["a"]', "must be a JSON object"),
        (json.dumps({"access_key_id": "AKIAX123"}), "missing field 'secret_access_key'"),
        (json.dumps({"secret_access_key": SECRET}), "missing field 'access_key_id'"),
        (json.dumps({"access_key_id": 5, "secret_access_key": SECRET}), "'access_key_id' must be"),
        (json.dumps({"access_key_id": "AK IA", "secret_access_key": SECRET}), "look like"),
        (json.dumps({"role_arn": "role/r"}), "not an ARN"),
        (None, "no SecretString"),
        (
            json.dumps({"access_key_id": "AKIAX123", "secret_access_key": SECRET + "\x00"}),
            "field 'secret_access_key' holds a control character",
        ),
        (
            json.dumps({"access_key_id": "AKIAX123", "secret_access_key": SECRET, "region": "a\n"}),
            "field 'region' holds a control character",
        ),
    ],
)
def test_bad_secret_values_name_the_field_not_the_value(raw: str | None, message: str) -> None:
    with pytest.raises(SecretFormatError) as err:
        parse_secret_value(raw, where="secret s version v")
    assert message in str(err.value)
    assert SECRET not in str(err.value)
    assert str(err.value).startswith("secret s version v")


# --- bindings -------------------------------------------------------------------------------------

GOOD = """
[[bindings]]
name = "lake-main"
secret = "databend/lake-main"
connection_prefix = "lake_main"
tables = ["sales.orders", "sales.`order items`", "`Ops Data`.*"]

[[bindings]]
name = "other"
secret = "arn:aws:secretsmanager:us-east-1:1:secret:x"
connection_prefix = "other"
discover = false
tables = ["db.t"]
"""


def test_a_good_bindings_file() -> None:
    first, second = parse_bindings(GOOD)
    assert first.discover is True and second.discover is False
    assert [s.text for s in first.selectors][1] == "sales.`order items`"
    assert first.selectors[1].table == "order items"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (GOOD.replace('"sales.`order items`"', '"sales.`order items"'), 6, "bad table selector"),
        (
            GOOD.replace('connection_prefix = "other"', 'connection_prefix = "oth er"'),
            11,
            "connection_prefix",
        ),
        (GOOD.replace("discover = false", 'discover = "no"'), 12, "'discover'"),
        # the second use is named, not the first
        (GOOD.replace('name = "other"', 'name = "lake-main"'), 9, "used twice"),
        # a selector found as the string it is, not inside the ARN two lines above it
        (GOOD.replace('tables = ["db.t"]', 'tables = ["a"]'), 13, "bad table selector: "),
        (
            GOOD.replace('"arn:aws:secretsmanager:us-east-1:1:secret:x"', '"databend/lake-main"'),
            10,
            "bindings 'lake-main' and 'other' both serve secret 'databend/lake-main'",
        ),
        (GOOD.replace('secret = "databend/lake-main"\n', ""), 2, "'secret' is required in every"),
        (GOOD.replace('tables = ["db.t"]', 'tables = ["db.t"]\nbogus = 1'), 14, "unknown key"),
        (GOOD + "\n[[bindings]\n", 15, ""),
    ],
)
def test_bad_bindings_fail_with_the_line_at_fault(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_bindings(text, source="b.toml")
    assert f"line {line}" in str(err.value)
    assert fragment in str(err.value)


def test_a_bindings_file_that_is_not_utf8_fails_with_the_line_at_fault(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_bytes(GOOD.encode() + b"\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"b\.toml: line 1[0-9]: not UTF-8 text"):
        load_bindings(path)


def test_a_name_and_the_arn_of_one_secret_are_refused_when_the_secret_is_resolved() -> None:
    """Only AWS knows that an ARN and a name are the same secret: loading accepts the file,
    resolving the secret refuses it, naming both bindings."""
    from worker.domain.bindings import find_binding

    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/lake-main-AbCdEf"
    bindings = parse_bindings(GOOD.replace("arn:aws:secretsmanager:us-east-1:1:secret:x", arn))
    with pytest.raises(ConfigError) as err:
        find_binding(bindings, secret_arn=arn, secret_name="databend/lake-main")
    assert "'lake-main' and 'other'" in str(err.value)
    assert f"'databend/lake-main' and '{arn}'" in str(err.value)
    assert find_binding(bindings, name="other") is bindings[1]
    other = "arn:aws:secretsmanager:us-east-1:123456789012:secret:elsewhere-XyZ123"
    assert find_binding(bindings, secret_arn=other, secret_name="elsewhere") is None


# --- storage_param --------------------------------------------------------------------------------


def test_storage_param_parsing() -> None:
    p = parse_storage_param(
        "s3 | bucket=testbucket,root=/t1/,endpoint=http://127.0.0.1:5055,ak=******7WB,iam_role="
    )
    assert (p.bucket, p.root, p.ak, p.iam_role, p.fingerprint, p.unreadable) == (
        "testbucket",
        "/t1/",
        "******7WB",
        None,
        "ak:******7WB",
        None,
    )
    current = parse_storage_param("s3 | bucket=b,root=/t1/,endpoint=,ak=AK***WB,iam_role=")
    assert (current.ak, current.unreadable) == ("AK***WB", None)
    # a row that cannot be read is kept, marked, never dropped
    assert parse_storage_param("").unreadable
    assert parse_storage_param("s3 | bucket=b,ak=*WB,iam_role=").unreadable


# --- error classification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (1005, "SyntaxException: expecting SQL statement", DatabendQueryError),
        (1025, "Unknown table", DatabendQueryError),
        (3002, "PermissionDenied (persistent) at write", StoragePermissionDenied),
        (3901, "current configured storage is not valid: 403 Forbidden", StoragePermissionDenied),
        (3901, "storage is not valid: request timed out", StorageUnavailable),
        (3901, "storage is not valid: InvalidAccessKeyId", DatabendQueryError),
        (1043, "aborted", DatabendUnavailable),
        (1001, "Busy: databend-local has no free engine session", DatabendUnavailable),
        (1302, "is not an external table, cannot alter connection", DatabendQueryError),
        (
            2009,
            "TableVersionMismatched: Due to concurrent transactions, transaction commit failed.",
            ConcurrentTableChange,
        ),
    ],
)
def test_databend_errors_are_classified(code: int, message: str, expected: type) -> None:
    error = classify_databend_error(code, message)
    assert type(error) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "APIError: [request_kind=login]: AuthFailure: [2201]AuthenticateFailure: wrong user "
            "name or password [v0.34.2]",
            DatabendQueryError,
        ),
        (
            "APIError: [request_kind=query/start query_id=1]: reqwest::Error: error sending "
            "request, source_chain=operation timed out [v0.34.2]",
            DatabendUnavailable,
        ),
        ("APIError: error sending request for url (http://127.0.0.1:34015/)", DatabendUnavailable),
    ],
)
def test_driver_errors_are_classified(text: str, expected: type) -> None:
    """A wrong password is fatal although the driver raises it like a connection failure."""
    from databend_driver import OperationalError

    assert type(classify_driver_error(OperationalError(text))) is expected


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "Op",
    )


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_client_error("ThrottlingException", 400), AwsTransientError),
        (_client_error("InternalServiceError", 500), AwsTransientError),
        (_client_error("ResourceNotFoundException", 400), UnknownSecretError),
        (_client_error("AccessDeniedException", 400), AwsPermanentError),
        (_client_error("InvalidRequestException", 400), AwsPermanentError),
        (EndpointConnectionError(endpoint_url="http://x"), AwsTransientError),
    ],
)
def test_aws_errors_are_classified(exc: Exception, expected: type) -> None:
    assert type(classify_aws_error(exc)) is expected


def test_the_error_trees_docstring_is_the_class_tree() -> None:
    """Every error class of worker.domain.errors, drawn in its docstring under its own parent."""
    import re

    from worker.domain import errors

    drawn: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        found = re.match(r"^ {4}([│ ├└─]*)([A-Z]\w+)", line)
        if not found:
            continue
        depth = len(found.group(1))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        drawn[found.group(2)] = stack[-1][1] if stack else None
        stack.append((depth, found.group(2)))
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.RotatorError)
    }
    assert set(drawn) == set(classes)
    for name, cls in classes.items():
        parent = cls.__bases__[0].__name__ if cls is not errors.RotatorError else None
        assert drawn[name] == parent, name


# --- redaction ---------------------------------------------------------------------------------


def test_log_lines_never_carry_registered_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.observe.logs import configure_logging

    value = json.dumps(
        {"access_key_id": "AKIAZZZZZZZZZZZZZABC", "secret_access_key": "tiny-secret"}
    )
    register_secret_value(value)
    configure_logging("INFO", "json")
    structlog.get_logger("t").info("read", value=value, nested={"k": ["tiny-secret"]})
    logging.getLogger("celery.x").warning("stdlib line with tiny-secret and AKIAZZZZZZZZZZZZZABC")
    try:
        raise RuntimeError(f"boom {SECRET}")
    except RuntimeError:
        structlog.get_logger("t").exception("failed")
    err = capsys.readouterr().err
    assert "tiny-secret" not in err and "AKIAZZZZZZZZZZZZZABC" not in err and SECRET not in err
    assert "******ABC" in err and "[REDACTED]" in err
    assert redact(f"key {SECRET}.") == "key [REDACTED]."


# --- worker options -----------------------------------------------------------------------------


def test_metrics_need_a_single_process_pool() -> None:
    from click.testing import CliRunner

    from worker.cli import main

    result = CliRunner().invoke(main, ["worker", "--pool", "prefork", "--metrics-port", "9"])
    assert result.exit_code == 2
    assert "--metrics-port needs --pool threads or solo" in result.output


def test_a_taken_metrics_port_is_a_clear_error() -> None:
    import socket

    from worker.cli import serve_metrics
    from worker.domain.errors import FatalError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(FatalError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            serve_metrics(port)


# --- stages and settings of issue 11 ------------------------------------------------------------


def test_stage_params_parsing() -> None:
    """system.stages.storage_params as the embedded 1.2.895 shows them (see DOMAIN.md)."""
    from worker.domain.model import parse_stage_params

    s3 = parse_stage_params(
        "s3",
        '{"access_key_id":"******P62","bucket":"b1","endpoint_url":"http://127.0.0.1:5",'
        '"region":"us-east-1","role_arn":"","root":"/st/","secret_access_key":"******O2J",'
        '"type":"S3"}',
    )
    assert (s3.kind, s3.bucket, s3.root, s3.fingerprint, s3.switchable) == (
        "s3",
        "b1",
        "/st/",
        "ak:******P62",
        True,
    )
    assert s3.location == "s3://b1/st/"
    current = parse_stage_params("s3", '{"access_key_id":"AK***SJ","bucket":"b","root":"/"}')
    assert current.fingerprint == "ak:AK***SJ" and current.unreadable is None
    role = parse_stage_params(
        "s3", '{"access_key_id":"","bucket":"b","role_arn":"arn:aws:iam::1:role/r","root":"/"}'
    )
    assert role.fingerprint == "role:arn:aws:iam::1:role/r"
    oss = parse_stage_params("oss", '{"access_key_id":"******fGh","bucket":"b","type":"Oss"}')
    assert oss.kind == "oss" and not oss.switchable
    gcs = parse_stage_params("gcs", '{"bucket":"b","credential":"***","type":"Gcs"}')
    assert gcs.fingerprint is None and gcs.switchable  # no fingerprint: explicit selectors only
    assert parse_stage_params("s3", "not json").unreadable
    assert parse_stage_params("s3", '{"access_key_id":"*P62","bucket":"b"}').unreadable


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"ROTATOR_RECONCILE": "often"}, "ROTATOR_RECONCILE"),
        ({"ROTATOR_RECONCILE_INTERVAL": "-1"}, "ROTATOR_RECONCILE_INTERVAL"),
    ],
)
def test_bad_reconcile_settings_fail_at_start(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fragment: str
) -> None:
    from worker.runtime.settings import load_settings

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=fragment):
        load_settings()


def test_the_aws_region_comes_from_aws_region_and_its_absence_is_a_clear_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_REGION (docker-compose.yml sets only it; botocore itself reads AWS_DEFAULT_REGION) is
    the clients' region, a region passed explicitly wins, and with none anywhere every command
    says what to set and exits 2 instead of a traceback."""
    import os

    from worker.adapters.aws_clients import aws_client
    from worker.runtime.settings import Settings

    bounds = Settings()
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert aws_client("sts", bounds=bounds).meta.region_name == "eu-west-3"
    assert aws_client("sts", bounds=bounds, region_name="ap-south-1").meta.region_name == (
        "ap-south-1"
    )
    # what botocore takes as a host name but no region is (moon, US-EAST-1) is refused at once
    # too, not after a request to an endpoint that does not exist
    for region in ("us-east-1; rm", "moon", "US-EAST-1", "us-east", "eu_west_1"):
        monkeypatch.setenv("AWS_REGION", region)
        with pytest.raises(ConfigError, match="bad configuration: AWS_REGION"):
            aws_client("sts", bounds=bounds)
    for region in ("us-gov-west-1", "cn-north-1", "ap-southeast-4", "eu-isoe-west-1"):
        monkeypatch.setenv("AWS_REGION", region)
        assert aws_client("sts", bounds=bounds).meta.region_name == region
    # IAM's client resolves to the global region (aws-global), against AWS's own endpoint too
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert aws_client("iam", bounds=bounds).meta.region_name == "aws-global"
    monkeypatch.setenv("AWS_REGION", "eusc-de-east-1")  # (a partition of its own)
    assert aws_client("sts", bounds=bounds).meta.region_name == "eusc-de-east-1"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "moon")  # botocore's own chain is checked too
    with pytest.raises(ConfigError, match="bad configuration: AWS_REGION"):
        aws_client("sts", bounds=bounds)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    for endpoint in ("notaurl-s3cr3t", "ftp://s3cr3t.example"):
        with pytest.raises(ConfigError, match="bad configuration: AWS_ENDPOINT_URL") as bad:
            aws_client("sts", bounds=bounds, endpoint_url=endpoint)
        assert "s3cr3t" not in str(bad.value)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and k not in ("REDIS_URL", "ROTATOR_BINDINGS")
    }
    env |= {
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "REDIS_URL": "redis://127.0.0.1:1/0",  # (never reached)
    }
    done = _rotator_in(env, "status", "some-run")
    assert done.returncode == 2, done.stderr
    assert "missing configuration: set AWS_REGION" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("variable", "bad", "good"),
    [
        (
            "REDIS_URL",
            ["localhost:6379", "notaurl:hunter2pw", "http://h:6379/0", "redis://:pw@h:99999/0"],
            ["redis://:pw@h:6379/0", "rediss://h/1", "unix:///run/redis.sock"],
        ),
        (
            "DATABEND_DSN",
            ["garbage", "http://u:s3cretpw@h:8000/db", "databend:/u:p@h"],
            ["databend://root:@h:8000/default?sslmode=disable", "databend+https://u:p@h/db"],
        ),
        (  # (a notice sent to a target that cannot be one would fail on every delivery)
            "ROTATOR_NOTIFY_URL",
            [
                "notaurl",
                "ftp://h/x",
                "https:///path",
                "hooks.example.com/T0K3NVALUE",
                "http://h:99999/x",
            ],
            ["https://hooks.example.com/services/T0K3N", "http://127.0.0.1:9/x"],
        ),
        (
            "ROTATOR_NOTIFY_SNS_TOPIC",
            ["rotations", "arn:aws:sqs:us-east-1:123456789012:q", "arn:aws:sns:us-east-1:12:t"],
            [
                "arn:aws:sns:us-east-1:123456789012:rotations",
                "arn:aws-cn:sns:cn-north-1:123456789012:r.fifo",
            ],
        ),
    ],
)
def test_a_url_of_another_scheme_fails_at_start_naming_the_variable_not_repeating_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, bad: list[str], good: list[str]
) -> None:
    """(A DSN, a Redis URL or a webhook URL may hold a password or a token.)"""
    from worker.runtime.settings import load_settings

    for value in bad:
        monkeypatch.setenv(variable, value)
        with pytest.raises(ConfigError, match=f"{variable}: .*must") as refused:
            load_settings()
        assert value not in str(refused.value)
    for value in good:
        monkeypatch.setenv(variable, value)
        current = load_settings()
        assert value in (
            current.redis_url,
            current.databend_dsn,
            current.notify_url,
            current.notify_sns_topic,
        )


@pytest.mark.parametrize(
    "setting",
    [
        "ROTATOR_STATEMENT_TIMEOUT=inf",
        "ROTATOR_STATEMENT_TIMEOUT=1e12",
        "ROTATOR_AWS_CONNECT_TIMEOUT=inf",
        "ROTATOR_AWS_READ_TIMEOUT=1e9",
        "ROTATOR_STUCK_AFTER=inf",
        "ROTATOR_REAP_INTERVAL=inf",
        "ROTATOR_RECONCILE_INTERVAL=1e300",
        "ROTATOR_AUDIT_FLUSH_INTERVAL=inf",
        "ROTATOR_NOTIFY_INTERVAL=nan",
    ],
)
def test_a_duration_setting_that_is_infinite_or_huge_fails_at_start_naming_it(
    monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    """(Past a bound a timer overflows time_t: the error came later, naming nothing.)"""
    from worker.runtime.settings import load_settings

    variable, value = setting.split("=")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"bad configuration: {variable}: "):
        load_settings()


def test_a_log_level_logging_does_not_know_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.runtime.settings import load_settings

    monkeypatch.setenv("ROTATOR_LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigError, match="ROTATOR_LOG_LEVEL"):
        load_settings()
    monkeypatch.setenv("ROTATOR_LOG_LEVEL", " warning ")
    assert load_settings().log_level == "WARNING"


# Refused by the CLI before any command body runs (so before any service is reached): exit 2.
_SOON = ["--timeout"]
_POLICY = ["iam-policy", "--account", "123456789012", "--region", "us-east-1"]
_POLICY += ["--secret-prefix", "databend/", "--user-prefix", "svc-"]
_BAD_ARGUMENTS = [
    ["rotate-version", "lake-main", *_SOON, "-1"],
    ["rotate-version", "lake-main", *_SOON, "nan"],
    ["rotate", "lake-main", "--commit", *_SOON, "inf"],
    ["rotate", "lake-main", "--commit", "--deactivate-after", "inf"],
    ["rotate", "lake-main", "--commit", "--delete-after", "nan"],
    ["rotate", "lake-main", "--commit", "--delete-after", "-2d"],
    ["rotate", "lake-main", "--deactivate-after", "2d", "--delete-after", "1s"],
    ["migrate", "--to", "c", "--from", "b", "--commit", *_SOON, "-5"],
    ["migrate", "--to", "c", "--from", "b", "--commit", "--rate", "nan"],
    ["migrate", "--to", "c", "--from", "b", "--commit", "--max-error-rate", "nan"],
    ["resume", "some-run", *_SOON, "-1"],
    ["intake", "sqs", "--queue-url", "notaurl"],
    ["intake", "sqs", "--queue-url", "https://sqs.us-east-1.amazonaws.com"],
    ["intake", "sqs", "--queue-url", "http://h/q", "--metrics-port", "99999"],
    ["intake", "rule", ""],
    ["intake", "rule", "not-an-arn"],
    ["intake", "rule", "arn:aws:s3:::bucket"],
    ["intake", "rule", "arn:aws:secretsmanager:us-east-1:abc:secret:x/"],
    ["intake", "rule", "arn:aws:secretsmanager:us-east-1:1234:secret:x/"],
    ["databend-local", "--host", "", "--port", "0"],
    ["databend-local", "--host", "  ", "--port", "0"],
    *(
        [*_POLICY, *extra]
        for extra in (
            ["--partition", 'evil"'],
            ["--partition", ""],
            ["--sns-topic", "notanarn"],
            ["--sns-topic", "arn:aws:sns:eu-west-1:123456789012:t"],
            ["--queue-arn", "arn:aws:sqs:*:*:*"],
            ["--queue-arn", "arn:aws:sns:us-east-1:123456789012:q"],
        )
    ),
]


@pytest.mark.parametrize("arguments", _BAD_ARGUMENTS, ids=" ".join)
def test_bad_arguments_are_refused_with_exit_2_and_a_clear_line(arguments: list[str]) -> None:
    from click.testing import CliRunner

    from worker.cli import main

    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2, result.output
    expected = "Invalid value"
    if "rule" in arguments:
        expected = "is not the start of a secret's ARN"
    elif "iam-policy" in arguments:
        expected = "is not an AWS partition" if "--partition" in arguments else "must be the ARN"
    elif arguments[-2:] == ["--delete-after", "1s"]:
        expected = "--delete-after (1s) is shorter than --deactivate-after (172800s)"
    assert expected in result.output
    assert "Traceback" not in result.output


def test_the_rule_for_a_good_prefix_is_printed() -> None:
    from click.testing import CliRunner

    from worker.cli import main

    for prefix in (
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/",
        "arn:aws:secretsmanager:us-east-1:123456789012:",
        "arn:aws:secretsmanager:us-east-1:1234",
        "arn:aws-cn:secretsmanager:",
    ):
        result = CliRunner().invoke(main, ["intake", "rule", prefix])
        assert result.exit_code == 0 and prefix in result.output


def test_the_drivers_retry_warnings_stay_out_of_json_output(tmp_path: Path) -> None:
    """databend-driver logs its retries on stdout (env_logger): they must not land in the
    middle of `--json` output, which a script parses."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "ROTATOR_BINDINGS")}
    env |= {
        "HOME": str(tmp_path),
        "AWS_REGION": "us-east-1",
        "REDIS_URL": "redis://127.0.0.1:1/0",  # (never reached)
        # nothing listens on port 1: the driver's login fails, is retried once, and fails
        "DATABEND_DSN": "databend://root:@127.0.0.1:1/default?sslmode=disable"
        "&retry_count=2&retry_delay_secs=1",
    }
    done = _rotator_in(env, "audit", "--json")
    assert done.returncode != 0 and done.stderr.startswith("error: "), done.stderr
    assert done.stdout == "", "nothing but the JSON ever reaches stdout"


def _rotator_in(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, with exactly ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_doctors_spool_check_makes_no_directory(tmp_path: Path) -> None:
    """A missing spool directory is reported as made on first use, not made by the check; one
    under a file fails; an existing one is probed and left as it was."""
    from types import SimpleNamespace

    from worker.runtime.doctor import FAIL, PASS, _audit

    class Client:
        def query_one(self, _sql: str) -> tuple[int]:
            return (1,)

    def spool_check(spool: Path) -> Any:
        settings = SimpleNamespace(
            audit_database="rotator", audit_spool=spool, databend_dsn="databend://h:1/d"
        )
        return next(c for c in _audit(settings, Client()) if c.name == "audit spool")

    from worker.adapters.audit_store import spool_dir

    missing = tmp_path / "not" / "yet"
    check = spool_check(missing)
    assert check.level == PASS and "made on first use" in check.message
    assert not (tmp_path / "not").exists()
    (tmp_path / "file").write_text("")
    assert spool_check(tmp_path / "file" / "spool").level == FAIL
    made = spool_dir(tmp_path / "made", "databend://h:1/d", "rotator")
    made.mkdir(parents=True)
    check = spool_check(tmp_path / "made")
    assert check.level == PASS and "writable; 0 row(s) waiting" in check.message
    assert list(made.iterdir()) == [], "the probe file is gone"


def test_an_empty_spool_path_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.runtime.settings import load_settings

    monkeypatch.setenv("ROTATOR_AUDIT_SPOOL", " ")
    with pytest.raises(ConfigError, match=r"ROTATOR_AUDIT_SPOOL: .*must name a directory"):
        load_settings()


def test_the_doctor_fails_a_webhook_it_cannot_connect_to_without_sending_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket
    from types import SimpleNamespace

    from worker.runtime.doctor import FAIL, PASS, _notify

    def check(url: str) -> Any:
        settings = SimpleNamespace(notify_url=url, notify_sns_topic=None, notify_on="failures")
        return next(iter(_notify(settings)))

    listening = socket.create_server(("127.0.0.1", 0))
    try:
        port = listening.getsockname()[1]
        ok = check(f"http://127.0.0.1:{port}/hooks/T0KEN")
        assert ok.level == PASS and "T0KEN" not in ok.message
    finally:
        listening.close()
    dead = check(f"http://127.0.0.1:{port}/hooks/T0KEN")
    assert dead.level == FAIL and f"cannot connect to port {port}" in dead.message
    assert "T0KEN" not in dead.message
    # behind a proxy, delivery (httpx) goes through it: a direct connection proves nothing
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    proxied = check(f"http://127.0.0.1:{port}/hooks/T0KEN")
    assert proxied.level == PASS and "through a proxy" in proxied.message
