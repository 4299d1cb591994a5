"""Rotation end to end on real parts: databend-local, Valkey, moto with IAM enforced, a real Celery
worker and the ``rotator`` CLI, each in its own process.

Given an IAM user whose key K1 is in secret version v1 and 20 external tables bound to the secret
(plus 3 on another team's key), when v2 holds K2 and ``rotator rotate-version`` runs, then every
bound table carries K2, reads its rows, and keeps reading and writing after K1 is deleted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.stack import (
    REPO,
    Stack,
    connection_names,
    create_external_table,
    create_key_connection,
    key_secret_json,
    last_changed,
    make_user,
    new_key,
    run_id_of,
    stack_env,
    storage_tail,
    tail,
)
from worker.adapters.databend_client import DatabendClient
from worker.adapters.run_store import RedisRunStore
from worker.domain.sql import TableName, quote_identifier, quote_string
from worker.local.embedded import DatabendLocalProcess, LocalAws, free_port

pytestmark = pytest.mark.slow


@dataclass
class Scenario:
    token: str
    stack: Stack
    worker: subprocess.Popen[str]
    metrics_port: int

    def secret(self, name: str) -> str:
        return f"databend/{name}-{self.token}"

    def tables_counted(self, kind: str, status: str) -> float:
        """The worker's rotator_tables_total{kind, status} as Prometheus serves it."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        deadline = time.monotonic() + 60
        while True:  # the worker serves them from its start
            try:
                text = urllib.request.urlopen(url, timeout=10).read().decode()
                break
            except OSError:
                if time.monotonic() > deadline or self.worker.poll() is not None:
                    raise
                time.sleep(0.2)
        line = f'rotator_tables_total{{kind="{kind}",status="{status}"}} '
        values = [float(x.removeprefix(line)) for x in text.splitlines() if x.startswith(line)]
        return values[0] if values else 0.0


@pytest.fixture(scope="module")
def scenario(
    databend_local: DatabendLocalProcess,
    aws: LocalAws,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scenario]:
    import uuid

    token = uuid.uuid4().hex[:6]
    work = tmp_path_factory.mktemp("rotation")
    bindings = work / "bindings.toml"
    bindings.write_text(f"""
[[bindings]]
name = "lake-main"
secret = "databend/lake-{token}"
connection_prefix = "lake_{token}"
tables = ["sales_{token}.*", "`Ops Data {token}`.*"]
discover = true

[[bindings]]
name = "bad-json"
secret = "databend/badjson-{token}"
connection_prefix = "badjson_{token}"
tables = ["badjson_{token}.*"]

[[bindings]]
name = "crash"
secret = "databend/crash-{token}"
connection_prefix = "crash_{token}"
tables = ["crash_{token}.*"]
discover = false

[[bindings]]
name = "resend"
secret = "databend/resend-{token}"
connection_prefix = "resend_{token}"
tables = ["resend_{token}.*"]
discover = false

[[bindings]]
name = "single"
secret = "databend/single-{token}"
connection_prefix = "single_{token}"
tables = ["single_{token}.only"]
discover = false

[[bindings]]
name = "partial"
secret = "databend/partial-{token}"
connection_prefix = "partial_{token}"
tables = ["partial_{token}.*"]
discover = false
""")
    log_dir = work / "logs"
    log_dir.mkdir()
    stack = Stack(env=stack_env(databend_local.dsn, redis_url, bindings, aws), log_dir=log_dir)
    port = free_port()
    worker = stack.start_worker("worker", "--concurrency", "8", "--metrics-port", str(port))
    yield Scenario(token=token, stack=stack, worker=worker, metrics_port=port)
    stack.close()


def _create_secret(aws: LocalAws, name: str, value: str) -> str:
    return aws.client("secretsmanager").create_secret(Name=name, SecretString=value)["ARN"]


def _put_version(aws: LocalAws, name: str, value: str) -> str:
    return aws.client("secretsmanager").put_secret_value(SecretId=name, SecretString=value)[
        "VersionId"
    ]


