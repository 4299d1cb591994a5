"""The audit trail's adapter on real parts: spool on disk, rows shipped to databend-local once,
orphaned spools adopted, and nothing lost or blocking while Databend is unreachable."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.adapters.audit_store import AuditTable, Spool, pending_rows, spool_dir
from worker.adapters.audit_trail import Recorder
from worker.adapters.databend_client import DatabendClient
from worker.adapters.run_store import RedisRunStore
from worker.domain.audit import AuditAction, AuditEvent
from worker.local.embedded import DatabendLocalProcess, free_port

_OPEN: list[Recorder] = []


@pytest.fixture(autouse=True)
def _close_recorders() -> Iterator[None]:
    """A recorder's flusher thread would go on retrying after its test (and its Databend) ended,
    logging into a closed capture: each test's recorders are closed with it (nothing drained)."""
    yield
    while _OPEN:
        _OPEN.pop().close(drain_timeout=0)


def recorder(tmp_path: Path, dsn: str, database: str, redis_url: str) -> Recorder:
    rec = Recorder(
        base=tmp_path / "spool",
        dsn=dsn,
        database=database,
        interval=0.2,
        runs=RedisRunStore.from_url(redis_url),
    )
    _OPEN.append(rec)
    return rec


def test_rows_reach_the_table_once_with_the_runs_facts(
    tmp_path: Path, databend_local: DatabendLocalProcess, redis_url: str, unique: str
) -> None:
    from worker.domain.ports import RunRecord

    runs = RedisRunStore.from_url(redis_url)
    runs.create(RunRecord(f"run-{unique}", "key-rotation", "arn:secret", "v", binding="lake"))
    database = f"audit_{unique}"
    rec = recorder(tmp_path, databend_local.dsn, database, redis_url)
    rec.record(
        AuditEvent(
            AuditAction.KEY_DEACTIVATED,
            "iam user u key ******ABC",
            before="Active",
            after="Inactive",
            run_id=f"run-{unique}",
        )
    )
    rec.record(AuditEvent(AuditAction.CONNECTION_CREATED, "c1", after="******XYZ"))
    rec.flush()
    rec.flush()  # nothing new: nothing twice
    table = AuditTable(DatabendClient(databend_local.dsn), database)
    events = table.events()
    assert [e["action"] for e in events] == ["key_deactivated", "connection_created"]
    first = events[0]
    assert first["binding"] == "lake" and first["secret"] == "arn:secret"
    assert first["run_id"] == f"run-{unique}" and first["actor"]
    assert first["at"].endswith("Z") and first["before"] == "Active"
    assert table.events(binding="lake")[0]["event_id"] == first["event_id"]
    assert table.events(since=time.time() + 60) == []
    newest = table.events(limit=1)  # a limit keeps the newest rows, shown oldest first
    assert [e["action"] for e in newest] == ["connection_created"]


def test_a_rows_secret_is_the_secrets_name(
    tmp_path: Path, databend_local: DatabendLocalProcess, redis_url: str, unique: str
) -> None:
    from worker.domain.ports import RunRecord

    arn = f"arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/lake-{unique}-AbC123"
    runs = RedisRunStore.from_url(redis_url)
    runs.create(RunRecord(f"run-{unique}", "rotation", arn, "v", binding="lake"))
    database = f"audit_{unique}"
    rec = recorder(tmp_path, databend_local.dsn, database, redis_url)
    rec.record(AuditEvent(AuditAction.OBJECT_SWITCHED, "db.t", run_id=f"run-{unique}"))
    rec.record(AuditEvent(AuditAction.AWSCURRENT_MOVED, "v", secret=arn))
    rec.flush()
    events = AuditTable(DatabendClient(databend_local.dsn), database).events()
    assert [e["secret"] for e in events] == [f"databend/lake-{unique}"] * 2


