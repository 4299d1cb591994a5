"""The safety promise under races, end to end (issue 10, points 2-5): never strand a table on a
dead key, never delete a live key.

Real parts only: databend-local (legacy masking), Valkey, moto with IAM enforced, real ``rotator
worker`` subprocesses (one healthy worker; fault-injected ones die with exit code 86 where a
kill -9 would), the CLI as a subprocess, and the Secrets Manager rotation function called
in-process. The secret lock lives only 5 s here (``ROTATOR_LOCK_TTL``), far below the broker's
redelivery delay, as in the issue: what keeps late work harmless is the fencing, not the lock.
"""

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
import redis

from tests.observe import (
    access_keys,
    assert_no_secret_in,
    current_key,
    fresh_key,
    labelled,
    queued_for,
    rows,
    secret_material,
    stages,
    wait_until,
)
from tests.stack import (
    REPO,
    Stack,
    add_user,
    create_external_table,
    create_key_connection,
    key_secret_json,
    last_changed,
    run_id_of,
    stack_env,
    storage_tail,
    tail,
)
from worker.adapters.aws_iam import BotoIamKeys
from worker.adapters.aws_secrets import SecretsManagerStore
from worker.adapters.databend_admin import DriverDatabendAdmin
from worker.adapters.databend_client import DatabendClient
from worker.adapters.redis_state import RedisFences, RedisSecretLocks
from worker.adapters.run_store import RedisRunStore
from worker.domain.bindings import Binding, load_bindings
from worker.domain.errors import LockBusy
from worker.domain.sql import TableName, object_ref
from worker.flow.key_rotation import KeyRotationContext
from worker.local.embedded import DatabendLocalProcess, LocalAws
from worker.runtime.rotation_function import handler

pytestmark = pytest.mark.slow

LAKES = ("abort", "late", "stale", "blind")
LOCK_TTL = 5


