"""Bulk migrations end to end: `rotator migrate` with real workers on moto (IAM enforced),
Valkey and databend-local: 200 tables, canary halts, error-rate thresholds, a killed worker,
pause/resume, rollback, and two workers sharing one run's limits."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from tests.stack import (
    Stack,
    add_user,
    create_external_table,
    create_key_connection,
    last_changed,
    new_key,
    run_id_of,
    stack_env,
    storage_tail,
    tail,
)
from worker.adapters.databend_client import DatabendClient
from worker.adapters.limits import RedisLimits
from worker.adapters.run_store import RedisRunStore
from worker.domain.model import RunStatus, TableOutcome, TableStatus
from worker.domain.sql import TableName
from worker.flow.runs.switch import MAX_BATCH
from worker.local.embedded import DatabendLocalProcess, LocalAws

pytestmark = pytest.mark.slow


def policy(statements: list[tuple[str | list[str], list[str]]]) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": action, "Resource": resources}
                for action, resources in statements
            ],
        }
    )


def bucket_arns(*buckets: str) -> list[str]:
    return [r for b in buckets for r in (f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*")]


@dataclass
class MigrationWorld:
    token: str
    stack: Stack
    aws: LocalAws
    runs: RedisRunStore
    worker: subprocess.Popen[str]
    keys: dict[str, dict[str, str]]

    def user(self, name: str, policy_document: str) -> dict[str, str]:
        user = f"mig-{self.token}-{name}"
        add_user(self.aws, user)
        self.aws.client("iam").put_user_policy(
            UserName=user, PolicyName="s3", PolicyDocument=policy_document
        )
        key = new_key(self.aws, user, avoid=[k["AccessKeyId"] for k in self.keys.values()])
        self.keys[name] = key
        return key

    def status(self, run_id: str) -> dict[str, Any]:
        result = self.stack.cli("status", run_id, "--json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def restart_worker(self, name: str) -> None:
        self.worker = self.stack.start_worker(name, "--concurrency", "8")

    @contextlib.contextmanager
    def two_workers(self, name: str, threads: int = 3) -> Iterator[tuple[str, str]]:
        """Two `rotator worker` processes of ``threads`` threads each in place of the world's
        worker, ready before the block starts; the world's worker is back after it. Each process
        holds at most ``threads`` messages at once (prefetch), so a run of more batches than that
        is shared by both whichever asks the broker first. Yields their log names."""
        self.worker.terminate()
        self.worker.wait(timeout=60)
        names = (f"{name}-a", f"{name}-b")
        workers = [self.stack.start_worker(n, "--concurrency", str(threads)) for n in names]
        try:
            for log_name, worker in zip(names, workers, strict=True):
                log = self.stack.log_dir / f"{log_name}.log"
                deadline = time.monotonic() + 60
                while " ready." not in log.read_text(errors="replace"):
                    assert worker.poll() is None, log.read_text(errors="replace")[-4000:]
                    assert time.monotonic() < deadline, f"{log_name} never got ready"
                    time.sleep(0.1)
            yield names
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=60)
            self.restart_worker(f"worker-after-{name}")

    def wait_for_end(self, run_id: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while not RunStatus(status := self.runs.get(run_id).status).final:
            assert time.monotonic() < deadline, f"run {run_id} still {status}"
            time.sleep(0.2)
        return status

    def batches_done(self, run_id: str, objects: int) -> dict[str, list[dict[str, Any]]]:
        """The run's "batch done" log lines by worker log, once they account for ``objects``
        (a batch logs its line after its last write, which may close the run)."""
        deadline = time.monotonic() + 30
        while True:
            found: dict[str, list[dict[str, Any]]] = {}
            for path in sorted(self.stack.log_dir.glob("*.log")):
                for line in path.read_text(errors="replace").splitlines():
                    with contextlib.suppress(ValueError):
                        event = json.loads(line) if line.startswith("{") else {}
                        if event.get("event") == "batch done" and event.get("run_id") == run_id:
                            found.setdefault(path.stem, []).append(event)
            recorded = sum(e["recorded"] for lines in found.values() for e in lines)
            if recorded >= objects or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


@pytest.fixture(scope="module")
def world(
    databend_local: DatabendLocalProcess,
    databend: DatabendClient,
    aws: LocalAws,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MigrationWorld]:
    t = uuid.uuid4().hex[:6]
    work = tmp_path_factory.mktemp("migration")
    (work / "bindings.toml").write_text(
        f'[[bindings]]\nname = "mig"\nsecret = "unused-{t}"\nconnection_prefix = "mig_{t}"\n'
        f'tables = ["mig_{t}_main.*"]\n'
        f'[[bindings]]\nname = "migb"\nsecret = "unused-b-{t}"\nconnection_prefix = "migb_{t}"\n'
        f'tables = ["mig_{t}_bound.*"]\ndiscover = false\n'
        # finds its objects by discovery alone (and, with no bucket known, finds none)
        f'[[bindings]]\nname = "migd"\nsecret = "unused-d-{t}"\nconnection_prefix = "migd_{t}"\n'
    )
    (work / "logs").mkdir()
    stack = Stack(
        env=stack_env(databend_local.dsn, redis_url, work / "bindings.toml", aws),
        log_dir=work / "logs",
    )
    w = MigrationWorld(
        token=t,
        stack=stack,
        aws=aws,
        runs=RedisRunStore.from_url(redis_url),
        worker=stack.start_worker("worker", "--concurrency", "8"),
        keys={},
    )
    for bucket in ("a", "b"):
        aws.client("s3").create_bucket(Bucket=f"mig-{t}-{bucket}")
    a, b = f"mig-{t}-a", f"mig-{t}-b"
    everything = bucket_arns(a, b)
    for name, document in {
        "source": policy([("s3:*", everything)]),
        "ratesource": policy([("s3:*", everything)]),
        "target": policy([("s3:*", everything)]),
        # can list both buckets (so it passes the target check) but read/write only bucket a
        "partial": policy([("s3:*", bucket_arns(a)), ("s3:ListBucket", [f"arn:aws:s3:::{b}"])]),
        "listonly": policy([("s3:ListBucket", [f"arn:aws:s3:::{a}", f"arn:aws:s3:::{b}"])]),
        "nothing": policy([("s3:ListAllMyBuckets", ["*"])]),
    }.items():
        create_key_connection(databend, aws, f"mig_{t}_{name}", w.user(name, document))
    yield w
    stack.close()


def make_tables(
    world: MigrationWorld,
    databend: DatabendClient,
    group: str,
    count: int,
    *,
    in_b_every: int = 0,
    source: str = "source",
) -> list[TableName]:
    tables = []
    for i in range(count):
        table = TableName(f"mig_{world.token}_{group}", f"table {i:03d}")
        bucket = "b" if in_b_every and i % in_b_every == in_b_every - 1 else "a"
        create_external_table(
            databend, table, f"mig-{world.token}-{bucket}", f"mig_{world.token}_{source}", rows=1
        )
        tables.append(table)
    return tables


def suffix(world: MigrationWorld, name: str) -> str:
    return tail(world.keys[name]["AccessKeyId"])


def test_two_hundred_tables_migrate_then_roll_back(
    world: MigrationWorld, databend: DatabendClient
) -> None:
    t = world.token
    tables = make_tables(world, databend, "main", 200)
    dry = world.stack.cli("migrate", "--to", f"mig_{t}_target", "--tables", f"mig_{t}_main.*")
    assert dry.returncode == 0 and "200 table(s)" in dry.stdout and "dry run" in dry.stdout
    assert {storage_tail(databend, x) for x in tables} == {suffix(world, "source")}

    result = world.stack.cli(
        "migrate",
        "--to",
        f"mig_{t}_target",
        "--tables",
        f"mig_{t}_main.*",
        "--commit",
        "--wave-size",
        "50",
        "--canary",
        "5",
        "--timeout",
        "300",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_of(result)
    status = world.status(run_id)
    assert status["status"] == "succeeded" and status["counts"] == {"validated": 200}
    assert (status["total"], status["done"], status["eta_seconds"]) == (200, 200, 0.0)
    assert status["tables_per_second"] > 0
    for table in tables:
        assert storage_tail(databend, table) == suffix(world, "target")
    assert all(len(databend.query(f"SELECT * FROM {x.sql}")) == 1 for x in tables)

    back = world.stack.cli("rollback", run_id)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "200 table(s) moved back" in back.stdout
    for table in tables:
        assert storage_tail(databend, table) == suffix(world, "source")
        assert len(databend.query(f"SELECT * FROM {table.sql}")) == 1
    rolled = world.status(run_id)
    assert rolled["status"] == "rolled_back" and rolled["counts"] == {"rolled_back": 200}
    assert {row["rule"] for row in rolled["tables"]} == {f"rolled back to mig_{t}_source"}
    again = world.stack.cli("rollback", run_id)
    assert again.returncode == 0 and "0 table(s) moved back" in again.stdout


def test_a_target_that_cannot_reach_the_bucket_is_refused_before_any_table(
    world: MigrationWorld, databend: DatabendClient
) -> None:
    t = world.token
    tables = make_tables(world, databend, "refused", 3)
    result = world.stack.cli(
        "migrate", "--to", f"mig_{t}_nothing", "--tables", f"mig_{t}_refused.*", "--commit"
    )
    assert result.returncode == 2
    assert "cannot reach bucket" in result.stderr
    assert {storage_tail(databend, x) for x in tables} == {suffix(world, "source")}
    missing = world.stack.cli("migrate", "--to", "no_such_connection", "--from", f"mig_{t}_source")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_tables_takes_several_selectors_and_nothing_else_takes_any(
    world: MigrationWorld, databend: DatabendClient
) -> None:
    t = world.token
    tables = make_tables(world, databend, "several", 4)
    quoted = [f"mig_{t}_several.`{x.table}`" for x in tables]
    target = f"mig_{t}_target"
    dry = world.stack.cli("migrate", "--to", target, "--tables", *quoted[:2], "--tables", quoted[2])
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "3 table(s)" in dry.stdout and "dry run" in dry.stdout
    assert tables[3].table not in dry.stdout
    for args in (
        (quoted[0],),  # a selector with no --tables before it
        ("--from", f"mig_{t}_source", quoted[0]),
        ("--tables", quoted[0], "--from", f"mig_{t}_source"),
    ):
        refused = world.stack.cli("migrate", "--to", target, *args, "--commit")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "Traceback" not in refused.stderr
    assert {storage_tail(databend, x) for x in tables} == {suffix(world, "source")}


def test_binding_moves_what_its_selectors_name_and_a_discovering_binding_is_refused(
    world: MigrationWorld, databend: DatabendClient
) -> None:
    t = world.token
    named = make_tables(world, databend, "bound", 10)
    others = make_tables(world, databend, "unbound", 2)  # on the same key, named by no binding
    tables = named + others
    target = f"mig_{t}_target"
    for binding in ("migd", "nosuch"):
        refused = world.stack.cli("migrate", "--to", target, "--binding", binding, "--commit")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "Traceback" not in refused.stderr
    refused = world.stack.cli("migrate", "--to", target, "--binding", "migd", "--commit")
    assert "names no tables, stages or databases" in refused.stderr
    assert "run " not in refused.stdout, "nothing was queued"
    assert {storage_tail(databend, x) for x in tables} == {suffix(world, "source")}

    result = world.stack.cli(
        "migrate", "--to", target, "--binding", "migb", "--commit", "--canary", "2"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    status = world.status(run_id_of(result))
    assert status["status"] == "succeeded" and status["counts"] == {"validated": 10}
    assert {storage_tail(databend, x) for x in named} == {suffix(world, "target")}
    assert {storage_tail(databend, x) for x in others} == {suffix(world, "source")}


def test_hostile_names_migrate_and_roll_back(
    world: MigrationWorld, databend: DatabendClient
) -> None:
    t = world.token
    database = f"mig {t} `odd` ünï"
    names = ["it's", "we`ird", 'dou"ble', "x'); DROP TABLE y; --", "ünïcode", "a.b c"]
    tables = [TableName(database, name) for name in names]
    for table in tables:
        create_external_table(databend, table, f"mig-{t}-a", f"mig_{t}_source", rows=2)
    selector = '"' + database.replace('"', '""') + '".*'
    result = world.stack.cli(
        "migrate", "--to", f"mig_{t}_target", "--tables", selector, "--commit", "--canary", "2"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_of(result)
    status = world.status(run_id)
    assert status["counts"] == {"validated": len(names)}
    assert {tuple(row["table"]) for row in status["tables"]} == {(database, n) for n in names}
    for table in tables:
        assert storage_tail(databend, table) == suffix(world, "target")
        assert len(databend.query(f"SELECT * FROM {table.sql}")) == 2
    back = world.stack.cli("rollback", run_id)
    assert back.returncode == 0, back.stdout + back.stderr
    for table in tables:
        assert storage_tail(databend, table) == suffix(world, "source")
        assert len(databend.query(f"SELECT * FROM {table.sql}")) == 2


def test_a_failing_canary_halts_with_everything_readable(
    world: MigrationWorld, databend: DatabendClient
) -> None:
    t = world.token
    tables = make_tables(world, databend, "canary", 20)
    result = world.stack.cli(
        "migrate",
        "--to",
        f"mig_{t}_listonly",
        "--tables",
        f"mig_{t}_canary.*",
        "--commit",
        "--canary",
        "3",
        "--timeout",
        "120",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    status = world.status(run_id_of(result))
    assert status["status"] == "halted" and "wave 0" in status["error"]
    assert status["counts"] == {"failed": 3, "pending": 17}
    for table in tables:
        assert storage_tail(databend, table) == suffix(world, "source")
        assert len(databend.query(f"SELECT * FROM {table.sql}")) == 1


def test_error_rate_threshold_halts_at_two_percent_and_completes_at_ten(
    world: MigrationWorld, databend: DatabendClient
) -> None:
    t = world.token
    # 10 tables of 200 (5 %) in the bucket the target may list but not read or write
    tables = make_tables(world, databend, "rate", 200, in_b_every=20, source="ratesource")
    common = [
        "--to",
        f"mig_{t}_partial",
        "--from",
        f"mig_{t}_ratesource",
        "--commit",
        "--wave-size",
        "50",
        "--canary",
        "0",
        "--timeout",
        "300",
    ]
    strict = world.stack.cli(
        "migrate", *common, "--max-error-rate", "0.02", "--tables", f"mig_{t}_rate.*"
    )
    assert strict.returncode == 2, "--from and --tables together are refused"
    strict = world.stack.cli("migrate", *common, "--max-error-rate", "0.02")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    halted = world.status(run_id_of(strict))
    assert halted["status"] == "halted"
    assert halted["counts"]["failed"] <= 3 and halted["counts"].get("pending", 0) >= 150

    # the tables the halted run moved are on the target now; a tolerant run takes the rest
    tolerant = world.stack.cli("migrate", *common, "--max-error-rate", "0.10")
    assert tolerant.returncode == 1, "finished, with failures reported"
    done = world.status(run_id_of(tolerant))
    assert done["status"] == "failed" and done["counts"]["failed"] == 10
    assert "10 of" in done["error"]
    in_b = [x for i, x in enumerate(tables) if i % 20 == 19]
    for table in tables:
        expected = "ratesource" if table in in_b else "partial"
        assert storage_tail(databend, table) == suffix(world, expected), table
        assert len(databend.query(f"SELECT * FROM {table.sql}")) == 1


def test_pause_stops_a_run_and_resume_finishes_it(
    world: MigrationWorld, databend: DatabendClient
) -> None:
    t = world.token
    tables = make_tables(world, databend, "pause", 40)
    common = ("--to", f"mig_{t}_target", "--tables", f"mig_{t}_pause.*", "--commit")
    # 40 tables at 5/s: the pause (a CLI start on a busy 2-core machine) lands mid-run
    run_id = run_id_of(world.stack.cli("migrate", *common, "--rate", "5", "--no-wait"))
    deadline = time.monotonic() + 60
    while world.status(run_id)["counts"].get("validated", 0) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    paused = world.stack.cli("pause", run_id)  # returns once the tables in flight are recorded
    assert paused.returncode == 0, paused.stdout + paused.stderr
    held = world.status(run_id)
    assert held["status"] == "paused"
    time.sleep(3)
    assert world.status(run_id)["counts"] == held["counts"], "a paused run went on"
    assert held["counts"].get("pending", 0) > 0

    resumed = world.stack.cli("resume", run_id, "--timeout", "120")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert world.status(run_id)["counts"] == {"validated": 40}
    for table in tables:
        assert storage_tail(databend, table) == suffix(world, "target")


def test_a_killed_worker_resumes_without_switching_any_table_twice(
    world: MigrationWorld, databend: DatabendClient
) -> None:
    t = world.token
    tables = make_tables(world, databend, "kill", 200)
    result = world.stack.cli(
        "migrate",
        "--to",
        f"mig_{t}_target",
        "--tables",
        f"mig_{t}_kill.*",
        "--commit",
        "--rate",
        "25",
        "--no-wait",
    )
    run_id = run_id_of(result)
    deadline = time.monotonic() + 60
    while world.status(run_id)["counts"].get("validated", 0) < 40:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    world.worker.send_signal(signal.SIGKILL)  # a crash: tables in flight, slots held
    world.worker.wait(timeout=30)
    before = {
        tuple(x["table"]): x for x in world.status(run_id)["tables"] if x["status"] == "validated"
    }
    assert 40 <= len(before) < 200

    world.restart_worker("worker-after-kill")
    started = time.monotonic()
    resumed = world.stack.cli("resume", run_id, "--timeout", "300")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # 160 tables at 25/s, after the dead worker's slot leases (30 s) run out: not its 10 minutes
    assert time.monotonic() - started < 90
    after = world.status(run_id)
    assert after["status"] == "succeeded"
    assert set(after["counts"]) <= {"validated", "already_switched"}
    assert sum(after["counts"].values()) == 200
    by_table = {tuple(x["table"]): x for x in after["tables"]}
    for key, outcome in before.items():
        assert by_table[key] == outcome, "a table finished before the kill was not switched again"
    for table in tables:
        assert storage_tail(databend, table) == suffix(world, "target")


class SlotSampler(threading.Thread):
    """Samples how many of a run's shared concurrency slots are held, every few milliseconds."""

    def __init__(self, redis_url: str, run_id: str) -> None:
        super().__init__(name="slot-sampler", daemon=True)
        self.limits = RedisLimits(redis.Redis.from_url(redis_url))
        self.run_id = run_id
        self.samples: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(self.limits.busy_slots(self.run_id))
            time.sleep(0.005)

    def __enter__(self) -> SlotSampler:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.done.set()
        self.join(timeout=10)


