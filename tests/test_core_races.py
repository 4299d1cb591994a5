"""Issue 10, points 2-5: the races and the blind evidence, driven step by step through the core.

Each test sets up one interleaving by hand and asserts what a user would see: which key each table
really holds (and so whether it can still be read) and which IAM keys exist and are active. The
world is tests/chaos_world.py's, without random faults: IAM keys are real, and an ALTER needs both
the table's old key and the connection's new key to work, as on Databend. The core is reached only
through the adapter in tests/chaos.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from tests.chaos import (
    OPS,
    Refused,
    Shape,
    abort,
    advance,
    batches,
    build_world,
    drive_key_rotation,
    intake,
    migrate_batch,
    prepare,
    release_wave,
    resume,
    retire_due,
    rollback,
    seeded_uuids,
    start_key_rotation,
    start_migration,
    switch,
    switch_batch,
)
from tests.chaos_world import ALIVE_TTL, LOCK_TTL, WorkerCrash, World
from worker.domain.errors import LockBusy, MigrationRefused, RotatorError
from worker.domain.ports import Admission
from worker.domain.sql import DatabaseName, ObjectName, StageName, TableName

T0, T1, T2 = (TableName("sales", f"t{i}") for i in range(3))
BLIND = TableName("misc", "b0")


@pytest.fixture(autouse=True)
def _replayable_ids() -> Any:
    with seeded_uuids(10):
        yield


def keys_of_tables(world: World) -> dict[str, str]:
    """Table -> the label of the key it really holds (K0, K1, …)."""
    return {str(t): world.env.label(k) for t, k in sorted(world.admin.true_keys.items())}


def iam_keys(world: World) -> dict[str, str]:
    """Key label -> 'active' / 'inactive', for every key IAM still has."""
    return {
        world.env.label(str(k[0])): "active" if k[1] else "inactive"
        for keys in world.iam.keys.values()
        for k in keys
    }


def key_named(world: World, label: str) -> str:
    return next(ident for ident, name in world.env.labels.items() if name == label)


def outside_rotation(world: World, user: str) -> str:
    """Someone else rotates: a new key for ``user``, a new version made AWSCURRENT."""
    return world.new_version(world.iam.add_key(user))


def once(op: str, action: Callable[[], None]) -> Callable[[str], None]:
    """A hook that runs ``action`` the first time the world is about to perform ``op``."""
    fired = False

    def hook(name: str) -> None:
        nonlocal fired
        if not fired and name == op:
            fired = True
            action()

    return hook


def crash_when(world: World, wanted: Callable[[str, Any], bool]) -> None:
    """The worker dies right after the first change for which ``wanted(operation, details)``."""

    def probe(op: str, detail: Any) -> None:
        if wanted(op, detail):
            world.env.faults.probe = None
            raise WorkerCrash(op)

    world.env.faults.probe = probe


def die_when(world: World, wanted: Callable[[str, Any], bool]) -> None:
    """As crash_when, and the dead worker does nothing more: every port call its ``finally``
    blocks make raises WorkerCrash again, until ``world.env.faults.revive``."""

    def probe(op: str, detail: Any) -> None:
        if wanted(op, detail):
            world.env.faults.probe = None
            world.env.faults.die(op)

    world.env.faults.probe = probe


def deliver(fn: Callable[[], Any]) -> None:
    """A task delivered late: whatever the core answers (even a refusal) is fine here; what it
    did to the tables and keys is what the test looks at."""
    with contextlib.suppress(RotatorError):
        fn()


# --- point 2 ------------------------------------------------------------------------------------


def _key_rotation_switching(world: World) -> tuple[str, str, list[TableName]]:
    """A key rotation whose table run is planned, no table switched yet."""
    run_id = start_key_rotation(world, deactivate_after=0, delete_after=3600)
    assert isinstance(run_id, str)
    while (step := advance(world, run_id))[0] != "start_tables":
        assert step[0] == "continue", step
    table_run = step[1][0][1]
    return run_id, table_run, prepare(world, table_run)


def test_abort_while_a_switch_is_in_flight_leaves_no_table_on_a_deleted_key() -> None:
    # Given a key rotation whose table run switched sales.t0 to the new key K1,
    world = build_world(Shape(sales=3))
    run_id, table_run, tables = _key_rotation_switching(world)
    assert tables == [T0, T1, T2]
    switch(world, table_run, T0)
    # and whose switch task for sales.t1 is in flight: its ALTER lands while abort is deleting K1
    world.env.faults.on_call = once(
        "DeleteAccessKey", lambda: deliver(lambda: switch(world, table_run, T1))
    )

    # When the operator aborts the rotation,
    deliver(lambda: abort(world, run_id))
    # and the queued switch task of sales.t2 is delivered afterwards
    deliver(lambda: switch(world, table_run, T2))

    # Then no table is on a deleted key: every table can still be read
    assert world.stranded() == []
    assert [str(t) for t, key in world.admin.true_keys.items() if not world.admin.works(key)] == []


def test_switches_delivered_after_an_abort_cannot_land_on_the_deleted_key() -> None:
    """The sequential form of point 2 is safe on Databend: the ALTER validates the new key, which
    abort has deleted, so the late tasks fail and the tables stay on the old key. What point 2
    needs is a switch in flight (above)."""
    # Given a key rotation whose table run switched sales.t0 to the new key K1
    world = build_world(Shape(sales=3))
    run_id, table_run, _tables = _key_rotation_switching(world)
    switch(world, table_run, T0)

    # When the operator aborts it, and then the queued switches of t1 and t2 are delivered
    abort(world, run_id)
    for table in (T1, T2):
        deliver(partial(switch, world, table_run, table))

    # Then every table is back on K0, which is still active, and K1 is gone
    assert keys_of_tables(world) == {"sales.t0": "K0", "sales.t1": "K0", "sales.t2": "K0"}
    assert iam_keys(world) == {"K0": "active"}


@pytest.mark.parametrize(
    "landing",
    [
        "runs.set_plan",  # the plan is made, its status not yet written
        "runs.update",  # the first write after the check that the run is active: its token
    ],
    ids=["after-the-plan", "before-planning"],
)
def test_an_abort_while_the_table_run_is_planned_is_not_undone_by_the_plan(landing: str) -> None:
    """Chaos seed 816101: `rotator abort` landed while the table run was being planned; the
    plan then wrote its status (switching) over ``aborted``, and the batch switched a database
    default to the new key abort had deleted (its ALTER never touches storage)."""
    # Given a key rotation whose table run (3 tables and a database default) is being planned
    world = build_world(Shape(sales=3, databases=1))
    run_id = start_key_rotation(world, deactivate_after=0, delete_after=3600)
    assert isinstance(run_id, str)
    while (step := advance(world, run_id))[0] != "start_tables":
        assert step[0] == "continue", step
    table_run = step[1][0][1]
    # when the operator's abort lands in the middle of it
    world.env.faults.on_call = once(landing, lambda: deliver(lambda: abort(world, run_id)))

    planned = prepare(world, table_run)

    # Then the plan hands out nothing to switch, the run stays aborted, and a late batch of
    # every object changes nothing: no object is on a deleted key, every one still on K0
    assert planned == []
    assert world.runs.peek(table_run).status == "aborted"
    objects = [T0, T1, T2, DatabaseName("lakehouse0")]
    deliver(lambda: switch_batch(world, table_run, objects))
    assert world.stranded() == []
    assert set(world.env.label(k) for k in world.admin.object_keys().values()) == {"K0"}


def test_an_abort_that_read_the_run_before_its_table_run_started_ends_that_table_run_too() -> None:
    """Chaos seed 5,200,595 (mask current): `rotator abort` read the key rotation before the
    step that starts its table run had recorded it, and another worker ran that step to its end
    and planned the table run meanwhile. Acting on what it had read, the abort ended only the
    parent, switched nothing back and deleted K1; the table run's late batch then moved the
    stage onto the deleted K1. The abort now reads the run again once the changes in flight have
    ended, and ends (and waits for) a table run that appeared."""
    # Given a key rotation whose new key K1 is stored as AWSPENDING, its table run not started
    world = build_world(Shape(sales=2, stages=1))
    run_id = start_key_rotation(world, deactivate_after=900, delete_after=3600)
    assert isinstance(run_id, str)
    while world.runs.peek(run_id).phase != "pending_stored":
        assert advance(world, run_id)[0] == "continue"
    planned: list[ObjectName] = []

    def another_worker(op: str) -> None:
        if op == "runs.update":  # the abort has read the run, and not yet marked it aborted
            world.env.faults.on_call = None
            step, followups = advance(world, run_id)
            assert step == "start_tables"
            planned.extend(prepare(world, followups[0][1]))

    # When the operator's abort and that step overlap so
    world.env.faults.on_call = another_worker
    deliver(lambda: abort(world, run_id))
    table_run = str(world.runs.peek(run_id).data["table_run"])
    assert planned == [T0, T1, StageName("landing0")]
    # and the table run's batch is delivered afterwards
    deliver(lambda: switch_batch(world, table_run, planned))
    # Then the table run was ended with its parent, nothing moved onto K1, and K1 is gone
    assert world.runs.peek(table_run).status == "aborted"
    assert world.stranded() == []
    assert set(world.env.label(k) for k in world.admin.object_keys().values()) == {"K0"}
    assert iam_keys(world) == {"K0": "active"}


def test_an_abort_before_a_key_rotations_first_step_is_not_undone_by_that_step() -> None:
    """The first step moves a queued key rotation to switching: an abort that lands after its
    check that the run is active, before that write, must still stop it."""
    # Given a key rotation recorded, its first step under way
    world = build_world(Shape(sales=2))
    run_id = start_key_rotation(world, deactivate_after=0, delete_after=3600)
    assert isinstance(run_id, str)
    world.env.faults.on_call = once("runs.update", lambda: deliver(lambda: abort(world, run_id)))

    # When the abort lands during it, and the step is delivered again later
    first = advance(world, run_id)
    again = advance(world, run_id)

    # Then the run stays aborted and makes no key: the tables stay on K0, the only key
    assert (first[0], again[0]) == ("stop", "stop")
    assert world.runs.peek(run_id).status == "aborted"
    assert iam_keys(world) == {"K0": "active"}
    assert keys_of_tables(world) == {"sales.t0": "K0", "sales.t1": "K0"}


def test_an_abort_while_a_key_rotation_is_being_resumed_is_not_undone_by_the_resume() -> None:
    """`rotator resume` read the failed run, then wrote `switching`: an abort landing in between
    (it deletes the new key) was overwritten, and the table run could go on onto that key."""
    # Given a key rotation whose table run is planned, the run marked failed
    world = build_world(Shape(sales=2))
    run_id, table_run, _tables = _key_rotation_switching(world)
    world.runs.update(run_id, status="failed", error="a step failed")
    world.env.faults.on_call = once("runs.update", lambda: deliver(lambda: abort(world, run_id)))

    # When the operator resumes it and an abort lands before the resume's write
    with pytest.raises(RotatorError, match="became aborted while it was being resumed"):
        resume(world, run_id)
    # and the table run's switch tasks are delivered afterwards
    for table in (T0, T1):
        deliver(lambda table=table: switch(world, table_run, table))

    # Then the run stays aborted, its key deleted, and no table moved onto it
    assert world.runs.peek(run_id).status == "aborted"
    assert keys_of_tables(world) == {"sales.t0": "K0", "sales.t1": "K0"}
    assert world.stranded() == []


def test_a_failed_key_rotation_is_resumed_when_nothing_lands_meanwhile() -> None:
    """The conditional write of resume expects the status it read, failed included."""
    world = build_world(Shape(sales=2))
    run_id, table_run, _tables = _key_rotation_switching(world)
    world.runs.update(run_id, status="failed", error="a step failed")

    assert resume(world, run_id) == [("start", table_run)]
    assert world.runs.peek(run_id).status == "switching"


# --- point 3 ------------------------------------------------------------------------------------


def _after_create_key(op: str, _detail: Any) -> bool:
    return op == "checkpoint after-create-key"


def _after_keys_before(op: str, detail: Any) -> bool:
    return op == "runs.update" and "keys_before" in (detail or {}).get("data", {})


@pytest.mark.parametrize(
    "cut_short",
    [_after_create_key, _after_keys_before],
    ids=["at-after-create-key", "right-after-keys_before-is-written"],
)
def test_resuming_a_stale_key_rotation_keeps_the_live_key(
    cut_short: Callable[[str, Any], bool],
) -> None:
    # Given a key rotation KR0 cut short (its worker died) after it recorded the keys before it
    world = build_world(Shape(sales=3))
    first = start_key_rotation(world, deactivate_after=0, delete_after=3600)
    assert isinstance(first, str)
    crash_when(world, cut_short)
    with pytest.raises(WorkerCrash):
        advance(world, first)
    # and, once its lock expired, a second rotation KR1 (Secrets Manager's schedule, which does
    # not look for unfinished ones) made a newer key current and moved every table to it
    world.clock.now += LOCK_TTL + 1
    second = start_key_rotation(world, deactivate_after=0, delete_after=3600, alone=False)
    assert isinstance(second, str), second
    assert drive_key_rotation(world, second) == "stop"
    live = world.env.label(world.key_of(str(world.version_with("AWSCURRENT"))))
    assert set(keys_of_tables(world).values()) == {live}

    # When KR0's task comes back and the operator resumes it
    deliver(lambda: drive_key_rotation(world, first))
    deliver(lambda: resume(world, first))
    deliver(lambda: drive_key_rotation(world, first))

    # Then the live key still exists and is active, and every table still reads
    assert iam_keys(world).get(live) == "active"
    assert world.stranded() == []
    assert set(keys_of_tables(world).values()) == {live}


# --- point 4 ------------------------------------------------------------------------------------


def test_late_switches_of_an_older_version_do_not_move_tables_back() -> None:
    # Given v1 (key K1) made AWSCURRENT, and its run planned with sales.t0 switched,
    world = build_world(Shape(sales=3))
    v1 = outside_rotation(world, "svc")
    _verdict, _reason, old_run = intake(world, v1, lambda _run: None)
    assert prepare(world, old_run) == [T0, T1, T2]
    switch(world, old_run, T0)
    # before its worker died with the switch tasks of t1 and t2 (back after the visibility timeout)

    # When its lock expires, v2 (key K2) is made AWSCURRENT and its run moves every table to K2,
    world.clock.now += LOCK_TTL + 1
    v2 = outside_rotation(world, "svc2")
    _verdict, _reason, new_run = intake(world, v2, lambda _run: None)
    for table in prepare(world, new_run):
        switch(world, new_run, table)
    assert set(keys_of_tables(world).values()) == {"K2"}
    # and then the old run's late switch tasks are delivered
    world.clock.now += 3600
    for table in (T1, T2):
        deliver(partial(switch, world, old_run, table))

    # Then no table moved back to v1's key
    assert keys_of_tables(world) == {"sales.t0": "K2", "sales.t1": "K2", "sales.t2": "K2"}


def test_a_batch_delivered_twice_at_once_keeps_both_copies_changes_in_flight() -> None:
    """Chaos seed 6,551,006: two workers ran one batch of a run at once (a redelivery while the
    first was still alive). The copy that ended first left its changes in flight, and with them
    the other copy's entry for the same object, so a newer run of the secret saw nothing in
    flight and went ahead while that other copy's ALTER, checked and admitted under the old run,
    was still to land. Each entrant now holds its own entry and leaves only that one."""
    # Given v1 (key K1) made AWSCURRENT and its run planned
    world = build_world(Shape(sales=3))
    v1 = outside_rotation(world, "svc")
    _verdict, _reason, old_run = intake(world, v1, lambda _run: None)
    planned = prepare(world, old_run)
    assert planned == [T0, T1, T2]
    newer: dict[str, Any] = {}

    def meanwhile() -> None:
        # another worker runs the same batch to its end (it closes the run) ...
        world.env.faults.revive("w-copy")
        switch_batch(world, old_run, planned)
        world.env.faults.revive("w0")
        newer["in_flight"] = world.fences.in_flight(old_run)
        # ... and v2 (key K2) is made AWSCURRENT; its run must wait for the first copy's ALTER
        v2 = outside_rotation(world, "svc2")
        _v, _r, newer["run"] = intake(world, v2, lambda _run: None)
        with pytest.raises(LockBusy, match="superseded run to end"):
            prepare(world, newer["run"])

    # When the first copy is admitted to switch sales.t1 and, before its ALTER, that happens
    world.env.faults.on_call = once("ALTER sales.t1", meanwhile)
    switch_batch(world, old_run, planned)

    # Then the first copy's change counted as in flight until it ended,
    assert newer["in_flight"] == ["sales.t1"]
    # and the newer run, planned once it has, moves every table to K2 for good
    for table in prepare(world, newer["run"]):
        switch(world, newer["run"], table)
    assert keys_of_tables(world) == {"sales.t0": "K2", "sales.t1": "K2", "sales.t2": "K2"}


def test_an_abort_that_read_the_run_before_another_worker_finished_it_changes_nothing() -> None:
    """Chaos seed 6,564,824 (mask current): `rotator abort` read a key rotation whose objects
    were switched and tested; before it marked the run aborted, another worker's step moved
    AWSCURRENT and retired the old key K0. Acting on what it had read, the abort marked the
    finished run aborted and switched a database default back onto K0, by then inactive. The
    mark is now conditional on the run standing where the abort read it."""
    # Given a key rotation that has switched and read back every object, AWSCURRENT not moved
    world = build_world(Shape(sales=2, databases=1))
    run_id, table_run, objects = _key_rotation_switching(world)
    for name in objects:
        switch(world, table_run, name)

    def finish() -> None:
        while advance(world, run_id)[0] == "continue":
            pass

    # When the operator's abort has read the run and another worker finishes it before the mark
    world.env.faults.on_call = once("runs.update", finish)
    with pytest.raises(RotatorError, match="already moved AWSCURRENT"):
        abort(world, run_id)

    # Then the run stays succeeded, and every object is on the new key K1, which is active
    assert world.runs.peek(run_id).status == "succeeded"
    assert set(world.env.label(k) for k in world.admin.object_keys().values()) == {"K1"}
    assert iam_keys(world) == {"K0": "inactive", "K1": "active"}
    assert world.stranded() == []


def test_an_abort_after_someone_else_moved_awscurrent_switches_back_to_awscurrent() -> None:
    """Chaos seed 6,834,768 (mask current): while a key rotation was switching, someone else
    rotated the secret (v2, key K2, made AWSCURRENT). The abort then switched the rotation's
    objects back onto the version it had started from (K0), which was now behind AWSCURRENT, its
    key the other party's to delete. It now switches them onto AWSCURRENT's credentials when that
    version is newer (an operator's move back to an older one is applied by that move's own run:
    chaos seeds 6,894,979, 6,900,223 and 6,923,250 caught the first form of this fix moving
    objects behind the version the newest run had started from)."""
    # Given a key rotation that switched sales.t0 to its new key K1
    world = build_world(Shape(sales=3))
    run_id, table_run, _objects = _key_rotation_switching(world)
    switch(world, table_run, T0)
    # and someone else's rotation that made v2 (K2, another IAM user) AWSCURRENT meanwhile
    outside_rotation(world, "svc2")

    # When the operator aborts the key rotation
    abort(world, run_id)

    # Then sales.t0 is on AWSCURRENT's K2 (the others were never moved), and K1 is gone
    assert keys_of_tables(world) == {"sales.t0": "K2", "sales.t1": "K0", "sales.t2": "K0"}
    assert iam_keys(world) == {"K0": "active", "K2": "active"}
    assert world.stranded() == []


def test_an_abort_after_an_operator_moved_awscurrent_back_returns_to_where_it_started() -> None:
    """The other side of the rule above: an operator who moves AWSCURRENT back to an older
    version during a key rotation is followed by that move's own run; the abort puts the
    rotation's objects back on the version it started from, never behind it."""
    # Given v1 (another IAM user's key) made AWSCURRENT, a key rotation started from it that
    # switched sales.t0 to its new key, and an operator who then moved AWSCURRENT back to v0
    world = build_world(Shape(sales=3))
    v1 = outside_rotation(world, "svc2")
    started_on = world.env.label(world.key_of(v1))
    run_id, table_run, _objects = _key_rotation_switching(world)
    switch(world, table_run, T0)
    world.writer.make_current(world.secrets.arn, "v0")

    # When the operator aborts the key rotation
    abort(world, run_id)

    # Then sales.t0 is back on v1's key, where the rotation found it
    assert keys_of_tables(world)["sales.t0"] == started_on
    assert world.stranded() == []