@dataclass
class World:
    token: str
    stack: Stack
    aws: LocalAws
    db: DatabendClient
    redis_url: str
    bindings_path: Path
    runs: RedisRunStore
    worker: subprocess.Popen[str] | None = None
    key_ids: list[str] = field(default_factory=list, repr=False)
    material: set[str] = field(default_factory=set, repr=False)  # secrets: never printed

    def name(self, lake: str) -> str:
        return f"safe_{self.token}_{lake}"

    def bucket(self, lake: str) -> str:
        return f"safe-{self.token}-{lake}"

    def secret(self, lake: str) -> str:
        return f"databend/safe-{self.token}-{lake}"

    def user(self, name: str) -> tuple[str, dict[str, str]]:
        user = f"safe-{self.token}-{name}"
        add_user(self.aws, user)
        return user, self.key(user)

    def key(self, user: str) -> dict[str, str]:
        key = fresh_key(self.aws, self.db, user, avoid=self.key_ids)
        self.key_ids.append(key["AccessKeyId"])
        self.material |= set(key.values())
        return key

    def start_worker(
        self, name: str, faults: str | None = None, **settings: str
    ) -> subprocess.Popen[str]:
        self.stop_worker()
        self.worker = self.stack.start_worker(name, "--concurrency", "4", faults=faults, **settings)
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            self.worker.wait(timeout=30)

    def status(self, run_id: str) -> dict[str, Any]:
        result = self.stack.cli("status", run_id, "--json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def on_key(self, tables: list[TableName], key_id: str) -> bool:
        return all(storage_tail(self.db, t) == tail(key_id) for t in tables)

    def assert_no_secret_leaked(self, *secrets: str) -> None:
        material = set(self.material)
        for secret in secrets:
            material |= secret_material(self.aws, secret)
        assert_no_secret_in(self.stack.all_output(), material)


@pytest.fixture(scope="module")
def world(
    databend_local: DatabendLocalProcess,
    databend: DatabendClient,
    aws: LocalAws,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    t = uuid.uuid4().hex[:6]
    work = tmp_path_factory.mktemp("safety")
    (work / "bindings.toml").write_text(
        "\n".join(
            f'[[bindings]]\nname = "{lake}-{t}"\nsecret = "databend/safe-{t}-{lake}"\n'
            f'connection_prefix = "safe_{t}_{lake}"\ntables = ["safe_{t}_{lake}.*"]\n'
            "discover = false\n"
            for lake in LAKES
        )
    )
    (work / "logs").mkdir()
    stack = Stack(
        env=stack_env(databend_local.dsn, redis_url, work / "bindings.toml", aws),
        log_dir=work / "logs",
    )
    stack.env["ROTATOR_LOCK_TTL"] = str(LOCK_TTL)
    w = World(
        token=t,
        stack=stack,
        aws=aws,
        db=databend,
        redis_url=redis_url,
        bindings_path=work / "bindings.toml",
        runs=RedisRunStore.from_url(redis_url),
    )
    w.start_worker("worker")
    yield w
    stack.close()


def seed(world: World, lake: str, tables: int) -> tuple[str, str, list[TableName], dict[str, str]]:
    """User, secret (holding K1), bucket and ``tables`` external tables on K1 for ``lake``."""
    user, k1 = world.user(lake)
    world.aws.client("s3").create_bucket(Bucket=world.bucket(lake))
    create_key_connection(world.db, world.aws, f"{world.name(lake)}_seed", k1)
    names = [TableName(world.name(lake), f"table {i}") for i in range(tables)]
    for name in names:
        create_external_table(world.db, name, world.bucket(lake), f"{world.name(lake)}_seed", 2)
    world.aws.client("secretsmanager").create_secret(
        Name=world.secret(lake), SecretString=key_secret_json(world.aws, k1)
    )
    return user, world.secret(lake), names, k1


# A `rotator` CLI process that has done its imports and waits for its arguments on stdin: the
# abort below must land within a table run that lasts about a second, less than the half second
# a fresh interpreter needs to import the CLI's dependencies.
_PRIMED = """
import sys
import worker.cli, worker.flow.lifecycle, worker.runtime.services, boto3
import worker.adapters.databend_admin
print("primed", flush=True)
sys.argv = ["rotator", *sys.stdin.readline().split()]
worker.cli.main()
"""


class PrimedCli:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.process = subprocess.Popen(
            [sys.executable, "-c", _PRIMED],
            env=stack.env,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        stack.processes.append(self.process)  # ended with the stack if never given its turn
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "primed"

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        stdout, stderr = self.process.communicate(" ".join(args) + "\n", timeout=timeout)
        self.stack.outputs += [stdout, stderr]
        return subprocess.CompletedProcess(args, self.process.returncode, stdout, stderr)


def test_abort_while_tables_are_switching_leaves_every_table_on_the_old_key(
    world: World,
) -> None:
    # Given a lake of 40 tables whose key rotation is switching them, some already validated
    user, secret, tables, k1 = seed(world, "abort", 40)
    abort_cli = PrimedCli(world.stack)
    started = world.stack.cli("rotate", f"abort-{world.token}", "--commit", "--no-wait")
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = run_id_of(started)
    table_run = wait_until(lambda: world.runs.get(run_id).data.get("table_run"), "table run")
    counts = wait_until(
        lambda: (c := world.runs.status_counts(table_run)) and c["validated"] and c,
        "a validated table",
        interval=0.01,
    )
    assert counts["pending"] > 0, f"the table run ended before the abort: {counts}"

    # When the rotation is aborted
    aborted = abort_cli.run("abort", run_id)

    # Then the abort succeeds; every table is back on K1 and reads; K2 is gone, so is AWSPENDING
    assert aborted.returncode == 0, aborted.stdout + aborted.stderr
    run = world.runs.get(run_id)
    k2 = str(run.data["new_key_id"])
    assert run.status == "aborted"
    assert access_keys(world.aws, user) == {k1["AccessKeyId"]: "Active"}
    assert not any("AWSPENDING" in s for s in stages(world.aws, secret).values())
    assert current_key(world.aws, secret) == k1["AccessKeyId"]
    left = world.status(table_run)
    assert left["counts"].get("pending", 0) > 0, "the abort landed while tables were switching"

    # And once every queued task of the run has been handled, no table ever ends on K2
    wait_until(lambda: not queued_for(world.redis_url, [run_id, table_run]), "queue drained")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert not any(storage_tail(world.db, t) == tail(k2) for t in tables)
        time.sleep(0.3)
    assert world.on_key(tables, k1["AccessKeyId"])
    assert all(rows(world.db, t) == 2 for t in tables)
    world.assert_no_secret_leaked(secret)


def test_late_redelivery_of_a_killed_run_never_moves_tables_behind_a_newer_version(
    world: World,
) -> None:
    # Given version v1 (K2) being applied by a worker that dies after its first table, in the
    # middle of a batch of 6 (ROTATOR_PARALLEL=2: two batches for the 12 tables)
    user, secret, tables, k1 = seed(world, "late", 12)
    sm = world.aws.client("secretsmanager")
    k2 = world.key(user)
    sm.put_secret_value(SecretId=secret, SecretString=key_secret_json(world.aws, k2))
    crashing = world.start_worker(
        "worker-dies-after-a-table", faults="rotation-after-table", ROTATOR_PARALLEL="2"
    )
    first = world.stack.cli("rotate-version", secret, "--no-wait")
    assert first.returncode == 0, first.stdout + first.stderr
    v1_run = run_id_of(first)
    assert crashing.wait(timeout=60) == 86
    cut_short = world.status(v1_run)
    assert cut_short["counts"] == {"pending": 12}, "it died before writing any outcome"
    assert sum(row["attempts"] >= 1 for row in cut_short["tables"]) >= 6, "a batch was begun"

    # When v2 (K3, another user's key) is applied by a healthy worker
    _, k3 = world.user("late-next")
    v2 = sm.put_secret_value(SecretId=secret, SecretString=key_secret_json(world.aws, k3))
    world.start_worker("worker-after-crash")
    second = world.stack.cli("rotate-version", secret, "--timeout", "120")
    assert second.returncode == 0, second.stdout + second.stderr
    assert run_id_of(second) != v1_run
    assert world.status(run_id_of(second))["version_id"] == v2["VersionId"]
    assert world.on_key(tables, k3["AccessKeyId"])
    changed = last_changed(world.db, world.name("late"))

    # And then v1's tasks come back late, as the broker redelivers a dead worker's messages:
    # the batch of all its tables, as v1 was cut, and the one-table messages of older versions
    from worker.runtime.celery_app import app, configure_app
    from worker.runtime.settings import Settings

    configure_app(Settings.model_validate(world.stack.env))
    try:
        refs = [object_ref(table) for table in tables]
        sent = {
            app.send_task("rotator.rotation.switch_batch", args=[v1_run, refs], queue="rotator").id
        }
        sent |= {
            app.send_task(
                "rotator.rotation.switch_table",
                args=[v1_run, table.database, table.table],
                queue="rotator",
            ).id
            for table in tables
        }
    finally:
        app.pool.force_close_all()
    wait_until(lambda: not sent & set(queued_for(world.redis_url, [v1_run])), "late tasks handled")

    # Then every table is still on v2's key and reads, even once v1's and v0's keys are gone;
    # the late work changed no table at all (not even to the same connection again)
    assert world.on_key(tables, k3["AccessKeyId"])
    assert last_changed(world.db, world.name("late")) == changed
    for key in (k1, k2):
        world.aws.client("iam").delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
    assert all(rows(world.db, t) == 2 for t in tables)
    late = world.status(v1_run)
    superseded = [row for row in late["tables"] if row["status"] == "superseded"]
    assert late["status"] == "superseded" or superseded, late
    assert labelled(world.aws, secret, "AWSCURRENT") == v2["VersionId"]
    world.assert_no_secret_leaked(secret)


class RotationFunctionServices:
    """What ``worker.rotation_function.handler`` needs, on this module's Redis, moto, Databend."""

    def __init__(self, world: World) -> None:
        client = redis.Redis.from_url(world.redis_url)
        self.runs = RedisRunStore(client)
        self.locks = RedisSecretLocks(client, LOCK_TTL)
        self.fences = RedisFences(client)
        self.lease_seconds = 360.0
        self.secrets = SecretsManagerStore(world.aws.client("secretsmanager"))
        self.iam = BotoIamKeys(world.aws.client("iam"))
        self.admin = DriverDatabendAdmin(world.db)
        self.bindings: list[Binding] = load_bindings(world.bindings_path)

    def key_rotation(self) -> KeyRotationContext:
        return KeyRotationContext(
            runs=self.runs,
            secrets=self.secrets,
            writer=self.secrets,
            iam=self.iam,
            admin=self.admin,
            locks=self.locks,
            fences=self.fences,
            bound_secrets=tuple(b.secret for b in self.bindings),
        )


def rotation_function_step(services: RotationFunctionServices, event: dict[str, str]) -> None:
    """One step, tried again while the secret is busy, as Secrets Manager retries a failed step."""
    deadline = time.monotonic() + 60
    while True:
        try:
            handler(event, services=services)
            return
        except LockBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_resume_of_a_stale_key_rotation_after_another_rotation_keeps_the_live_key(
    world: World, capfd: pytest.CaptureFixture[str]
) -> None:
    # Given a key rotation cut short right after CreateAccessKey (its key never recorded)
    user, secret, tables, k1 = seed(world, "stale", 3)
    crashing = world.start_worker("worker-dies-after-create-key", "key-rotation-after-create-key")
    first = world.stack.cli("rotate", f"stale-{world.token}", "--commit", "--no-wait")
    assert first.returncode == 0, first.stdout + first.stderr
    stale_run = run_id_of(first)
    assert crashing.wait(timeout=60) == 86
    assert len(access_keys(world.aws, user)) == 2, "K1 and the stale run's unrecorded key"
    world.start_worker("worker-after-stale")

    # And another rotation of the secret completed through the rotation-function path
    services = RotationFunctionServices(world)
    token = str(uuid.uuid4())
    for step in ("createSecret", "setSecret", "testSecret", "finishSecret"):
        rotation_function_step(
            services, {"SecretId": secret, "ClientRequestToken": token, "Step": step}
        )
    live = current_key(world.aws, secret)
    assert live != k1["AccessKeyId"] and world.on_key(tables, live)
    world.material |= secret_material(world.aws, secret)

    # When the stale rotation is resumed
    resumed = world.stack.cli("resume", stale_run, "--timeout", "60")

    # Then it ends failed or superseded, saying why, and the live key is untouched
    assert resumed.returncode in (1, 2), resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stderr
    stale = world.runs.get(stale_run)
    assert stale.status in ("failed", "superseded") and stale.error, stale
    assert "superseded" in resumed.stderr or "current key changed" in resumed.stdout
    assert access_keys(world.aws, user) == {k1["AccessKeyId"]: "Inactive", live: "Active"}
    assert current_key(world.aws, secret) == live
    assert world.on_key(tables, live) and all(rows(world.db, t) == 2 for t in tables)

    # When it is aborted, it removes only what it left behind: nothing live
    aborted = world.stack.cli("abort", stale_run)
    assert aborted.returncode == 0, aborted.stdout + aborted.stderr
    assert access_keys(world.aws, user) == {k1["AccessKeyId"]: "Inactive", live: "Active"}
    assert current_key(world.aws, secret) == live
    assert world.on_key(tables, live) and all(rows(world.db, t) == 2 for t in tables)
    world.assert_no_secret_leaked(secret)
    in_process = capfd.readouterr()  # what the rotation function logged in this process
    assert_no_secret_in(in_process.out + in_process.err, secret_material(world.aws, secret))


def test_a_binding_that_selects_nothing_is_refused_unless_allow_empty(world: World) -> None:
    # Given a binding whose selectors match no table
    user, k1 = world.user("blind")
    secret = world.secret("blind")
    world.aws.client("secretsmanager").create_secret(
        Name=secret, SecretString=key_secret_json(world.aws, k1)
    )
    binding = f"blind-{world.token}"

    # When a rotation is committed, it is refused: no key, no version
    refused = world.stack.cli("rotate", binding, "--commit")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert binding in refused.stderr and "--allow-empty" in refused.stderr
    assert access_keys(world.aws, user) == {k1["AccessKeyId"]: "Active"}
    versions = world.aws.client("secretsmanager").list_secret_version_ids(SecretId=secret)
    assert len(versions["Versions"]) == 1

    # When it is committed with --allow-empty, it goes ahead
    allowed = world.stack.cli("rotate", binding, "--commit", "--allow-empty", "--timeout", "60")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    k2 = current_key(world.aws, secret)
    assert k2 != k1["AccessKeyId"]
    assert access_keys(world.aws, user) == {k1["AccessKeyId"]: "Inactive", k2: "Active"}
    world.assert_no_secret_leaked(secret)
