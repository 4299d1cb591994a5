"""The periodic reconcile of `rotator worker --beat` with ROTATOR_RECONCILE=commit, on real parts:
a new secret version whose event was lost, then a Redis flush and a table made on the old
connection — each time the beat finds the drift and a run puts every object on AWSCURRENT."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.stack import (
    Stack,
    create_external_table,
    create_key_connection,
    key_secret_json,
    make_user,
    new_key,
    stack_env,
    storage_tail,
    tail,
)
from worker.adapters.databend_admin import DriverDatabendAdmin
from worker.adapters.databend_client import DatabendClient
from worker.domain.sql import StageName, TableName
from worker.local.embedded import DatabendLocalProcess, LocalAws

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(
    databend_local: DatabendLocalProcess,
    aws: LocalAws,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, str]]:
    t = uuid.uuid4().hex[:6]
    work = tmp_path_factory.mktemp("reconcile-beat")
    (work / "logs").mkdir()
    (work / "bindings.toml").write_text(
        f'[[bindings]]\nname = "beat-{t}"\nsecret = "databend/beat-{t}"\n'
        f'connection_prefix = "beat_{t}"\ntables = ["beat_{t}.*"]\n',
        encoding="utf-8",
    )
    s = Stack(
        env=stack_env(databend_local.dsn, redis_url, work / "bindings.toml", aws),
        log_dir=work / "logs",
    )
    s.env.update({"ROTATOR_RECONCILE": "commit", "ROTATOR_RECONCILE_INTERVAL": "2"})
    s.start_worker("worker", "--beat")
    yield s, t
    s.close()


def wait_until(what: str, check, timeout: float = 90) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_the_beat_restores_the_truth_after_a_lost_event_and_a_redis_flush(
    stack: tuple[Stack, str], databend: DatabendClient, aws: LocalAws, redis_url: str
) -> None:
    s, t = stack
    bucket, user = f"beat-{t}", f"beat-{t}"
    aws.client("s3").create_bucket(Bucket=bucket)
    k1 = make_user(aws, user)
    create_key_connection(databend, aws, f"beat_{t}_seed", k1)
    tables = [TableName(f"beat_{t}", f"t{i}") for i in range(2)]
    for table in tables:
        create_external_table(databend, table, bucket, f"beat_{t}_seed", rows=2)
    stage = StageName(f"beat_{t}_landing")
    databend.execute(
        f"CREATE STAGE {stage.sql} URL='s3://{bucket}/landing/'"
        f" CONNECTION=(connection_name='beat_{t}_seed')"
    )
    sm = aws.client("secretsmanager")
    sm.create_secret(Name=f"databend/beat-{t}", SecretString=key_secret_json(aws, k1))
    k2 = new_key(aws, user, [k1["AccessKeyId"]])
    # a new version becomes AWSCURRENT and its event is lost: no run was ever asked for
    sm.put_secret_value(SecretId=f"databend/beat-{t}", SecretString=key_secret_json(aws, k2))

    def stage_tail() -> str | None:
        found = DriverDatabendAdmin(databend).describe_stage(stage)
        return found.storage.ak[-2:] if found and found.storage.ak else None

    def all_on_k2(names: list[TableName]) -> bool:
        on = [storage_tail(databend, n) for n in names] + [stage_tail()]
        return all(x == tail(k2["AccessKeyId"]) for x in on)

    wait_until("the beat's reconcile to move everything to K2", lambda: all_on_k2(tables))

    # Redis is lost (every run record with it), and someone makes a table on the old connection
    redis.Redis.from_url(redis_url).flushdb()
    late = TableName(f"beat_{t}", "late")
    create_external_table(databend, late, bucket, f"beat_{t}_seed", rows=2)
    wait_until("the beat's reconcile to move the late table", lambda: all_on_k2([*tables, late]))

    aws.client("iam").delete_access_key(UserName=user, AccessKeyId=k1["AccessKeyId"])
    for table in [*tables, late]:
        assert len(databend.query(f"SELECT * FROM {table.sql}")) == 2
    databend.query(f"LIST @{stage.sql}")
    assert "reconciled" in s.all_output()
    assert k1["SecretAccessKey"] not in s.all_output()
    assert k2["SecretAccessKey"] not in s.all_output()