# --- point 5 ------------------------------------------------------------------------------------


def test_a_table_whose_row_does_not_parse_blocks_retiring_its_key() -> None:
    # Given sales.t0-t2 on K0, and misc.b0 on K0 too, whose storage_param shows no readable key
    world = build_world(Shape(sales=3, blind=1))
    assert world.admin.tables[BLIND].kind == "s3"
    k0 = key_named(world, "K0")

    # When a key rotation runs to its end and the old key's deactivation and deletion fall due
    run_id = start_key_rotation(world, deactivate_after=0, delete_after=0)
    if isinstance(run_id, str):
        deliver(lambda: drive_key_rotation(world, run_id))
        deliver(lambda: retire_due(world))

    # Then K0 is still there and active, and misc.b0 can still be read
    assert iam_keys(world).get("K0") == "active"
    assert world.admin.true_keys[BLIND] == k0
    assert world.admin.read_back(BLIND) > 0


@pytest.mark.parametrize(
    "shape",
    [Shape(sales=0), Shape(sales=0, blind=2)],
    ids=["no-table", "only-rows-that-do-not-parse"],
)
def test_a_key_rotation_that_plans_no_table_is_refused(shape: Shape) -> None:
    # Given the secret's key K0, on which Databend shows no table
    world = build_world(shape)

    # When a key rotation is planned and committed (without allowing an empty plan)
    result = start_key_rotation(world, deactivate_after=0, delete_after=0)

    # Then it is refused, and nothing changed
    assert isinstance(result, Refused)
    assert iam_keys(world) == {"K0": "active"}
    assert world.runs.runs == {}


