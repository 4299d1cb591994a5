"""Zero-downtime IAM key rotation end to end: `rotator rotate --commit` on moto with IAM enforced,
a real worker (with its retirement schedule), databend-local."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.stack import (
    Stack,
    create_external_table,
    create_key_connection,
    key_secret_json,
    make_user,
    new_key,
    run_id_of,
    stack_env,
    storage_tail,
    tail,
)
from worker.adapters.databend_client import DatabendClient
from worker.adapters.run_store import RedisRunStore
from worker.domain.sql import TableName
from worker.local.embedded import DatabendLocalProcess, LocalAws

pytestmark = pytest.mark.slow


@dataclass
class KeyWorld:
    token: str
    stack: Stack
    aws: LocalAws
    runs: RedisRunStore
    bindings: list[str] = field(default_factory=list)
    worker: subprocess.Popen[str] | None = None

    def keys_of(self, user: str) -> dict[str, str]:
        meta = self.aws.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
        return {k["AccessKeyId"]: k["Status"] for k in meta}

    def current_value(self, secret: str) -> dict[str, Any]:
        """The value of the version labelled AWSCURRENT. (moto's GetSecretValue without a version
        keeps returning the version that was current before an UpdateSecretVersionStage, so the
        label is read explicitly.)"""
        sm = self.aws.client("secretsmanager")
        stages = sm.describe_secret(SecretId=secret)["VersionIdsToStages"]
        current = [v for v, s in stages.items() if "AWSCURRENT" in s]
        assert len(current) == 1, stages
        return json.loads(
            sm.get_secret_value(SecretId=secret, VersionId=current[0])["SecretString"]
        )

    def start_worker(self, name: str, **env: str) -> subprocess.Popen[str]:
        self.stack.env.update(env)
        try:
            self.worker = self.stack.start_worker(name, "--concurrency", "8", "--beat")
        finally:
            for key in env:
                self.stack.env.pop(key)
        return self.worker

    def stop_worker(self) -> None:
        if self.worker and self.worker.poll() is None:
            self.worker.terminate()
            self.worker.wait(timeout=30)


LAKES = {"main": 30, "fail": 3, "crash": 2, "abort": 3, "twokeys": 1, "stranded": 3}


@pytest.fixture(scope="module")
def world(
    databend_local: DatabendLocalProcess,
    databend: DatabendClient,
    aws: LocalAws,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KeyWorld]:
    t = uuid.uuid4().hex[:6]
    work = tmp_path_factory.mktemp("keys")
    entries = []
    for lake in list(LAKES) + [f"crash{i}" for i in range(8)]:
        entries.append(
            f'[[bindings]]\nname = "{lake}-{t}"\nsecret = "databend/keys-{t}-{lake}"\n'
            f'connection_prefix = "keys_{t}_{lake}"\n'
            f'tables = ["keys_{t}_{lake}.*"]\ndiscover = false\n'
        )
    (work / "bindings.toml").write_text("\n".join(entries))
    (work / "logs").mkdir()
    stack = Stack(
        env=stack_env(databend_local.dsn, redis_url, work / "bindings.toml", aws),
        log_dir=work / "logs",
    )
    stack.env["ROTATOR_RETIRE_INTERVAL"] = "1"
    w = KeyWorld(token=t, stack=stack, aws=aws, runs=RedisRunStore.from_url(redis_url))
    w.start_worker("worker")
    yield w
    stack.close()


def seed(
    world: KeyWorld, databend: DatabendClient, lake: str, tables: int
) -> tuple[str, str, list[TableName], dict[str, str]]:
    t = world.token
    user, secret, bucket = f"keys-{t}-{lake}", f"databend/keys-{t}-{lake}", f"keys-{t}-{lake}"
    world.aws.client("s3").create_bucket(Bucket=bucket)
    k1 = make_user(world.aws, user)
    create_key_connection(databend, world.aws, f"keys_{t}_{lake}_seed", k1)
    names = [TableName(f"keys_{t}_{lake}", f"table {i}") for i in range(tables)]
    for name in names:
        create_external_table(databend, name, bucket, f"keys_{t}_{lake}_seed", rows=2)
    world.aws.client("secretsmanager").create_secret(
        Name=secret, SecretString=key_secret_json(world.aws, k1)
    )
    return user, secret, names, k1


def all_read(databend: DatabendClient, tables: list[TableName]) -> bool:
    return all(len(databend.query(f"SELECT * FROM {t.sql}")) >= 2 for t in tables)


def test_rotate_commit_switches_thirty_tables_then_retires_the_old_key(
    world: KeyWorld, databend: DatabendClient
) -> None:
    user, secret, tables, k1 = seed(world, databend, "main", LAKES["main"])

    dry = world.stack.cli("rotate", secret)
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout and f"IAM user {user}" in dry.stdout
    assert len(world.keys_of(user)) == 1, "a dry run changes nothing"

    result = world.stack.cli(
        "rotate", f"main-{world.token}", "--commit", "--delete-after", "8s", "--timeout", "240"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_of(result)
    assert world.keys_of(user)[k1["AccessKeyId"]] == "Inactive"

    value = world.current_value(secret)
    k2 = value["access_key_id"]
    assert k2 != k1["AccessKeyId"]
    assert value["endpoint_url"] == world.aws.endpoint_url, "other fields are carried over"
    for table in tables:
        assert storage_tail(databend, table) == tail(k2)
        databend.execute(f"INSERT INTO {table.sql} VALUES (9, 'with K2')")
    assert all_read(databend, tables)

    # after the (shortened) delete grace the worker's schedule deletes K1
    deadline = time.monotonic() + 60
    while k1["AccessKeyId"] in world.keys_of(user) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert list(world.keys_of(user)) == [k2]
    assert all_read(databend, tables)
    run = world.runs.get(run_id)
    assert run.status == "succeeded" and run.phase == "retired"
    assert run.data["deactivated_at"] and run.data["deleted_at"]
    for table in tables:
        databend.execute(f"INSERT INTO {table.sql} VALUES (10, 'K1 gone')")

    # the schedule's deletion is in the audit trail under the run, its binding and its secret
    def deletions() -> list[Any]:
        shown = world.stack.cli("audit", "--binding", f"main-{world.token}", "--json")
        assert shown.returncode == 0, shown.stderr
        return [e for e in json.loads(shown.stdout)["events"] if e["action"] == "key_deleted"]

    deadline = time.monotonic() + 60
    while not (deleted := deletions()) and time.monotonic() < deadline:
        time.sleep(1)
    assert [(e["run_id"], e["secret"]) for e in deleted] == [(run_id, secret)]
    output = world.stack.all_output()
    assert k1["SecretAccessKey"] not in output and k1["AccessKeyId"] not in output
    assert k2 not in output


def test_a_table_that_cannot_switch_stops_the_rotation_before_finishing(
    world: KeyWorld, databend: DatabendClient
) -> None:
    user, secret, tables, k1 = seed(world, databend, "fail", LAKES["fail"])
    # one more table in the binding's database whose bucket the user may not reach: the new key
    # is checked by Databend against it and refused, permanently
    t = world.token
    other_bucket = f"keys-{t}-elsewhere"
    world.aws.client("s3").create_bucket(Bucket=other_bucket)
    outsider = make_user(world.aws, f"keys-{t}-outsider")
    create_key_connection(databend, world.aws, f"keys_{t}_outsider", outsider)
    blocked = TableName(f"keys_{t}_fail", "on another account")
    create_external_table(databend, blocked, other_bucket, f"keys_{t}_outsider", rows=2)
    world.aws.client("iam").put_user_policy(
        UserName=user,
        PolicyName="s3",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "s3:*",
                        "Resource": [
                            f"arn:aws:s3:::keys-{t}-fail",
                            f"arn:aws:s3:::keys-{t}-fail/*",
                        ],
                    }
                ],
            }
        ),
    )

    result = world.stack.cli("rotate", secret, "--commit", "--timeout", "120")

    assert result.returncode == 1, result.stdout + result.stderr
    # the pre-flight finds it: the new key cannot list that table's bucket, so no table is touched
    assert f"cannot list bucket {other_bucket}" in result.stdout + result.stderr
    run = world.runs.get(run_id_of(result))
    assert run.status == "failed" and run.phase == "switching"
    assert "old key stays active" in (run.error or "")
    assert world.keys_of(user)[k1["AccessKeyId"]] == "Active"
    assert world.current_value(secret)["access_key_id"] == k1["AccessKeyId"]
    assert all_read(databend, [*tables, blocked])


def test_a_user_with_two_keys_whose_other_key_is_in_use_is_refused(
    world: KeyWorld, databend: DatabendClient
) -> None:
    user, secret, _tables, _k1 = seed(world, databend, "twokeys", LAKES["twokeys"])
    older = new_key(world.aws, user)
    create_key_connection(databend, world.aws, f"keys_{world.token}_older", older)
    in_use = TableName(f"keys_{world.token}_twokeys", "uses the other key")
    create_external_table(
        databend, in_use, f"keys-{world.token}-twokeys", f"keys_{world.token}_older"
    )
    before = world.keys_of(user)

    result = world.stack.cli("rotate", secret, "--commit")

    assert result.returncode == 2
    assert "may still use it" in result.stderr and "uses the other key" in result.stderr
    assert world.keys_of(user) == before
    versions = world.aws.client("secretsmanager").list_secret_version_ids(SecretId=secret)
    assert len(versions["Versions"]) == 1


def test_abort_restores_the_previous_state(world: KeyWorld, databend: DatabendClient) -> None:
    user, secret, tables, k1 = seed(world, databend, "abort", LAKES["abort"])
    world.stop_worker()
    world.start_worker("worker-abort", ROTATOR_FAULTS="key-rotation-after-switched")
    result = world.stack.cli("rotate", secret, "--commit", "--no-wait")
    run_id = run_id_of(result)
    assert world.worker is not None and world.worker.wait(timeout=120) == 86
    new = world.runs.get(run_id).data["new_key_id"]
    assert {storage_tail(databend, t) for t in tables} == {tail(new)}

    aborted = world.stack.cli("abort", run_id)
    assert aborted.returncode == 0, aborted.stderr
    world.start_worker("worker-after-abort")
    assert {storage_tail(databend, t) for t in tables} == {tail(k1["AccessKeyId"])}
    assert world.keys_of(user) == {k1["AccessKeyId"]: "Active"}
    stages = world.aws.client("secretsmanager").describe_secret(SecretId=secret)[
        "VersionIdsToStages"
    ]
    assert not any("AWSPENDING" in s for s in stages.values())
    assert world.current_value(secret)["access_key_id"] == k1["AccessKeyId"]
    assert world.runs.get(run_id).status == "aborted"
    assert all_read(databend, tables)


CRASH_POINTS = [
    "after-create-key",
    "after-pending_stored",
    "after-switching",
    "after-switched",
    "after-tested",
    "after-finished",
    "after-retired",
]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_worker_killed_at_a_step_boundary_resumes_and_retires_once(
    world: KeyWorld, databend: DatabendClient, point: str
) -> None:
    lake = f"crash{CRASH_POINTS.index(point)}"
    user, secret, tables, k1 = seed(world, databend, lake, LAKES["crash"])
    world.stop_worker()
    world.start_worker(f"worker-{lake}", ROTATOR_FAULTS=f"key-rotation-{point}")
    run_id = run_id_of(world.stack.cli("rotate", secret, "--commit", "--no-wait"))
    assert world.worker is not None and world.worker.wait(timeout=120) == 86
    if world.runs.get(run_id).status != "succeeded":  # cut short: not to be started over
        again = world.stack.cli("rotate", secret, "--commit", "--no-wait")
        assert again.returncode == 2, again.stdout + again.stderr
        assert f"rotator resume {run_id}" in again.stderr and "Traceback" not in again.stderr

    world.start_worker(f"worker-{lake}-after")
    resumed = world.stack.cli("resume", run_id, "--timeout", "120")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    run = world.runs.get(run_id)
    assert run.status == "succeeded" and run.phase == "retired"
    new = world.current_value(secret)["access_key_id"]
    assert {storage_tail(databend, t) for t in tables} == {tail(new)}
    assert all_read(databend, tables)
    keys = world.keys_of(user)
    assert keys == {k1["AccessKeyId"]: "Inactive", new: "Active"}, "no orphan key left behind"
    assert run.data["deactivated_at"]


def test_follower_mode_marks_tables_of_a_revoked_key_stranded_and_never_drops_them(
    world: KeyWorld, databend: DatabendClient
) -> None:
    user, secret, tables, k1 = seed(world, databend, "stranded", LAKES["stranded"])
    # another tool rotated the key and revoked the old one before Databend was switched
    k2 = new_key(world.aws, user, avoid={k1["AccessKeyId"]})
    world.aws.client("secretsmanager").put_secret_value(
        SecretId=secret, SecretString=key_secret_json(world.aws, k2)
    )
    world.aws.client("iam").delete_access_key(UserName=user, AccessKeyId=k1["AccessKeyId"])

    result = world.stack.cli("rotate-version", secret, "--timeout", "120")

    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Never DROP" in output and "stranded" in output
    status = json.loads(world.stack.cli("status", run_id_of(result), "--json").stdout)
    assert status["counts"] == {"stranded": 3}
    for table in tables:
        assert table.table in output
        assert storage_tail(databend, table) == tail(k1["AccessKeyId"]), "still there, unchanged"


def child_pids(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_embedded_beat_ends_when_its_worker_is_killed(world: KeyWorld) -> None:
    world.stop_worker()
    worker = world.start_worker("worker-beat-orphan")
    log = world.stack.log_dir / "worker-beat-orphan.log"
    deadline = time.monotonic() + 60
    while "beat: Starting" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)  # the beat child logs this once forked (a snapshot before could miss it)
    beat = child_pids(worker.pid)
    assert beat, "the worker started no beat process"
    worker.kill()  # SIGKILL: the worker cannot stop its beat itself
    worker.wait(timeout=30)
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in beat) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in beat), "beat outlived its killed worker"
    world.start_worker("worker-after-beat-orphan")