def assert_each_switched_once(
    outcomes: list[TableOutcome], changed: dict[str, float], since: float
) -> None:
    """Every table validated by its first and only attempt, and the last change Databend knows of
    on it is that switch: none was switched again after its recorded switch."""
    for outcome in outcomes:
        name = outcome.table
        assert (outcome.status, outcome.attempts) == (TableStatus.VALIDATED, 1), outcome
        assert outcome.switched_at is not None and isinstance(name, TableName)
        assert since <= changed[name.table] <= outcome.switched_at + 0.01, outcome


def test_two_workers_share_one_run_with_exact_limits(
    world: MigrationWorld, databend: DatabendClient, redis_url: str
) -> None:
    # Given one wave of more tables than 4 batches hold: 5 batches for --concurrency 4, so a
    # batch has to wait for a slot, and two worker processes of 3 threads each to take them
    t = world.token
    count = 4 * MAX_BATCH + 4
    tables = make_tables(world, databend, "shared", count)
    with world.two_workers("shared") as workers:
        # When the run migrates them with a shared limit of 4 batches at once
        since = time.time()
        result = world.stack.cli(
            "migrate",
            "--to",
            f"mig_{t}_target",
            "--tables",
            f"mig_{t}_shared.*",
            "--commit",
            "--wave-size",
            str(count),
            "--canary",
            "0",
            "--concurrency",
            "4",
            "--no-wait",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        run_id = run_id_of(result)
        with SlotSampler(redis_url, run_id) as slots:
            status = world.wait_for_end(run_id)
        batches = world.batches_done(run_id, count)

    # Then every table is on the target, validated by its one and only attempt
    assert status == RunStatus.SUCCEEDED
    outcomes = world.runs.outcomes(run_id)
    assert len(outcomes) == count
    assert_each_switched_once(outcomes, last_changed(databend, f"mig_{t}_shared"), since)
    for table in tables:
        assert storage_tail(databend, table) == suffix(world, "target")
    # and both workers switched part of it, each batch once: 5 batches, every object recorded
    # by exactly one of them
    assert set(batches) == set(workers), batches
    assert sum(len(lines) for lines in batches.values()) == 5, batches
    recorded = {log: sum(e["recorded"] for e in lines) for log, lines in batches.items()}
    assert sum(recorded.values()) == count and min(recorded.values()) > 0, recorded
    # and never more than 4 batches held a slot at once, while several did
    assert len(slots.samples) > 100, "the sampler hardly ran"
    assert 2 <= max(slots.samples) <= 4, sorted(set(slots.samples))
    # the write that closes the run comes a moment before its batch lets go of its slot: every
    # slot is given back within seconds (a leaked one would stay for its 30 s lease)
    deadline = time.monotonic() + 5
    while slots.limits.busy_slots(run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slots.limits.busy_slots(run_id) == 0, "every slot was given back"


def test_a_rate_is_shared_by_every_worker_of_the_run(
    world: MigrationWorld, databend: DatabendClient
) -> None:
    # Given 60 tables and two worker processes of 3 threads each
    t = world.token
    count, rate = 60, 6.0
    make_tables(world, databend, "paced", count)
    with world.two_workers("paced") as workers:
        # When they migrate at --rate 6 (tables per second for the whole run) in 4 batches
        since = time.time()
        result = world.stack.cli(
            "migrate",
            "--to",
            f"mig_{t}_target",
            "--tables",
            f"mig_{t}_paced.*",
            "--commit",
            "--canary",
            "0",
            "--concurrency",
            "4",
            "--rate",
            str(rate),
            "--timeout",
            "300",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        run_id = run_id_of(result)
        batches = world.batches_done(run_id, count)

    # Then both workers took part, and together they kept to the one rate: the switches span
    # (count - 1) / rate seconds (9.8 s; a pace per worker would take half that, per batch a
    # quarter), less an allowance for how long the first ALTER took
    recorded = {log: sum(e["recorded"] for e in lines) for log, lines in batches.items()}
    assert set(recorded) == set(workers) and min(recorded.values()) > 0, recorded
    assert sum(recorded.values()) == count, recorded
    outcomes = world.runs.outcomes(run_id)
    assert_each_switched_once(outcomes, last_changed(databend, f"mig_{t}_paced"), since)
    switched = sorted(o.switched_at for o in outcomes if o.switched_at is not None)
    assert len(switched) == count
    assert switched[-1] - switched[0] >= (count - 1) / rate - 2.0, switched[-1] - switched[0]


def test_rollback_and_migrate_keep_tables_off_a_key_their_secret_was_rotated_away_from(
    world: MigrationWorld, databend: DatabendClient
) -> None:
    """The bound secret held the source key when the migration ran, and has since been rotated to
    another key (the source key is only AWSPREVIOUS now, due to be retired): `rollback` leaves
    the tables on the target (a working key), says why, exits 1, and a `migrate --to` the source
    connection is refused (exit 2); once AWSCURRENT is back on the source key's version,
    `rollback` again moves them back."""
    t = world.token
    sm = world.aws.client("secretsmanager")
    tables = make_tables(world, databend, "rotatedaway", 3)
    result = world.stack.cli(
        "migrate", "--to", f"mig_{t}_target", "--tables", f"mig_{t}_rotatedaway.*", "--commit"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_of(result)
    source, other = world.keys["source"], world.keys["ratesource"]

    def value(key: dict[str, str]) -> str:
        return json.dumps(
            {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
        )

    secret = f"unused-{t}"  # the secret the world's binding names
    first = sm.create_secret(Name=secret, SecretString=value(source))["VersionId"]
    try:
        sm.put_secret_value(SecretId=secret, SecretString=value(other))  # rotated away

        back = world.stack.cli("rollback", run_id)
        assert back.returncode == 1, back.stdout + back.stderr
        assert "0 table(s) moved back" in back.stdout
        assert back.stderr.count("rotated away from") == 3, back.stderr
        for key in (source, other):
            assert key["SecretAccessKey"] not in back.stdout + back.stderr
        for table in tables:
            assert storage_tail(databend, table) == suffix(world, "target")
            assert len(databend.query(f"SELECT * FROM {table.sql}")) == 1
        status = world.status(run_id)
        assert status["status"] == "rolled_back" and status["counts"] == {"validated": 3}
        # nor can a new migration put them on that key: refused before anything moves
        onto = world.stack.cli(
            "migrate", "--to", f"mig_{t}_source", "--tables", f"mig_{t}_rotatedaway.*", "--commit"
        )
        assert onto.returncode == 2, onto.stdout + onto.stderr
        assert f"target connection mig_{t}_source: " in onto.stderr
        assert "rotated away from" in onto.stderr and "nothing was changed" in onto.stderr
        assert {storage_tail(databend, x) for x in tables} == {suffix(world, "target")}

        current = sm.describe_secret(SecretId=secret)["VersionIdsToStages"]
        now = next(v for v, stages in current.items() if "AWSCURRENT" in stages)
        sm.update_secret_version_stage(
            SecretId=secret, VersionStage="AWSCURRENT", MoveToVersionId=first,
            RemoveFromVersionId=now,
        )  # fmt: skip
        again = world.stack.cli("rollback", run_id)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "3 table(s) moved back" in again.stdout
        for table in tables:
            assert storage_tail(databend, table) == suffix(world, "source")
    finally:
        sm.delete_secret(SecretId=secret, ForceDeleteWithoutRecovery=True)