# --- batches ------------------------------------------------------------------------------------


def test_a_batch_whose_worker_dies_between_two_objects_is_finished_by_its_redelivery() -> None:
    # Given v1 (key K1) made AWSCURRENT and its run planned: one batch of sales.t0-t2
    world = build_world(Shape(sales=3))
    v1 = outside_rotation(world, "svc")
    _verdict, _reason, run_id = intake(world, v1, lambda _run: None)
    assert prepare(world, run_id) == [T0, T1, T2]
    # When the batch's worker is killed right after the ALTER of sales.t1 (sales.t0, the batch's
    # first, was written at once; sales.t1's change in flight)
    die_when(world, lambda op, _detail: op == f"ALTER {T1}")
    with pytest.raises(WorkerCrash):
        switch_batch(world, run_id, [T0, T1, T2])
    world.env.faults.revive("w2")
    # Then nothing more of it was written (its finally block ran in a dead process), and sales.t1
    # counts as in flight until the dead worker's heartbeat has run out
    assert keys_of_tables(world) == {"sales.t0": "K1", "sales.t1": "K1", "sales.t2": "K0"}
    assert world.runs.pending(run_id) == [T1, T2]
    assert world.fences.in_flight(run_id) == [str(T1)]
    world.clock.now += ALIVE_TTL
    assert world.fences.in_flight(run_id) == []

    # When the broker redelivers the batch
    result = switch_batch(world, run_id, [T0, T1, T2])

    # Then it finishes the run: sales.t0 skipped; sales.t1 found switched, not switched again,
    # and recorded as this run's switch (the dead worker's attempt did it); sales.t2 switched
    assert result is not None and result.closed
    assert [status for _table, status in result.outcomes] == ["validated", "validated"]
    previous = {o.previous for o in world.runs.outcomes(run_id)}
    assert len(previous) == 1 and None not in previous, "each with the key the plan saw (K0)"
    assert keys_of_tables(world) == {"sales.t0": "K1", "sales.t1": "K1", "sales.t2": "K1"}
    assert world.runs.peek(run_id).status == "succeeded"