def _seed_lake(
    scenario: Scenario, databend: DatabendClient, aws: LocalAws, name: str, tables: list[TableName]
) -> tuple[dict[str, str], str]:
    """Bucket, IAM user and key K1, a connection on K1, ``tables`` on it (3 rows each) and the
    secret ``name`` holding K1 (bound in the bindings above): returns (K1, secret name)."""
    t = scenario.token
    bucket = f"{name}-{t}"
    aws.client("s3").create_bucket(Bucket=bucket)
    k1 = make_user(aws, f"{name}-{t}")
    create_key_connection(databend, aws, f"{name}seed_{t}", k1)
    for table in tables:
        create_external_table(databend, table, bucket, f"{name}seed_{t}")
    secret = scenario.secret(name)
    _create_secret(aws, secret, key_secret_json(aws, k1))
    return k1, secret


def _switched(scenario: Scenario, run_id: str) -> list[str]:
    """The objects the audit trail lists as switched by the run (once per row)."""
    shown = scenario.stack.cli("audit", "--json")
    assert shown.returncode == 0, shown.stderr
    events = json.loads(shown.stdout)["events"]
    return [
        e["object"] for e in events if e["action"] == "object_switched" and e["run_id"] == run_id
    ]


def _restart_module_worker(scenario: Scenario, name: str) -> None:
    """The module's worker back, as the fixture started it, after a test replaced it."""
    scenario.worker = scenario.stack.start_worker(
        name, "--concurrency", "8", "--metrics-port", str(scenario.metrics_port)
    )


def _rows(db: DatabendClient, table: TableName) -> list[tuple[object, ...]]:
    return db.query(f"SELECT id, label FROM {table.sql} ORDER BY id")


