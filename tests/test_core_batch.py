"""Batches of a run's objects against the in-memory fakes (worker/flow/runs/switch.py): how a run is
cut into batches, and that a batch keeps each object's safety — pauses and newer runs are seen
object by object, outcomes reach the run store seconds apart at most, an error mid-batch loses
no finished outcome and leaves nothing in flight, and a batch given up fails only what is left."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.fakes import FakeAdmin, MemoryFences, MemoryLocks, MemoryRuns
from tests.test_core_rotation import NEW, OLD, T_NEW, no_sleep_policy
from worker.domain.errors import DatabendUnavailable, NotSwitchable
from worker.domain.model import AccessKeyCredentials, RunStatus, TableOutcome, TableStatus
from worker.domain.ports import Admission, RunRecord
from worker.domain.sql import TableName
from worker.flow.runs.switch import MAX_BATCH, give_up_objects, split_batches, switch_batch

SECRET = "arn:secret"


class Crash(BaseException):
    """The worker dies (kill -9): nothing after it runs, not even a ``finally``'s writes."""


def names(n: int) -> list[TableName]:
    return [TableName("sales", f"t{i:03d}") for i in range(n)]


# --- cutting a run into batches ------------------------------------------------------------------


def test_no_objects_make_no_batches() -> None:
    assert split_batches([], 8) == []


def test_batches_keep_the_order_and_differ_in_size_by_one_at_most() -> None:
    batches = split_batches(names(10), 4)
    assert [len(b) for b in batches] == [3, 3, 2, 2]
    assert [t for b in batches for t in b] == names(10)


def test_fewer_objects_than_slots_make_batches_of_one() -> None:
    assert split_batches(names(3), 8) == [[t] for t in names(3)]


def test_a_large_run_is_cut_into_batches_of_at_most_max_batch() -> None:
    batches = split_batches(names(3 * MAX_BATCH + 1), 2)
    assert len(batches) == 4
    assert max(len(b) for b in batches) <= MAX_BATCH
    assert max(len(b) for b in batches) - min(len(b) for b in batches) <= 1