# --- issue 14: a migration's batches reuse a secret's labels for a few seconds -----------------


def _migrated_to_ops(world: World) -> None:
    """Every sales table moved onto the operator's connection (key Kops) by a finished
    migration."""
    run_id = start_migration(
        world, source=None, options={"canary": 0, "wave_size": 3, "concurrency": 1}, target=OPS
    )
    assert isinstance(run_id, str)
    for names in release_wave(world, run_id).batches:
        migrate_batch(world, run_id, 0, names)
    assert keys_of_tables(world) == {"sales.t0": "Kops", "sales.t1": "Kops", "sales.t2": "Kops"}


def _migration_back_to_k0(world: World) -> tuple[str, list[TableName]]:
    """A migration from the operator's connection to "origin" (K0, the secret's AWSCURRENT
    key: checked and live when planned), released: one batch of sales.t0-t2."""
    run_id = start_migration(
        world, source=OPS, options={"canary": 0, "wave_size": 3, "concurrency": 1}, target="origin"
    )
    assert isinstance(run_id, str)
    (batch,) = release_wave(world, run_id).batches
    assert batch == [T0, T1, T2]
    return run_id, batch


def _key_rotation_at(
    world: World, op: str, *, after: bool = False, deactivate_after: float = 0
) -> tuple[str, list[str]]:
    """A key rotation that runs as far as it may right before the world performs ``op`` (or
    right after it took effect): (its run id, why it had to wait, if it did)."""
    rotation = start_key_rotation(world, deactivate_after=deactivate_after, delete_after=7200)
    assert isinstance(rotation, str)
    waited: list[str] = []

    def rotate_now() -> None:
        world.env.faults.on_call = world.env.faults.probe = None
        try:
            assert drive_key_rotation(world, rotation) == "stop"
        except LockBusy as exc:
            waited.append(str(exc))

    if after:
        world.env.faults.probe = lambda done, _detail: rotate_now() if done == op else None
    else:
        world.env.faults.on_call = once(op, rotate_now)
    return rotation, waited