def test_rotation_switches_every_bound_table_and_survives_revocation(
    scenario: Scenario, databend: DatabendClient, aws: LocalAws
) -> None:
    t = scenario.token
    bucket = f"lake-{t}"
    aws.client("s3").create_bucket(Bucket=bucket)
    k1 = make_user(aws, f"lake-reader-{t}")
    other = make_user(aws, f"other-team-{t}")
    while tail(other["AccessKeyId"]) == tail(k1["AccessKeyId"]):
        other = new_key(aws, f"other-team-{t}")
    create_key_connection(databend, aws, f"seed_{t}", k1)
    create_key_connection(databend, aws, f"other_{t}", other)
    sales = [
        TableName(f"sales_{t}", n)
        for n in [
            "orders",
            "order items",
            "it's",
            "we`ird",
            "ünïcode",
            "x'); DROP TABLE y; --",
            "t7",
            "t8",
            "t9",
            "t10",
        ]
    ]
    ops = [TableName(f"Ops Data {t}", f"metric {i}") for i in range(8)]
    discovered = [TableName(f"misc_{t}", "found_1"), TableName(f"misc_{t}", "found_2")]
    bound = sales + ops + discovered
    others = [TableName(f"misc_{t}", f"other_{i}") for i in range(3)]
    for table in bound:
        create_external_table(databend, table, bucket, f"seed_{t}")
    for table in others:
        create_external_table(databend, table, bucket, f"other_{t}")
    assert len(bound) == 20
    secret = scenario.secret("lake")
    _create_secret(aws, secret, key_secret_json(aws, k1))
    before_rows = {table: _rows(databend, table) for table in bound}

    # Given K2 as the secret's new AWSCURRENT version
    k2 = new_key(aws, f"lake-reader-{t}", avoid={k1["AccessKeyId"]})
    v2 = _put_version(aws, secret, key_secret_json(aws, k2))

    # When the rotation runs through the CLI and a real worker
    validated_before = scenario.tables_counted("rotation", "validated")
    result = scenario.stack.cli("rotate-version", secret, "--timeout", "240")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_of(result)

    # Then every bound table carries K2 and reads its rows; the other team's tables are untouched
    for table in bound:
        assert storage_tail(databend, table) == tail(k2["AccessKeyId"]), table
        assert _rows(databend, table) == before_rows[table]
    for table in others:
        assert storage_tail(databend, table) == tail(other["AccessKeyId"])
    status = json.loads(scenario.stack.cli("status", run_id, "--json").stdout)
    assert status["status"] == "succeeded"
    assert status["counts"] == {"validated": 20}
    assert status["version_id"] == v2
    assert scenario.tables_counted("rotation", "validated") - validated_before == 20
    rules = {tuple(row["table"]): row["rule"] for row in status["tables"]}
    assert rules[(f"misc_{t}", "found_1")].startswith("discovered")
    # each table's log line carries the run, the secret, the version and the table
    logs = "".join(p.read_text() for p in scenario.stack.log_dir.glob("worker*.log"))
    lines = [json.loads(x) for x in logs.splitlines() if x.startswith('{"')]
    done = [x for x in lines if x.get("event") == "table done" and x.get("run_id") == run_id]
    assert len(done) == 20
    assert {(x["secret"], x["version"]) for x in done} == {(status["secret"], v2)}
    assert {x["table"] for x in done} == {str(TableName(*row["table"])) for row in status["tables"]}
    assert rules[(f"sales_{t}", "orders")] == f"selector sales_{t}.*"

    # When K1 is deleted in IAM, every bound table still reads and accepts inserts
    aws.client("iam").delete_access_key(UserName=f"lake-reader-{t}", AccessKeyId=k1["AccessKeyId"])
    for table in bound:
        databend.execute(f"INSERT INTO {table.sql} VALUES (100, 'after revocation')")
        assert _rows(databend, table)[-1] == (100, "after revocation")
    for table in others:
        assert len(_rows(databend, table)) == 3

    # Re-running the same version is a no-op that reports the tables as already switched
    connections = connection_names(databend)
    again = scenario.stack.cli("rotate-version", secret, "--version-id", v2, "--timeout", "240")
    assert again.returncode == 0, again.stdout + again.stderr
    rerun = json.loads(scenario.stack.cli("status", run_id_of(again), "--json").stdout)
    assert rerun["counts"] == {"already_switched": 20}
    assert scenario.tables_counted("rotation", "already_switched") >= 20
    assert connection_names(databend) == connections

    # Asking for the version AWSCURRENT left (K1's, deleted above) is refused: exit 2, no run
    stages = aws.client("secretsmanager").describe_secret(SecretId=secret)["VersionIdsToStages"]
    (v1,) = [v for v, labels in stages.items() if "AWSPREVIOUS" in labels]
    behind = scenario.stack.cli("rotate-version", secret, "--version-id", v1, "--timeout", "240")
    assert behind.returncode == 2, behind.stdout + behind.stderr
    assert f"version {v1} of {secret} is not AWSCURRENT (version {v2} is)" in behind.stderr
    listed = json.loads(scenario.stack.cli("runs", "--json", "--all", "--limit", "1000").stdout)
    assert v1 not in {run["version"] for run in listed["runs"]}
    assert all(storage_tail(databend, table) == tail(k2["AccessKeyId"]) for table in bound)
    assert connection_names(databend) == connections

    # No secret value reached any log line or CLI output
    output = scenario.stack.all_output()
    for key in (k1, k2, other):
        assert key["SecretAccessKey"] not in output
        assert key["AccessKeyId"] not in output


def test_version_missing_a_field_fails_clearly_and_changes_nothing(
    scenario: Scenario, databend: DatabendClient, aws: LocalAws
) -> None:
    t = scenario.token
    tables = [TableName(f"badjson_{t}", f"t{i}") for i in range(3)]
    k1, secret = _seed_lake(scenario, databend, aws, "badjson", tables)
    k2 = new_key(aws, f"badjson-{t}")
    leaked = json.dumps(
        {"access_key_id": k2["AccessKeyId"], "region": "us-east-1", "note": k2["SecretAccessKey"]}
    )
    _put_version(aws, secret, leaked)
    connections = connection_names(databend)

    result = scenario.stack.cli("rotate-version", secret, "--timeout", "120")

    assert result.returncode == 1
    assert "missing field 'secret_access_key'" in result.stderr
    assert connection_names(databend) == connections
    for table in tables:
        assert storage_tail(databend, table) == tail(k1["AccessKeyId"])
    assert k2["SecretAccessKey"] not in scenario.stack.all_output()