def test_a_spool_left_by_a_dead_process_is_shipped_by_the_next(
    tmp_path: Path, databend_local: DatabendLocalProcess, redis_url: str, unique: str
) -> None:
    database = f"audit_{unique}"
    directory = spool_dir(tmp_path / "spool", databend_local.dsn, database)
    dead = Spool(directory)
    row = {
        "event_id": f"e-{unique}",
        "at": time.time(),
        "run_id": None,
        "binding": "b",
        "secret": None,
        "action": "key_deleted",
        "object": "iam user u key ******QQQ",
        "before": None,
        "after": "deleted",
        "actor": "worker",
    }
    dead.append(row)
    dead._lock_file.close()  # the process died: its lock is gone, its rows are not
    rec = recorder(tmp_path, databend_local.dsn, database, redis_url)
    rec.flush()
    events = AuditTable(DatabendClient(databend_local.dsn), database).events()
    assert [e["event_id"] for e in events] == [f"e-{unique}"]
    assert not dead.path.exists(), "an adopted spool is removed once shipped"


def test_databend_down_neither_blocks_nor_loses_a_row(tmp_path: Path, redis_url: str) -> None:
    nowhere = f"databend://root:@127.0.0.1:{free_port()}/default?sslmode=disable"
    rec = recorder(tmp_path, nowhere, "rotator", redis_url)
    started = time.perf_counter()
    rec.record(AuditEvent(AuditAction.AWSCURRENT_MOVED, "arn:s", before="version 1", after="2"))
    assert time.perf_counter() - started < 0.5, "recording never waits for Databend"
    time.sleep(1.0)  # the flusher tried and failed: the row waits in the spool
    directory = spool_dir(tmp_path / "spool", nowhere, "rotator")
    assert pending_rows(directory) == 1
    line = next(directory.glob("*.jsonl")).read_text().strip()
    assert json.loads(line)["action"] == "awscurrent_moved"


def test_a_switch_row_takes_before_from_its_batch_and_reads_the_plan_only_outside_one() -> None:
    """Inside a batch's object scope the switch row's ``before`` is the plan's view handed in
    (no Redis read per object); outside one (an abort, a rollback) the plan is read back."""
    from types import SimpleNamespace

    import structlog

    from worker.adapters.audited import AuditedAdmin
    from worker.domain import masking
    from worker.domain.model import TableOutcome, TableStatus
    from worker.domain.sql import TableName
    from worker.observe.audit import switching

    table = TableName("db", "t")
    reads: list[TableName] = []

    class Runs:
        def get(self, _run_id: str) -> SimpleNamespace:
            return SimpleNamespace(connection="c_new")

        def outcome(self, _run_id: str, name: TableName) -> TableOutcome:
            reads.append(name)
            return TableOutcome(name, TableStatus.PENDING, previous="******OLD")

    admin = AuditedAdmin(client=None, runs=Runs())
    with structlog.contextvars.bound_contextvars(run_id="r1"):
        with switching("db.t", "******XYZ"):
            facts = admin._switch_facts(table, "c_new")
            assert facts == (AuditAction.OBJECT_SWITCHED, masking.display("******XYZ"))
            # a scope of another object says nothing about this one
            assert admin._switch_facts(TableName("db", "u"), "c_old")[1] == masking.display(
                "******OLD"
            )
        assert reads == [TableName("db", "u")]
        reverted = (AuditAction.OBJECT_REVERTED, masking.display("******OLD"))
        assert admin._switch_facts(table, "c_old") == reverted
        assert reads == [TableName("db", "u"), table]