def test_a_key_rotation_waits_for_a_batch_change_onto_its_old_key_and_the_batch_sees_it() -> None:
    """A key rotation of K0 starts right after a migration's batch switched sales.t0 onto K0,
    that change still in flight. It stores K1 as AWSPENDING, marks the labels moved, and waits
    (LockBusy, tried again shortly) rather than start its table run under the change; the
    batch's next object is checked on fresh labels (the worker's 5 s reuse notwithstanding) and
    refused: K0 is being rotated away from. Once the change has ended the table run moves every
    table onto K1, and the batch, delivered again, still moves nothing onto K0."""
    # Given the sales tables on Kops, and a migration of them back onto K0 released
    world = build_world(Shape(sales=3), ops=True)
    _migrated_to_ops(world)
    run_id, batch = _migration_back_to_k0(world)
    # When, right after the batch's ALTER of sales.t0, a key rotation runs as far as it may, with
    # no time passing
    rotation, waited = _key_rotation_at(world, f"ALTER {T0}", after=True, deactivate_after=3600)
    # Then the batch stopped at sales.t1, and the rotation waited before switching any table
    with pytest.raises(MigrationRefused, match="being rotated away from"):
        migrate_batch(world, run_id, 0, batch)
    assert "checked before the new key was stored" in waited[0] and f"{run_id}:{T0}" in waited[0]
    assert world.version_with("AWSPENDING") and world.version_with("AWSCURRENT") == "v0"
    assert keys_of_tables(world) == {"sales.t0": "K0", "sales.t1": "Kops", "sales.t2": "Kops"}
    assert world.fences.in_flight(run_id) == []
    # When the rotation goes on, and the batch comes back
    assert drive_key_rotation(world, rotation) == "stop"
    assert world.version_with("AWSCURRENT") != "v0"
    with pytest.raises(MigrationRefused, match="rotated away from"):
        migrate_batch(world, run_id, 0, batch)
    # Then no table is on K0
    assert keys_of_tables(world) == {"sales.t0": "K1", "sales.t1": "K1", "sales.t2": "K1"}
    assert [o.status for o in world.runs.outcomes(run_id)][:1] == ["validated"]