@pytest.mark.parametrize("parallel", [1, 2, 3, 4, 8, 64, 1000])
def test_every_object_is_in_exactly_one_batch_for_any_size(parallel: int) -> None:
    for n in range(0, 5 * MAX_BATCH, 7):
        batches = split_batches(names(n), parallel)
        assert [t for b in batches for t in b] == names(n), (n, parallel)
        assert all(0 < len(b) <= MAX_BATCH for b in batches), (n, parallel)
        if batches:
            sizes = [len(b) for b in batches]
            assert max(sizes) - min(sizes) <= 1, (n, parallel)
        # as many batches as can run at once (no slot idles while a batch waits), not more
        # than needed to stay under MAX_BATCH
        assert len(batches) == min(n, max(parallel, -(-n // MAX_BATCH))), (n, parallel)


# --- one batch -----------------------------------------------------------------------------------


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    """A rotation run r1 (fence 1, the secret's newest) switching tables from OLD to NEW."""

    tables: list[TableName]
    admin: FakeAdmin = field(default_factory=FakeAdmin)
    runs: MemoryRuns = field(default_factory=MemoryRuns)
    locks: MemoryLocks = field(default_factory=MemoryLocks)
    writes: list[tuple[float, list[TableName]]] = field(default_factory=list)
    clock: Clock = field(default_factory=Clock)
    dead: bool = False  # the worker died: nothing more reaches the run store

    def __post_init__(self) -> None:
        self.fences = MemoryFences(self.runs)
        self.admin.create_connection("c_new", AccessKeyCredentials(NEW, "x" * 40))
        for table in self.tables:
            self.admin.add(table, OLD)
        self.runs.create(
            RunRecord(
                run_id="r1",
                kind="rotation",
                secret=SECRET,
                version_id="v2",
                status=RunStatus.SWITCHING,
                connection="c_new",
                target=T_NEW,
                fence=1,
            )
        )
        self.fences.newest[SECRET] = (1, "r1")
        self.locks.acquire(SECRET, "r1")
        self.runs.set_plan(
            "r1", [TableOutcome(t, rule="selector sales.*", previous="ak:******OLD") for t in self]
        )
        record = self.runs.record_outcomes

        def recorded(run_id: str, outcomes: list[TableOutcome], wave=None):  # type: ignore[no-untyped-def]
            if self.dead:
                raise Crash
            self.writes.append((self.clock(), [o.table for o in outcomes]))
            return record(run_id, outcomes, wave)

        self.runs.record_outcomes = recorded  # type: ignore[method-assign]

    def __iter__(self) -> Iterator[TableName]:
        return iter(self.tables)

    def batch(self, tables: list[TableName] | None = None, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("clock", self.clock)
        kwargs.setdefault("locks", self.locks)
        return switch_batch(
            "r1",
            self.tables if tables is None else tables,
            runs=self.runs,
            admin=self.admin,
            fences=self.fences,
            retry=no_sleep_policy(),
            **kwargs,
        )

    def status(self, table: TableName) -> TableStatus:
        outcome = self.runs.outcome("r1", table)
        assert outcome is not None
        return outcome.status

    def altered(self) -> list[str]:
        return [s.removeprefix("ALTER ") for s in self.admin.statements if s.startswith("ALTER")]


def test_a_batch_switches_each_object_once_and_closes_the_run_with_its_last_write() -> None:
    world = World(names(5))
    result = world.batch()
    assert result is not None and result.closed and result.stopped is None
    assert world.altered() == [str(t) for t in world]
    assert all(world.admin.key_of(t) == NEW for t in world)
    assert [o.status for o in result.outcomes] == [TableStatus.VALIDATED] * 5
    assert [o.attempts for o in world.runs.outcomes("r1")] == [1] * 5
    # the first outcome at once (progress shows early), the rest of a fast batch in one call
    assert [len(tables) for _, tables in world.writes] == [1, 4]
    assert world.runs.get("r1").status == RunStatus.SUCCEEDED
    assert world.fences.in_flight("r1") == [] and world.locks.owners == {}


def test_a_pause_after_the_first_object_stops_the_batch_and_leaves_the_rest_pending() -> None:
    world = World(names(5))
    first, *rest = world.tables

    def pause_once(outcome: TableOutcome, _seconds: float) -> None:  # `rotator pause` lands
        if outcome.table == first:
            world.runs.update("r1", status=RunStatus.PAUSED)

    result = world.batch(on_outcome=pause_once)

    assert result is not None and result.stopped is Admission.PAUSED and not result.closed
    assert world.altered() == [str(first)], "no object after the pause was touched"
    assert world.status(first) is TableStatus.VALIDATED, "what finished is written"
    assert [world.status(t) for t in rest] == [TableStatus.PENDING] * 4
    assert world.runs.pending("r1") == rest
    assert all(world.admin.key_of(t) == OLD for t in rest)
    assert world.runs.get("r1").status == RunStatus.PAUSED
    assert world.fences.in_flight("r1") == []

    # resumed: the same batch again switches the rest, skipping the finished object
    world.runs.update("r1", status=RunStatus.SWITCHING)
    again = world.batch()
    assert again is not None and again.finished_before == [first] and again.closed
    assert world.altered() == [str(t) for t in world]


def test_a_newer_run_taking_the_fence_mid_batch_leaves_the_rest_superseded_and_untouched() -> None:
    world = World(names(4))
    first, *rest = world.tables

    def newer_run_takes_over(outcome: TableOutcome, _seconds: float) -> None:
        if outcome.table == first:
            world.fences.issue(SECRET, "r2")  # r2 holds token 2 now; r1 still reads switching

    result = world.batch(on_outcome=newer_run_takes_over)

    assert result is not None
    assert world.altered() == [str(first)]
    assert [world.status(t) for t in rest] == [TableStatus.SUPERSEDED] * 3
    assert all(world.admin.key_of(t) == OLD for t in rest), "late work changed nothing"
    reasons = {o.reason for o in result.outcomes if o.status is TableStatus.SUPERSEDED}
    assert reasons == {"a newer run of the same secret took over; left untouched"}
    assert world.runs.pending("r1") == [] and world.fences.in_flight("r1") == []
    # the run does not claim success for what a newer run took over
    run = world.runs.get("r1")
    assert run.status == RunStatus.SUPERSEDED
    assert run.error == "3 of 4 tables left to a newer run of the same secret"


def test_a_superseded_batch_changes_nothing_at_all() -> None:
    world = World(names(3))
    world.fences.issue(SECRET, "r2")
    result = world.batch()
    assert (
        result is not None and [o.status for o in result.outcomes] == [TableStatus.SUPERSEDED] * 3
    )
    assert world.altered() == []
    assert all(world.admin.key_of(t) == OLD for t in world)
    assert [o.previous for o in world.runs.outcomes("r1")] == ["ak:******OLD"] * 3


def test_outcomes_are_written_at_most_flush_every_apart_not_once_per_object() -> None:
    world = World(names(10))
    finished: dict[TableName, float] = {}

    @contextlib.contextmanager
    def takes_400_ms(_planned: object) -> Iterator[None]:  # each object's switch
        yield
        world.clock.now += 0.4

    def seen(outcome: TableOutcome, _seconds: float) -> None:
        finished[outcome.table] = world.clock()

    start = world.clock()
    world.batch(each=takes_400_ms, on_outcome=seen, flush_every=1.0)

    # the first outcome at once, then at most one write per flush_every
    assert [len(tables) for _, tables in world.writes] == [1, 3, 3, 3]
    assert [round(at - start, 1) for at, _ in world.writes] == [0.4, 1.6, 2.8, 4.0]
    written_at = {t: at for at, tables in world.writes for t in tables}
    assert written_at.keys() == set(world.tables)
    # objects of equal time: `rotator status` is never more than flush_every behind one
    assert max(written_at[t] - finished[t] for t in world) <= 1.0
    assert [o.status for o in world.runs.outcomes("r1")] == [TableStatus.VALIDATED] * 10


def test_each_write_ends_the_in_flight_entries_of_what_it_wrote() -> None:
    world = World(names(4))
    flying: list[list[str]] = []

    @contextlib.contextmanager
    def look(_planned: object) -> Iterator[None]:
        flying.append(world.fences.in_flight("r1"))
        yield
        world.clock.now += 0.6

    world.batch(each=look, flush_every=1.0)
    labels = [str(t) for t in world]
    # t0 is written at once (0.6 s); t1 and t2 stay in flight until the write after t2 (1.8 s)
    assert flying == [labels[:1], labels[1:2], labels[1:3], labels[3:4]]
    assert world.fences.in_flight("r1") == []


def test_a_retryable_error_mid_batch_writes_what_finished_leaves_nothing_in_flight() -> None:
    world = World(names(5))
    t0, t1, t2, t3, t4 = world.tables
    world.admin.switch_failures[t2] = [DatabendUnavailable("connection reset")] * 4
    flying: list[list[str]] = []

    @contextlib.contextmanager
    def look(_planned: object) -> Iterator[None]:
        flying.append(world.fences.in_flight("r1"))
        yield

    with pytest.raises(DatabendUnavailable) as stopped:
        world.batch(each=look, flush_every=3600)

    # the error carries what this call recorded: the task's retry budget starts again
    assert stopped.value.progress == 2
    # t0 was written at once; t1 (unwritten) and t2 were in flight when t2 failed
    assert flying[-1] == [str(t1), str(t2)], "t2 was in flight when it failed"
    assert world.fences.in_flight("r1") == [], "every in-flight entry ended before the raise"
    assert [world.status(t) for t in world] == [TableStatus.VALIDATED] * 2 + [
        TableStatus.PENDING
    ] * 3
    assert world.writes == [(world.clock(), [t0]), (world.clock(), [t1])]
    assert world.altered() == [str(t0), str(t1)] + [str(t2)] * 4
    assert world.runs.get("r1").status == RunStatus.SWITCHING

    # the task runs the batch again: finished objects are skipped, t2 is looked at first
    again = world.batch()
    assert again is not None and again.finished_before == [t0, t1] and again.closed
    assert world.altered()[-3:] == [str(t2), str(t3), str(t4)]
    assert world.altered().count(str(t0)) == 1 and world.altered().count(str(t1)) == 1
    attempts = {o.table: o.attempts for o in world.runs.outcomes("r1")}
    assert attempts == {t0: 1, t1: 1, t2: 2, t3: 2, t4: 2}
    assert world.runs.get("r1").status == RunStatus.SUCCEEDED


def test_an_error_before_any_object_finished_carries_no_progress() -> None:
    world = World(names(3))
    world.admin.switch_failures[world.tables[0]] = [DatabendUnavailable("connection reset")] * 4
    with pytest.raises(DatabendUnavailable) as stopped:
        world.batch()
    assert stopped.value.progress == 0  # the retry counts against the task's budget
    assert world.writes == []


def test_a_redelivered_batch_does_not_switch_an_object_switched_but_not_recorded() -> None:
    world = World(names(3))
    t0, t1, t2 = world.tables

    def die(outcome: TableOutcome, _seconds: float) -> None:  # the fault point
        world.dead = True
        raise Crash

    with pytest.raises(Crash):
        world.batch(on_outcome=die, flush_every=3600)
    world.dead = False  # another worker takes the redelivered batch
    assert world.altered() == [str(t0)] and world.admin.key_of(t0) == NEW
    assert world.status(t0) is TableStatus.PENDING, "switched on Databend, not in the run"

    again = world.batch()
    assert again is not None and again.closed
    assert world.altered() == [str(t0), str(t1), str(t2)], "t0 was not switched again"
    # ...but it is this run's switch (the plan saw it on OLD, an attempt was written ahead), with
    # the plan's previous credentials: a rollback moves it back, the counts do not hide it
    outcome = world.runs.outcome("r1", t0)
    assert outcome is not None
    assert (outcome.status, outcome.previous) == (TableStatus.VALIDATED, "ak:******OLD")
    assert [world.status(t) for t in (t1, t2)] == [TableStatus.VALIDATED] * 2


def test_an_object_already_on_the_target_when_planned_stays_already_switched() -> None:
    """Redelivered after a crash, an object the plan already saw on the target is not claimed
    as this run's switch."""
    world = World(names(2))
    t0, t1 = world.tables
    world.admin.add(t0, NEW)
    plan = [TableOutcome(t, rule="selector sales.*", previous="ak:******OLD") for t in world]
    plan[0].previous = "ak:******NEW"
    world.runs.set_plan("r1", plan)
    world.runs.begin_attempts("r1", [t0])  # an attempt written ahead, then the worker died
    assert world.batch() is not None
    assert world.status(t0) is TableStatus.ALREADY_SWITCHED
    assert world.status(t1) is TableStatus.VALIDATED


def test_a_migration_batch_reports_its_wave_complete_on_the_write_that_completes_it() -> None:
    world = World(names(6))
    first_wave, second_wave = world.tables[:4], world.tables[4:]
    world.runs.set_waves("r1", [first_wave, second_wave])
    one = world.batch(first_wave[:2], wave=(0, 0), locks=None)
    two = world.batch(first_wave[2:], wave=(0, 0), locks=None)
    assert one is not None and not one.wave_complete and not one.closed
    assert two is not None and two.wave_complete and not two.closed
    last = world.batch(second_wave, wave=(1, 0), locks=None)
    assert last is not None and last.closed


def test_a_batch_of_an_ended_run_does_nothing() -> None:
    world = World(names(2))
    world.runs.update("r1", status=RunStatus.SUPERSEDED)
    assert world.batch() is None
    assert world.altered() == [] and world.writes == []


# --- a batch given up ----------------------------------------------------------------------------


def test_giving_up_fails_only_the_unfinished_objects_and_closes_the_run() -> None:
    world = World(names(4))
    done, *unfinished = world.tables
    world.batch([done])
    assert world.status(done) is TableStatus.VALIDATED

    result = give_up_objects(
        "r1", world.tables, "out of retries: connection reset", runs=world.runs, locks=world.locks
    )

    assert result.closed
    assert [o.table for o in result.outcomes] == unfinished
    assert world.status(done) is TableStatus.VALIDATED, "a finished object keeps its outcome"
    for table in unfinished:
        outcome = world.runs.outcome("r1", table)
        assert outcome is not None
        assert (outcome.status, outcome.reason) == (
            TableStatus.FAILED,
            "out of retries: connection reset",
        )
        assert (outcome.rule, outcome.previous) == ("selector sales.*", "ak:******OLD")
    run = world.runs.get("r1")
    assert run.status == RunStatus.FAILED and run.error == "3 of 4 tables failed"
    assert world.locks.owners == {}, "the closed run let go of its secret"
    assert world.altered() == [str(done)], "giving up changes nothing on Databend"


def test_giving_up_one_batch_leaves_the_run_open_while_other_batches_are_pending() -> None:
    world = World(names(4))
    result = give_up_objects("r1", world.tables[:2], "gave up", runs=world.runs, locks=world.locks)
    assert not result.closed and len(result.outcomes) == 2
    assert world.runs.get("r1").status == RunStatus.SWITCHING
    assert world.runs.pending("r1") == world.tables[2:]
    assert world.locks.owners == {SECRET: "r1"}


def test_giving_up_on_an_ended_run_writes_nothing() -> None:
    world = World(names(2))
    world.runs.update("r1", status=RunStatus.SUCCEEDED)
    result = give_up_objects("r1", world.tables, "gave up", runs=world.runs)
    assert result.outcomes == [] and world.writes == []
    assert [world.status(t) for t in world] == [TableStatus.PENDING] * 2


def test_a_redelivered_batch_closes_a_run_its_dead_worker_left_open() -> None:
    # Given a batch whose worker died after the write that left nothing pending, before closing
    world = World(names(2))
    world.runs.record_outcomes(
        "r1", [TableOutcome(t, status=TableStatus.VALIDATED, attempts=1) for t in world]
    )
    assert world.runs.get("r1").status == RunStatus.SWITCHING

    # When the broker redelivers it
    result = world.batch()

    # Then nothing is switched again and the run is closed (its lock released)
    assert result is not None and result.closed and result.finished_before == world.tables
    assert world.altered() == []
    assert world.runs.get("r1").status == RunStatus.SUCCEEDED
    assert SECRET not in world.locks.owners


# --- closing a run -------------------------------------------------------------------------------


def test_a_run_whose_counts_show_only_successes_closes_without_reading_its_outcomes() -> None:
    world = World(names(3))

    def no_reading(_run_id: str) -> list[TableOutcome]:
        raise AssertionError("a run that succeeded in full is closed from its status counts")

    world.runs.outcomes = no_reading  # type: ignore[method-assign]
    result = world.batch()
    assert result is not None and result.closed
    assert world.runs.get("r1").status == RunStatus.SUCCEEDED


@pytest.mark.parametrize(
    "counts",
    [None, {"validated": 2, "failed": 1}, {"validated": 2, "a-status-from-later": 1}],
    ids=["recorded-without-counts", "a-failure-counted", "an-unknown-status-counted"],
)
def test_a_run_closes_from_its_outcomes_unless_its_counts_show_only_successes(
    counts: dict[str, int] | None,
) -> None:
    # Given a run whose last object fails for good, and status counts that are missing, show the
    # failure, or name a status this version does not know
    world = World(names(3))
    world.admin.switch_failures[world.tables[-1]] = [NotSwitchable("bad location")]
    world.runs.status_counts = lambda _run_id: (  # type: ignore[method-assign]
        None if counts is None else Counter(counts)
    )
    # When the batch ends the run
    world.batch()
    # Then the outcomes decide, and the message counts them
    run = world.runs.get("r1")
    assert (run.status, run.error) == (RunStatus.FAILED, "1 of 3 tables failed")


def test_a_batch_sent_out_again_stops_the_earlier_copy_so_none_is_switched_twice() -> None:
    """A resume (or a repeated event) sends a switching run's pending objects out again while
    its first batch still runs (its worker was slow, not dead). The first copy (dispatch 1) has
    switched t0 when the second sending (dispatch 2) is made: it stops at its next object,
    leaving the rest pending; the second copy switches them. Each table is ALTERed once."""
    world = World(names(4))
    t0, t1, t2, t3 = world.tables
    first = world.runs.redispatch("r1")
    sent_again: list[int] = []

    def after(outcome: TableOutcome, _seconds: float) -> None:
        if outcome.table == t0:  # the second sending is made while the first copy runs
            sent_again.append(world.runs.redispatch("r1"))

    stopped = world.batch(dispatch=first, on_outcome=after)
    assert stopped is not None and stopped.stopped is Admission.REDISPATCHED
    assert [o.table for o in stopped.outcomes] == [t0]
    assert {world.status(t) for t in (t1, t2, t3)} == {TableStatus.PENDING}
    again = world.batch(dispatch=sent_again[0])
    assert again is not None and again.closed and again.finished_before == [t0]
    assert world.altered() == [str(t) for t in world], "each table once"


def test_a_batch_of_an_earlier_sending_that_gives_up_fails_none_of_its_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of retries, a batch records its unfinished objects failed (the run ends, resumable)
    — unless its objects were sent out again since: the later batches have them."""
    from types import SimpleNamespace

    from worker.runtime import jobs

    world = World(names(2))
    t0, t1 = world.tables
    old = world.runs.redispatch("r1")
    monkeypatch.setattr(jobs, "services", lambda: SimpleNamespace(runs=world.runs, locks=None))
    world.runs.redispatch("r1")  # sent out again: a resume
    jobs.rotation_gave_up("r1", [t0, t1], "gave up after 9 retries", dispatch=old)
    assert {world.status(t) for t in (t0, t1)} == {TableStatus.PENDING}
    jobs.rotation_gave_up("r1", [t0, t1], "gave up after 9 retries", dispatch=old + 1)
    assert {world.status(t) for t in (t0, t1)} == {TableStatus.FAILED}


def test_a_later_sendings_batch_waits_for_an_object_an_earlier_one_holds_then_skips_it() -> None:
    """The batch of the first sending has t1 in flight (its ALTER not yet written down) when the
    run's objects are sent out again. The later batch switches t0, then finds t1 held by that
    batch: it waits until that batch lets it go, sees it finished, and leaves it: t1 is switched
    once."""
    from concurrent.futures import ThreadPoolExecutor

    world = World(names(3))
    t0, t1, t2 = world.tables
    world.runs.redispatch("r1")
    second = world.runs.redispatch("r1")
    earlier = ThreadPoolExecutor(max_workers=1)  # the first sending's batch, on its own thread
    assert earlier.submit(world.fences.enter, "r1", str(t1)).result() is Admission.ADMITTED
    world.admin.switch_table(t1, "c_new")  # its ALTER, its outcome still buffered

    def earlier_batch_writes_and_lets_go(_seconds: float) -> None:
        world.runs.record_outcomes(
            "r1", [TableOutcome(t1, TableStatus.VALIDATED, previous="ak:******OLD", attempts=1)]
        )
        earlier.submit(world.fences.leave, "r1", str(t1)).result()

    result = world.batch(dispatch=second, sleep=earlier_batch_writes_and_lets_go)
    earlier.shutdown()
    assert result is not None and result.closed and result.finished_before == [t1]
    assert world.altered() == [str(t1), str(t0), str(t2)], "t1 once, by the earlier batch"
    assert world.fences.in_flight("r1") == []


def test_a_batch_of_an_earlier_sending_stops_before_writing_anything_ahead() -> None:
    """Still queued when the run's objects were sent out again, a batch changes nothing at all:
    no attempt written ahead (the later batch's first attempt keeps trusting its plan)."""
    world = World(names(3))
    old = world.runs.redispatch("r1")
    world.runs.redispatch("r1")
    result = world.batch(dispatch=old)
    assert result is not None and result.stopped is Admission.REDISPATCHED
    assert [o.attempts for o in world.runs.outcomes("r1")] == [0, 0, 0]
    assert world.altered() == [] and world.writes == []


def test_a_wait_for_an_object_an_earlier_batch_never_lets_go_ends_with_its_lease() -> None:
    """An entry that is never left (its leave failed, its worker hung) is waited for no longer
    than its lease: then LockBusy, and the task tries again later; what the batch did before is
    on record."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.domain.errors import LockBusy

    world = World(names(2))
    t0, t1 = world.tables
    world.runs.redispatch("r1")
    second = world.runs.redispatch("r1")
    holder = ThreadPoolExecutor(max_workers=1)
    assert holder.submit(world.fences.enter, "r1", str(t1)).result() is Admission.ADMITTED

    def wait(seconds: float) -> None:
        world.clock.now += seconds * 100  # (time passes fast here)

    with pytest.raises(LockBusy, match="still held by a batch of an earlier sending"):
        world.batch(dispatch=second, sleep=wait, lease_seconds=60)
    holder.shutdown()
    assert world.status(t0) is TableStatus.VALIDATED and world.status(t1) is TableStatus.PENDING
    assert world.altered() == [str(t0)]