def test_unknown_secret_and_unknown_version_are_refused(scenario: Scenario) -> None:
    missing = scenario.stack.cli("rotate-version", f"databend/nope-{scenario.token}")
    assert missing.returncode == 2
    assert "not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_new_key_that_cannot_list_a_bucket_fails_the_run_before_any_table_is_touched(
    scenario: Scenario, databend: DatabendClient, aws: LocalAws
) -> None:
    t = scenario.token
    good_bucket, other_bucket = f"partial-a-{t}", f"partial-b-{t}"
    for bucket in (good_bucket, other_bucket):
        aws.client("s3").create_bucket(Bucket=bucket)
    k1 = make_user(aws, f"partial-old-{t}")
    create_key_connection(databend, aws, f"partseed_{t}", k1)
    reachable = [TableName(f"partial_{t}", f"ok_{i}") for i in range(3)]
    unreachable = TableName(f"partial_{t}", "in another bucket")
    for table in reachable:
        create_external_table(databend, table, good_bucket, f"partseed_{t}")
    create_external_table(databend, unreachable, other_bucket, f"partseed_{t}")
    secret = scenario.secret("partial")
    _create_secret(aws, secret, key_secret_json(aws, k1))
    # the new version is another IAM user's key that may only reach the first bucket
    k2 = make_user(aws, f"partial-new-{t}", good_bucket)
    _put_version(aws, secret, key_secret_json(aws, k2))

    result = scenario.stack.cli("rotate-version", secret, "--timeout", "180")

    # the pre-flight lists every bucket with the new connection before the first ALTER
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"cannot list bucket {other_bucket}" in result.stderr
    assert "no object was touched" in result.stderr
    status = json.loads(scenario.stack.cli("status", run_id_of(result), "--json").stdout)
    assert status["status"] == "failed" and status["tables"] == []
    for table in [*reachable, unreachable]:
        assert storage_tail(databend, table) == tail(k1["AccessKeyId"]), table
        assert len(databend.query(f"SELECT * FROM {table.sql}")) == 3, "still readable on K1"
    assert quote_identifier(unreachable.table) and quote_string(unreachable.table)


def test_a_single_table_on_a_key_that_cannot_reach_it_fails_untouched_without_a_probe(
    scenario: Scenario, databend: DatabendClient, aws: LocalAws
) -> None:
    """A plan of one table sends no pre-flight probe: the table's own ALTER checks the new key on
    its location first, and a key that cannot reach it changes nothing there either."""
    t = scenario.token
    table = TableName(f"single_{t}", "only")
    k1, secret = _seed_lake(scenario, databend, aws, "single", [table])
    elsewhere = f"single-elsewhere-{t}"
    aws.client("s3").create_bucket(Bucket=elsewhere)
    k2 = make_user(aws, f"single-new-{t}", elsewhere)  # may only reach another bucket
    _put_version(aws, secret, key_secret_json(aws, k2))
    stages_before = databend.query("SELECT name FROM system.stages")

    result = scenario.stack.cli("rotate-version", secret, "--timeout", "180")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "pre-flight" not in result.stdout + result.stderr
    status = json.loads(scenario.stack.cli("status", run_id_of(result), "--json").stdout)
    assert status["status"] == "failed"
    [outcome] = status["tables"]
    assert (outcome["table"], outcome["status"]) == ([table.database, table.table], "failed")
    assert "denied" in outcome["reason"].lower() or "403" in outcome["reason"], outcome["reason"]
    assert storage_tail(databend, table) == tail(k1["AccessKeyId"])
    assert len(databend.query(f"SELECT * FROM {table.sql}")) == 3, "still readable on K1"
    assert databend.query("SELECT name FROM system.stages") == stages_before, "no stage left"
    assert k2["SecretAccessKey"] not in result.stdout + result.stderr