def test_a_key_rotation_switches_tables_only_once_a_change_onto_its_old_key_has_ended() -> None:
    """A migration's object was admitted while K0 was AWSCURRENT with no rotation under way, and
    its ALTER is about to commit when a key rotation of K0 starts (deactivating K0 at once when it
    ends). The rotation waits before its table run: the ALTER commits onto K0, and the table run,
    started once the change has ended, moves sales.t0 onto K1 with the rest. Without the wait the
    table run would switch sales.t0 first and the ALTER would then put it back on K0."""
    world = build_world(Shape(sales=3), ops=True)
    _migrated_to_ops(world)
    run_id, batch = _migration_back_to_k0(world)
    # When the batch has admitted sales.t0 and is about to ALTER it, a key rotation comes
    rotation, waited = _key_rotation_at(world, f"ALTER {T0}")
    with pytest.raises(MigrationRefused, match="being rotated away from"):
        migrate_batch(world, run_id, 0, batch)
    # Then it waited for that change, which committed while K0 was still AWSCURRENT
    assert "waiting for 1 change(s) onto" in waited[0] and f"{run_id}:{T0}" in waited[0]
    assert world.version_with("AWSCURRENT") == "v0"
    assert keys_of_tables(world) == {"sales.t0": "K0", "sales.t1": "Kops", "sales.t2": "Kops"}
    # When the change has ended and the rotation goes on
    assert world.fences.in_flight(run_id) == []
    assert drive_key_rotation(world, rotation) == "stop"
    # Then every table is on K1, AWSCURRENT moved, and K0 was deactivated: nothing uses it
    assert keys_of_tables(world) == {"sales.t0": "K1", "sales.t1": "K1", "sales.t2": "K1"}
    assert world.version_with("AWSCURRENT") != "v0"
    assert iam_keys(world)["K0"] == "inactive"
    assert "retire_blocked" not in world.runs.peek(rotation).data