def test_threads_recording_at_once_share_fsyncs_and_each_row_is_on_disk_when_append_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: every ``append`` returns only after an fsync that began once its row was in
    the file, and eight threads appending together need far fewer fsyncs than rows."""
    import os
    import threading

    from worker.adapters import audit_store

    spool = Spool(tmp_path / "spool")
    real_fsync = os.fsync
    fsyncs: list[tuple[set[str], float]] = []  # (row ids in the file when it began, when it ended)

    def slow_fsync(fd: int) -> None:
        if os.fstat(fd).st_ino != spool.path.stat().st_ino:
            # (os.fsync is patched process-wide: a flusher thread an earlier test left running
            # in this process must not count as this spool's fsync)
            real_fsync(fd)
            return
        present = {json.loads(line)["id"] for line in spool.path.read_text().splitlines()}
        time.sleep(0.005)  # a slow disk: appends pile up behind it
        real_fsync(fd)
        fsyncs.append((present, time.monotonic()))

    monkeypatch.setattr(audit_store.os, "fsync", slow_fsync)
    returned: dict[str, float] = {}

    def append_rows(thread: int) -> None:
        for i in range(20):
            row_id = f"{thread}-{i}"
            spool.append({"id": row_id})
            returned[row_id] = time.monotonic()

    threads = [threading.Thread(target=append_rows, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = [json.loads(line)["id"] for line in spool.path.read_text().splitlines()]
    assert sorted(lines) == sorted(returned) and len(lines) == 160
    for row_id, at in returned.items():
        assert any(row_id in present and ended <= at for present, ended in fsyncs), row_id
    assert len(fsyncs) < 160 / 2, len(fsyncs)


def test_no_row_is_lost_when_the_spool_rotates_under_appending_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flusher ships and rotates the spool (tiny files here) while eight threads append:
    every row ends up shipped or in the live file, none in a file removed unshipped."""
    import threading

    from worker.adapters import audit_store
    from worker.adapters.audit_store import ship_file

    monkeypatch.setattr(audit_store, "ROTATE_BYTES", 200)
    spool = Spool(tmp_path / "spool")
    shipped: list[str] = []

    class Table:
        def insert(self, rows: list[dict[str, str]], *, check: bool = True) -> None:
            shipped.extend(row["id"] for row in rows)

    done = threading.Event()

    files: set[Path] = set()

    def flusher() -> None:
        while not done.is_set():
            files.add(spool.path)
            ship_file(spool.path, Table(), own=True)  # type: ignore[arg-type]
            spool.rotate_if_large()

    def append_rows(thread: int) -> None:
        for i in range(100):
            spool.append({"id": f"{thread}-{i}"})
            time.sleep(0.002)  # rows keep coming while the flusher ships and rotates

    shipping = threading.Thread(target=flusher)
    shipping.start()
    threads = [threading.Thread(target=append_rows, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    shipping.join()
    ship_file(spool.path, Table(), own=True)  # type: ignore[arg-type]
    assert len(files) > 3  # it did rotate, several times
    assert len(list(spool.directory.glob("*.jsonl"))) <= 1  # rotated away: removed
    assert sorted(shipped) == sorted(f"{t}-{i}" for t in range(8) for i in range(100))


def test_a_shipment_takes_only_the_rows_spooled_when_it_began(tmp_path: Path) -> None:
    """Rows recorded while an INSERT is under way wait for the next shipment: a busy run sends
    one INSERT per flush interval, not one of a few rows per INSERT's time."""
    from worker.adapters.audit_store import ship_file

    spool = Spool(tmp_path / "spool")
    for i in range(5):
        spool.append({"id": f"first-{i}"})
    inserts: list[list[str]] = []

    class Table:
        def insert(self, rows: list[dict[str, str]], *, check: bool = True) -> None:
            inserts.append([row["id"] for row in rows])
            spool.append({"id": f"during-{len(inserts)}"})  # a switch ends meanwhile

    assert ship_file(spool.path, Table(), own=True) == 5  # type: ignore[arg-type]
    assert inserts == [[f"first-{i}" for i in range(5)]]
    assert ship_file(spool.path, Table(), own=True) == 1  # type: ignore[arg-type]
    assert inserts[1] == ["during-1"]
    assert pending_rows(spool.directory) == 1  # the row appended by the second INSERT


def test_reading_an_audit_trail_never_written_creates_nothing(
    databend_local: DatabendLocalProcess, unique: str
) -> None:
    """`rotator audit` is a read: a mistyped ROTATOR_AUDIT_DATABASE shows no events and leaves
    no new database behind."""
    client = DatabendClient(databend_local.dsn)
    database = f"never written {unique}"
    assert AuditTable(client, database).events() == []
    assert not client.query(f"SELECT 1 FROM system.databases WHERE name = '{database}'")


def test_an_abort_marked_by_a_conditional_write_is_recorded_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An abort marks the key rotation with update_if (only while it stands where it was read):
    that is the run_aborted row of the key rotation itself, not only of its table run."""
    import uuid

    import redis

    from worker.adapters.audited import AuditedRunStore
    from worker.domain.ports import RunRecord
    from worker.observe import audit as audit_module

    events: list[AuditEvent] = []

    class Trail:
        def record(self, event: AuditEvent) -> None:
            events.append(event)

    monkeypatch.setattr(audit_module, "_recorder", Trail())
    store = AuditedRunStore(redis.Redis.from_url(redis_url))
    run_id = uuid.uuid4().hex
    store.create(RunRecord(run_id, "key-rotation", "arn", "v", status="switching"))
    seen = {"status": "switching", "phase": ""}
    assert store.update_if(run_id, seen, status="aborted", error="aborted")
    assert not store.update_if(run_id, seen, status="aborted", error="aborted")
    assert [(e.action, e.object, e.before) for e in events] == [
        (AuditAction.RUN_ABORTED, run_id, "switching")
    ]


def test_an_operators_command_is_the_actor_of_its_changes_whoever_began_the_run(
    tmp_path: Path, databend_local: DatabendLocalProcess, redis_url: str, unique: str
) -> None:
    """A worker's change names who asked for its run (the schedule); `rotator abort` of that
    run, typed by alice, names alice."""
    from worker.domain.ports import RunRecord
    from worker.observe import actor

    runs = RedisRunStore.from_url(redis_url)
    run_id = f"run-{unique}"
    runs.create(RunRecord(run_id, "key-rotation", "arn", "v", data={"actor": "schedule"}))
    rec = recorder(tmp_path, databend_local.dsn, f"audit_{unique}", redis_url)
    event = AuditEvent(AuditAction.RUN_ABORTED, run_id, run_id=run_id)
    process_default = actor.current()  # (importing the CLI makes this process the CLI user's)
    try:
        actor.set_default("worker")
        assert rec._complete(event)["actor"] == "schedule"  # a worker's change
        actor.set_default("cli:alice")
        assert rec._complete(event)["actor"] == "cli:alice"
    finally:
        actor.set_default(process_default)


def test_a_connection_dropped_by_another_process_than_its_maker_says_what_it_held(
    databend_local: DatabendLocalProcess, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    """A key is deleted days after its connection was made, by another worker or the CLI: the
    dropping process looks at the connection first, so the row's ``before`` is not empty."""
    from worker.adapters.audited import AuditedAdmin
    from worker.domain.model import AccessKeyCredentials
    from worker.observe import audit as audit_module

    events: list[AuditEvent] = []

    class Trail:
        def record(self, event: AuditEvent) -> None:
            events.append(event)

    monkeypatch.setattr(audit_module, "_recorder", Trail())
    name = f"gone_{unique}"
    maker = AuditedAdmin(DatabendClient(databend_local.dsn), runs=None)
    maker.create_connection(name, AccessKeyCredentials("AKIAEXAMPLEEXAMPLXYZ", "s" * 40))
    dropper = AuditedAdmin(DatabendClient(databend_local.dsn), runs=None)
    dropper.drop_connection(name)
    made, dropped = events
    assert dropped.action is AuditAction.CONNECTION_DROPPED and dropped.object == name
    assert dropped.before == made.after == "ak ******XYZ"


def test_a_switch_recorded_late_shares_the_event_id_of_its_row_and_the_trail_shows_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker dies right after an ALTER: its row may or may not have reached its spool. The
    redelivered batch finds the object switched by that attempt and writes the row again, under
    the id the first row had, so the trail lists that switch once either way."""
    from types import SimpleNamespace

    import structlog

    from worker.adapters.audit_store import AuditTable
    from worker.adapters.audited import AuditedAdmin
    from worker.domain.sql import TableName
    from worker.observe import audit as audit_module
    from worker.observe.audit import earlier_switch, switching

    events: list[AuditEvent] = []

    class Trail:
        def record(self, event: AuditEvent) -> None:
            events.append(event)

    class Client:
        def execute(self, sql: str) -> None: ...

    monkeypatch.setattr(audit_module, "_recorder", Trail())
    runs = SimpleNamespace(get=lambda _run_id: SimpleNamespace(connection="c_new"))
    admin = AuditedAdmin(client=Client(), runs=runs)
    monkeypatch.setattr(admin, "_connection_shown", lambda _c: "******NEW")
    with structlog.contextvars.bound_contextvars(run_id="r1"):
        with switching("db.t", "ak:******OLD", 1):  # the first attempt: its switch's row
            admin._audit_switch(TableName("db", "t"), "c_new")
        with switching("db.u", "ak:******OLD", 1):
            admin._audit_switch(TableName("db", "u"), "c_new")
    earlier_switch("r1", "db.t", "ak:******OLD", "c_new", attempt=2)  # the second attempt's
    first, other, again = events
    assert again.event_id == first.event_id != other.event_id
    assert (again.action, again.object, again.before) == (first.action, "db.t", first.before)

    # stored twice (the spool of the dead worker and the late row), listed once
    columns = ("event_id", "at", "run_id", "binding", "secret", "action", "object")
    rows = [
        (e.event_id, "2026-11-28 00:00:00", "r1", "b", "s", str(e.action), e.object)
        for e in (first, other, again)
    ]
    table = AuditTable.__new__(AuditTable)
    table.database, table._ready = "rotator", True
    table.client = SimpleNamespace(query=lambda _sql: list(reversed(rows)))
    monkeypatch.setattr("worker.adapters.audit_store.COLUMNS", columns)
    listed = table.events()
    assert [(e["object"], e["event_id"]) for e in listed] == [
        ("db.t", first.event_id),
        ("db.u", other.event_id),
    ]


def test_a_runs_switch_written_twice_under_two_attempts_ids_is_listed_once() -> None:
    """A batch that finds an object switched by an earlier attempt writes the switch's row
    again under the id of its own previous attempt; when several sendings each wrote an attempt
    ahead, that id is not the first row's. The trail lists the switch once all the same, while a
    switch after a revert (and another run's switch) is listed again."""
    from worker.domain.audit import listed_once

    def row(event_id: str, run_id: str, obj: str, action: str, after: str) -> dict[str, str]:
        return {"event_id": event_id, "run_id": run_id, "object": obj, "action": action,
                "after": after}  # fmt: skip

    rows = [
        row("a", "r1", "db.t", "object_switched", "c_new (******NEW)"),
        row("b", "r1", "db.t", "object_switched", "c_new"),  # written again, attempt 2's id
        row("c", "r1", "db.u", "object_switched", "c_new (******NEW)"),
        row("c", "r1", "db.u", "object_switched", "c_new (******NEW)"),  # the same row twice
        row("d", "r1", "db.v", "object_switched", "c_new (******NEW)"),
        row("e", "r1", "db.v", "object_reverted", "c_old (******OLD)"),
        row("f", "r1", "db.v", "object_switched", "c_new (******NEW)"),  # after the revert
        row("g", "r2", "db.t", "object_switched", "c_new (******NEW)"),  # another run's
    ]
    assert [r["event_id"] for r in listed_once(rows)] == ["a", "c", "d", "e", "f", "g"]