def test_a_rotation_cut_short_by_a_crash_completes_when_run_again(
    scenario: Scenario, databend: DatabendClient, aws: LocalAws
) -> None:
    t = scenario.token
    tables = [TableName(f"crash_{t}", f"table {i}") for i in range(12)]
    k1, secret = _seed_lake(scenario, databend, aws, "crash", tables)
    k2 = new_key(aws, f"crash-{t}", avoid={k1["AccessKeyId"]})
    _put_version(aws, secret, key_secret_json(aws, k2))

    # Given a worker that dies (as kill -9 would) once its first table is done, others in flight:
    # the run cut into 2 batches of 6 (ROTATOR_PARALLEL=2), so the batch it dies in holds tables
    # it has begun and not finished, and a table switched whose outcome it never wrote
    scenario.worker.terminate()
    scenario.worker.wait(timeout=30)
    crashing = scenario.stack.start_worker(
        "worker-crashing",
        "--concurrency",
        "4",
        faults="rotation-after-table",
        ROTATOR_PARALLEL="2",
    )
    first = scenario.stack.cli("rotate-version", secret, "--no-wait")
    assert first.returncode == 0, first.stdout + first.stderr
    assert crashing.wait(timeout=60) == 86
    cut_short = json.loads(scenario.stack.cli("status", run_id_of(first), "--json").stdout)
    assert cut_short["status"] == "switching" and cut_short["counts"] == {"pending": 12}
    begun = [row for row in cut_short["tables"] if row["attempts"] >= 1]
    assert len(begun) >= 6, "a whole batch of 6 was begun (written ahead) before the crash"
    on_k2 = {t for t in tables if storage_tail(databend, t) == tail(k2["AccessKeyId"])}
    assert on_k2, "the table the worker died after is on K2, its outcome never written"
    crashed_at = time.time()
    changed_at_crash = last_changed(databend, f"crash_{t}")

    # When a worker is back and the same version is asked for again
    _restart_module_worker(scenario, "worker-after-crash")
    started = time.monotonic()
    again = scenario.stack.cli("rotate-version", secret, "--timeout", "120")

    # Then it finishes promptly: every table on K2 and read back, none left behind
    assert again.returncode == 0, again.stdout + again.stderr
    assert time.monotonic() - started < 60
    assert run_id_of(again) == run_id_of(first) and "continuing" in again.stdout
    for table in tables:
        assert storage_tail(databend, table) == tail(k2["AccessKeyId"]), table
        assert len(_rows(databend, table)) == 3
    finished = json.loads(scenario.stack.cli("status", run_id_of(again), "--json").stdout)
    assert finished["status"] == "succeeded"
    assert set(finished["counts"]) == {"validated"}, "the dead worker's switches are this run's"
    assert sum(finished["counts"].values()) == 12
    # and none was switched twice: what the dead worker had switched was looked at and left as
    # it was (no ALTER since the crash), recorded as this run's switch; every other table was
    # switched once, after the crash
    changed = last_changed(databend, f"crash_{t}")
    outcomes = {row["table"][1]: row for row in finished["tables"]}
    for table in tables:
        outcome = outcomes[table.table]
        if table in on_k2:
            assert outcome["status"] == "validated", outcome
            assert changed[table.table] == changed_at_crash[table.table], "switched again"
        elif outcome["status"] == "validated":
            assert crashed_at <= changed[table.table] <= outcome["switched_at"] + 0.01, outcome
        assert outcome["attempts"] in (1, 2), outcome
    assert all("earlier attempt" in outcomes[x.table]["reason"] for x in on_k2)

    # and the audit trail shows every switch once: the dead worker's too (its row, from its spool
    # or written again by the batch that found the table switched, under the same event id)
    deadline = time.monotonic() + 60
    while len(rows := _switched(scenario, run_id_of(again))) < 12 and time.monotonic() < deadline:
        time.sleep(1)
    assert sorted(rows) == sorted(str(x) for x in tables), rows