def test_a_key_rotation_switches_tables_only_once_a_rollback_onto_its_old_key_has_ended() -> None:
    """The same for `rotator rollback`: it reads the labels fresh for each object, yet a move
    back onto K0 checked before the rotation stored its new key commits a moment later. Each
    move back counts as in flight until it has ended, and the rotation waits for it; the objects
    the rollback comes to afterwards stay where they are (K0 is being rotated away from)."""
    world = build_world(Shape(sales=3), ops=True)
    _migrated_to_ops(world)
    (migration,) = [r for r, run in world.runs.runs.items() if run.kind == "migration"]
    # When the rollback is about to move sales.t0 back onto K0 and a key rotation comes
    rotation, waited = _key_rotation_at(world, f"ALTER {T0}")
    line = rollback(world, migration)
    # Then the rotation waited for the move back, which committed while K0 was AWSCURRENT
    assert f"{migration}:rollback:{T0}" in waited[0]
    assert "left (behind): sales.t1, sales.t2" in line
    assert world.version_with("AWSCURRENT") == "v0"
    assert keys_of_tables(world) == {"sales.t0": "K0", "sales.t1": "Kops", "sales.t2": "Kops"}
    assert world.fences.in_flight(migration) == []
    # When the rotation goes on and the rollback is run again
    assert drive_key_rotation(world, rotation) == "stop"
    line = rollback(world, migration)
    # Then every table is on K1 and K0 was deactivated; nothing more moves back onto it
    assert "moved back: none" in line
    assert keys_of_tables(world) == {"sales.t0": "K1", "sales.t1": "K1", "sales.t2": "K1"}
    assert iam_keys(world)["K0"] == "inactive"


