"""The worker under exactly the IAM policy `rotator iam-policy` prints (deploy/iam-policy.json):
a full key rotation passes on moto with IAM enforced against real resource ARNs, and the policy
reaches no other secret and no other user."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import (
    REPO,
    Stack,
    create_external_table,
    create_key_connection,
    key_secret_json,
    make_user,
    run_id_of,
    stack_env,
    storage_tail,
    tail,
)
from worker.adapters.databend_client import DatabendClient
from worker.domain.sql import TableName
from worker.local.embedded import DatabendLocalProcess, LocalAws, start_moto

pytestmark = pytest.mark.slow

ACCOUNT = "123456789012"  # moto's account


@pytest.fixture(scope="module")
def scoped_aws() -> Iterator[LocalAws]:
    """moto with IAM enforced and policies checked against each request's real resource."""
    aws = start_moto(
        enforce_iam=True, command=[sys.executable, str(REPO / "tests" / "moto_resources.py")]
    )
    yield aws
    aws.stop()


def policy_from_cli(stack: Stack) -> dict[str, object]:
    result = stack.cli(
        "iam-policy",
        "--account",
        ACCOUNT,
        "--region",
        "us-east-1",
        "--secret-prefix",
        "databend/",
        "--user-prefix",
        "svc-databend-",
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_the_published_policy_is_what_the_command_prints(tmp_path: Path) -> None:
    stack = Stack(
        env={**stack_env("databend://x@h:1/d", "redis://h:1/0", tmp_path / "b", _no_aws())},
        log_dir=tmp_path,
    )
    result = stack.cli(
        "iam-policy",
        "--account",
        ACCOUNT,
        "--region",
        "us-east-1",
        "--secret-prefix",
        "databend/",
        "--user-prefix",
        "svc-databend-",
        "--sns-topic",
        f"arn:aws:sns:us-east-1:{ACCOUNT}:databend-rotator",
        "--queue-arn",
        f"arn:aws:sqs:us-east-1:{ACCOUNT}:databend-rotations",
    )
    assert json.loads(result.stdout) == json.loads((REPO / "deploy/iam-policy.json").read_text())
    bad = stack.cli(
        "iam-policy",
        "--account",
        "12",
        "--region",
        "us-east-1",
        "--secret-prefix",
        "d/",
        "--user-prefix",
        "u",
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def _no_aws() -> LocalAws:
    return LocalAws("http://127.0.0.1:1", "AKIAEXAMPLE", "x", None)


def test_a_full_key_rotation_passes_under_the_least_privilege_policy(
    scoped_aws: LocalAws,
    databend_local: DatabendLocalProcess,
    databend: DatabendClient,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    t = uuid.uuid4().hex[:6]
    aws = scoped_aws
    work = tmp_path_factory.mktemp("least")
    (work / "logs").mkdir()
    binding = f"lp-{t}"
    user, secret, bucket = f"svc-databend-{t}", f"databend/lp-{t}", f"lp-{t}"
    (work / "bindings.toml").write_text(
        f'[[bindings]]\nname = "{binding}"\nsecret = "{secret}"\n'
        f'connection_prefix = "lp_{t}"\ntables = ["lp_{t}.*"]\ndiscover = false\n'
    )
    # Given the bound user, its bucket, tables and secret (made by an admin) ...
    aws.client("s3").create_bucket(Bucket=bucket)
    k1 = make_user(aws, user)
    create_key_connection(databend, aws, f"lp_{t}_seed", k1)
    tables = [TableName(f"lp_{t}", f"t{i}") for i in range(3)]
    for table in tables:
        create_external_table(databend, table, bucket, f"lp_{t}_seed", rows=2)
    sm = aws.client("secretsmanager")
    sm.create_secret(Name=secret, SecretString=key_secret_json(aws, k1))
    sm.create_secret(Name=f"other/lp-{t}", SecretString="{}")
    make_user(aws, f"other-{t}")
    # ... and a worker identity holding exactly the printed policy
    stack = Stack(
        env=stack_env(databend_local.dsn, redis_url, work / "bindings.toml", aws),
        log_dir=work / "logs",
    )
    iam = aws.client("iam")
    iam.create_user(UserName=f"rotator-worker-{t}")
    iam.put_user_policy(
        UserName=f"rotator-worker-{t}",
        PolicyName="databend-rotator",
        PolicyDocument=json.dumps(policy_from_cli(stack)),
    )
    worker_key = iam.create_access_key(UserName=f"rotator-worker-{t}")["AccessKey"]
    stack.env["AWS_ACCESS_KEY_ID"] = worker_key["AccessKeyId"]
    stack.env["AWS_SECRET_ACCESS_KEY"] = worker_key["SecretAccessKey"]
    scoped = LocalAws(
        aws.endpoint_url, worker_key["AccessKeyId"], worker_key["SecretAccessKey"], None
    )
    try:
        # the policy reaches nothing else
        with pytest.raises(Exception, match=r"AccessDenied|not authorized"):
            scoped.client("secretsmanager").describe_secret(SecretId=f"other/lp-{t}")
        with pytest.raises(Exception, match=r"AccessDenied|not authorized"):
            scoped.client("iam").list_access_keys(UserName=f"other-{t}")

        # When the worker rotates the key under that identity
        stack.start_worker("worker", "--concurrency", "4")
        doctor = stack.cli("doctor")
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        result = stack.cli("rotate", binding, "--commit", "--timeout", "240")
        assert result.returncode == 0, result.stdout + result.stderr
        run_id = run_id_of(result)

        # Then every table is on the new key, the old one is deactivated, AWSCURRENT moved
        keys = {
            k["AccessKeyId"]: k["Status"]
            for k in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
        }
        assert keys[k1["AccessKeyId"]] == "Inactive" and len(keys) == 2
        (k2,) = [k for k in keys if k != k1["AccessKeyId"]]
        for table in tables:
            assert storage_tail(databend, table) == tail(k2)
            assert len(databend.query(f"SELECT * FROM {table.sql}")) >= 2
        status = json.loads(stack.cli("status", run_id, "--json").stdout)
        assert status["status"] == "succeeded" and status["phase"] == "retired"
        assert "AccessDenied" not in stack.all_output()
    finally:
        stack.close()