def test_a_run_sent_out_again_while_its_batches_run_switches_each_table_once(
    scenario: Scenario, databend: DatabendClient, aws: LocalAws
) -> None:
    """Two workers; a run of 100 tables in 2 batches. While they run, the version is asked for
    again and the run resumed twice, each sending its pending objects out again: the batches
    of an earlier sending stop at their next table, and every table is switched once (one audit
    row each), not by two copies of a batch side by side."""
    t = scenario.token
    tables = [TableName(f"resend_{t}", f"t{i:03d}") for i in range(100)]
    k1, secret = _seed_lake(scenario, databend, aws, "resend", tables)
    k2 = new_key(aws, f"resend-{t}", avoid={k1["AccessKeyId"]})
    _put_version(aws, secret, key_secret_json(aws, k2))
    scenario.worker.terminate()
    scenario.worker.wait(timeout=30)
    workers = [
        scenario.stack.start_worker(
            f"worker-resend-{i}", "--concurrency", "4", ROTATOR_PARALLEL="2"
        )
        for i in range(2)
    ]
    try:
        first = scenario.stack.cli("rotate-version", secret, "--no-wait")
        assert first.returncode == 0, first.stdout + first.stderr
        run_id = run_id_of(first)
        again = [
            subprocess.Popen(
                [sys.executable, "-m", "worker.cli", *args],
                env=scenario.stack.env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for args in (
                ("resume", run_id, "--no-wait"),
                ("rotate-version", secret, "--no-wait"),
                ("resume", run_id, "--no-wait"),
            )
        ]
        for process in again:
            process.wait(timeout=120)
        done = scenario.stack.cli("status", run_id, "--json")
        deadline = time.monotonic() + 120
        while json.loads(done.stdout)["status"] == "switching" and time.monotonic() < deadline:
            time.sleep(1)
            done = scenario.stack.cli("status", run_id, "--json")
        status = json.loads(done.stdout)
        assert status["status"] == "succeeded", status["status"]
        resent = RedisRunStore.from_url(scenario.stack.env["REDIS_URL"]).get(run_id).dispatch
        assert resent >= 2, "sent out again while objects were pending"

        deadline = time.monotonic() + 60
        while (
            len(rows := _switched(scenario, run_id)) < len(tables) and time.monotonic() < deadline
        ):
            time.sleep(1)
        time.sleep(3)  # (a second row would be shipped by now too)
        rows = _switched(scenario, run_id)
        assert sorted(rows) == sorted(str(x) for x in tables), [
            r for r in set(rows) if rows.count(r) > 1
        ]
        assert all(storage_tail(databend, x) == tail(k2["AccessKeyId"]) for x in tables)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)
        _restart_module_worker(scenario, "worker-after-resend")


def test_status_needs_no_bindings_file(scenario: Scenario, redis_url: str) -> None:
    """Looking at a run is not configuration: `rotator status` works without ROTATOR_BINDINGS,
    while a command that needs bindings names the variable."""
    from worker.adapters.run_store import RedisRunStore
    from worker.domain.ports import RunRecord

    run_id = f"nobindings{scenario.token}"
    RedisRunStore.from_url(redis_url).create(
        RunRecord(run_id=run_id, kind="rotation", secret="arn:x", version_id="v")
    )
    env = {k: v for k, v in scenario.stack.env.items() if k != "ROTATOR_BINDINGS"}
    status = subprocess.run(
        [sys.executable, "-m", "worker.cli", "status", run_id, "--json"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["run_id"] == run_id
    rotate = subprocess.run(
        [sys.executable, "-m", "worker.cli", "rotate-version", "databend/anything"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rotate.returncode == 2 and "ROTATOR_BINDINGS" in rotate.stderr, rotate.stderr