def test_a_change_onto_the_old_key_in_flight_still_holds_awscurrents_move() -> None:
    """The second line: once AWSPENDING is stored no check admits a change onto the old key, but
    should one be in flight when AWSCURRENT is about to move (whatever admitted it: a view of
    the labels that was behind, say), the move waits for it, holding admissions meanwhile."""
    world = build_world(Shape(sales=3), ops=True)
    _migrated_to_ops(world)
    run_id, _batch = _migration_back_to_k0(world)
    rotation = start_key_rotation(world, deactivate_after=0, delete_after=7200)
    assert isinstance(rotation, str)
    while world.runs.peek(rotation).phase != "tested":
        _step, followups = advance(world, rotation)
        for _start, table_run in followups:  # (its table run, switched as one batch)
            for names in batches(prepare(world, table_run), 1):
                switch_batch(world, table_run, names)
    # When a change of the migration onto K0 is in flight, admitted under the current labels
    run = world.runs.get(run_id)
    epoch = world.fences.labels_epoch()
    admitted = world.fences.enter(run_id, str(T0), token=run.fence, labels_epoch=epoch)
    assert admitted is Admission.ADMITTED
    # Then AWSCURRENT does not move, and admissions are held meanwhile
    with pytest.raises(LockBusy, match="before moving AWSCURRENT"):
        advance(world, rotation)
    assert world.version_with("AWSCURRENT") == "v0"
    held = world.fences.enter(run_id, str(T1), token=run.fence, labels_epoch=epoch)
    assert held is Admission.STALE
    # When the change has ended, it moves
    world.fences.leave(run_id, str(T0))
    assert drive_key_rotation(world, rotation) == "stop"
    assert world.version_with("AWSCURRENT") != "v0"


def test_a_migration_onto_another_key_in_flight_does_not_hold_up_a_key_rotation() -> None:
    """The wait is only for changes that may land on the key AWSCURRENT moves away from: a
    migration onto the operator's own key (Kops) with a change in flight delays neither the
    label's move nor K0's deactivation."""
    world = build_world(Shape(sales=3), ops=True)
    run_id = start_migration(
        world, source=None, options={"canary": 0, "wave_size": 3, "concurrency": 1}, target=OPS
    )
    assert isinstance(run_id, str)
    (batch,) = release_wave(world, run_id).batches
    # When the batch is about to ALTER sales.t0 and a key rotation runs to its end
    rotation, waited = _key_rotation_at(world, f"ALTER {T0}")
    migrate_batch(world, run_id, 0, batch)
    # Then it did not wait, K0 was deactivated at once, and every table ended on the operator's key
    assert waited == [] and "retire_blocked" not in world.runs.peek(rotation).data
    assert iam_keys(world)["K0"] == "inactive"
    assert keys_of_tables(world) == {"sales.t0": "Kops", "sales.t1": "Kops", "sales.t2": "Kops"}


def test_a_start_that_read_the_run_before_another_worker_planned_it_does_not_plan_again() -> None:
    """Chaos seed 7,172,248 (fault rate 0.2): `rotator resume` queued a second start of a key
    rotation's table run, and two workers took both starts at once. One planned the run
    (SWITCHING) and its batches began; the other, which had read the run before, wrote PLANNING
    over it, failed on Databend, and when retried planned the run afresh — after AWSCURRENT had
    moved on outside the rotator — while the first plan's batches went on switching objects onto
    the now outdated pending key. A start that finds the run planned meanwhile now goes on as a
    redelivery: it returns what is still pending, writes nothing and plans nothing."""
    import copy
    from dataclasses import dataclass

    from tests.fakes import MemoryRuns
    from tests.test_core_rotation import _run_setup, binding, key_json
    from worker.domain.model import RunStatus
    from worker.domain.runs import RunRecord
    from worker.flow.runs import prepare_rotation

    @dataclass
    class ReadBeforeThePlan(MemoryRuns):
        stale: RunRecord | None = None  # what the second worker read, before the first planned

        def get(self, run_id: str) -> RunRecord:
            run, self.stale = (self.stale, None) if self.stale else (super().get(run_id), None)
            return run

    admin, secrets, _ = _run_setup(key_json("AKIANEWNEWNEWNEWXNEW"))
    runs = ReadBeforeThePlan()
    runs.create(RunRecord(run_id="r1", kind="rotation", secret=secrets.name, version_id="v2"))
    before_the_plan = copy.deepcopy(runs.get("r1"))
    bound = [binding("sales.*")]
    # Given the first worker's start planned the run
    first = prepare_rotation("r1", runs=runs, secrets=secrets, admin=admin, bindings=bound)
    assert runs.get("r1").status == RunStatus.SWITCHING and len(first) == 3
    statements, writes = len(admin.statements), []
    runs.on_update = lambda _run, fields: writes.append(fields)  # type: ignore[assignment]
    # When the second worker's start goes on from the run as it read it before that plan
    runs.stale = before_the_plan
    second = prepare_rotation("r1", runs=runs, secrets=secrets, admin=admin, bindings=bound)
    # Then it plans nothing and leaves the run switching: the same objects are still pending
    assert second == first
    assert runs.get("r1").status == RunStatus.SWITCHING
    assert len(admin.statements) == statements, "no second planning"
    assert not [w for w in writes if w.get("status") == RunStatus.PLANNING]
