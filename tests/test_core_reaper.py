"""The reaper against the fakes: no run hangs silently in queued, planning or switching."""

from __future__ import annotations

import pytest

from tests.fakes import ChangedAfterRead, FakeAdmin, FakeSecrets, MemoryFences, MemoryRuns
from tests.test_core_key_rotation import world
from tests.test_core_rotation import binding, key_json
from worker.domain.errors import FatalError, UnknownSecretError
from worker.domain.model import RunStatus, TableOutcome, TableStatus
from worker.domain.ports import RunRecord
from worker.domain.sql import TableName
from worker.flow.key_rotation import new_key_rotation
from worker.flow.lifecycle import Followup, resume
from worker.flow.reaper import MAX_REQUEUES, reap
from worker.flow.runs import prepare_rotation, reopen_failed_tables

STUCK_AFTER = 900.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rotation_run(runs: MemoryRuns, run_id: str = "r1", status: str = "queued") -> None:
    runs.create(RunRecord(run_id=run_id, kind="rotation", secret="arn", version_id="v"))
    runs.update(run_id, status=status)


def test_a_quiet_queued_run_is_requeued_then_flagged_stuck_with_the_reason() -> None:
    clock = Clock()
    runs = MemoryRuns(clock=clock)
    rotation_run(runs)

    clock.now += STUCK_AFTER - 1
    assert reap(runs, None, now=clock.now, stuck_after=STUCK_AFTER) == []  # not yet

    for attempt in range(MAX_REQUEUES):
        clock.now += STUCK_AFTER + 1
        (reaped,) = reap(runs, None, now=clock.now, stuck_after=STUCK_AFTER)
        assert (reaped.run_id, reaped.followup) == ("r1", Followup.START_ROTATION), attempt
    clock.now += STUCK_AFTER + 1
    (flagged,) = reap(runs, None, now=clock.now, stuck_after=STUCK_AFTER)
    assert flagged.followup is Followup.NOTHING
    run = runs.get("r1")
    assert run.status == RunStatus.STUCK and "re-enqueued 3 times" in str(run.error)
    assert "no progress for" in str(run.error)


def test_progress_resets_the_requeue_count() -> None:
    clock = Clock()
    runs = MemoryRuns(clock=clock)
    rotation_run(runs, status="switching")
    for _ in range(MAX_REQUEUES + 2):
        clock.now += STUCK_AFTER + 1
        (reaped,) = reap(runs, None, now=clock.now, stuck_after=STUCK_AFTER)
        assert reaped.followup is Followup.START_ROTATION
        clock.now += 5
        runs.update("r1", notes=["a table finished"])  # the requeued task made progress


def test_paused_finished_and_busy_runs_are_left_alone() -> None:
    clock = Clock()
    runs = MemoryRuns(clock=clock)
    fences = MemoryFences(runs, clock=clock)
    rotation_run(runs, "paused", status="paused")
    rotation_run(runs, "done", status="succeeded")
    rotation_run(runs, "busy", status="switching")
    fences.enter("busy", "sales.t", lease_seconds=STUCK_AFTER * 3)  # a slow ALTER, not a lost one
    clock.now += STUCK_AFTER + 1
    assert reap(runs, fences, now=clock.now, stuck_after=STUCK_AFTER) == []


@pytest.mark.parametrize("requeues", [0, MAX_REQUEUES])
def test_a_run_that_ends_while_the_reaper_looks_at_it_is_left_ended(requeues: int) -> None:
    """Step by step: the reaper reads a quiet switching run; an abort lands before its write.
    The aborted run is neither flagged stuck (``rotator resume`` would bring it back, onto a
    key the abort deleted) nor re-enqueued."""
    clock = Clock()
    runs = MemoryRuns(clock=clock)
    rotation_run(runs, status="switching")
    runs.update("r1", requeues=requeues, requeued_at=clock.now)

    class AbortMeanwhile(MemoryFences):
        def in_flight(self, run_id: str) -> list[str]:
            runs.update(run_id, status=RunStatus.ABORTED, error="aborted")
            return []

    clock.now += STUCK_AFTER + 1
    assert reap(runs, AbortMeanwhile(runs, clock=clock), now=clock.now, stuck_after=900) == []
    run = runs.get("r1")
    assert (run.status, run.error, run.requeues) == (RunStatus.ABORTED, "aborted", requeues)


def test_a_rotation_function_run_is_flagged_not_requeued() -> None:
    clock = Clock()
    runs = MemoryRuns(clock=clock)
    rotation_run(runs, "sm-token", status="switching")
    clock.now += STUCK_AFTER + 1
    (flagged,) = reap(runs, None, now=clock.now, stuck_after=STUCK_AFTER)
    assert flagged.followup is Followup.NOTHING and "rotation function" in flagged.reason


def test_a_key_rotation_waiting_on_its_table_run_is_reaped_through_that_run() -> None:
    ctx, plan = world()
    clock = Clock()
    ctx.runs.clock = clock  # type: ignore[attr-defined]
    run_id = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    ctx.runs.update(
        run_id,
        status="switching",
        phase="switching",
        data={**ctx.runs.get(run_id).data, "table_run": "child"},
    )
    rotation_run(ctx.runs, "child", status="planning")  # type: ignore[arg-type]
    clock.now += STUCK_AFTER + 1
    reaped = reap(ctx.runs, None, now=clock.now, stuck_after=STUCK_AFTER)
    assert [(r.run_id, r.followup) for r in reaped] == [("child", Followup.START_ROTATION)]


def test_resume_puts_a_stuck_run_back_where_it_stopped() -> None:
    ctx, _ = world()
    secrets = FakeSecrets(
        values={"v1": key_json("AKIAOLDOLDOLDOLD1OLD")}, stages={"v1": ("AWSCURRENT",)}
    )
    ctx.secrets, ctx.admin = secrets, FakeAdmin()
    rotation_run(ctx.runs, "r1", status="planning")  # type: ignore[arg-type]
    ctx.runs.update("r1", status="stuck", stuck_from="planning")
    resumed = resume(ctx, "r1")
    assert (resumed.followup, ctx.runs.get("r1").status) == (Followup.START_ROTATION, "planning")
    # planning again from there: a run whose secret is gone fails with the reason, never hangs
    with pytest.raises(UnknownSecretError, match="not found"):
        prepare_rotation(
            "r1", runs=ctx.runs, secrets=secrets, admin=ctx.admin, bindings=[binding("sales.*")]
        )
    assert ctx.runs.get("r1").status == RunStatus.FAILED


@pytest.mark.parametrize("status", ["failed", "stuck"])
@pytest.mark.parametrize(
    ("newer_run", "newest_wins", "refused"),
    [(True, False, True), (False, True, True), (False, False, False)],
)
def test_a_run_whose_version_awscurrent_left_is_not_resumed_behind_it(
    newer_run: bool, newest_wins: bool, refused: bool, status: str
) -> None:
    """A worker died mid-run of v1; the operator moved AWSCURRENT to v2. Resumed, the run would
    move objects onto v1 until v2's run moves them again: refused when v2 has a run (or the run
    applies AWSCURRENT only, as an event's does); an operator's pin of v1 with no newer run
    resumes."""
    ctx, _ = world()
    secrets = FakeSecrets(
        values={"v1": key_json("AKIAOLDOLDOLDOLD1OLD"), "v2": key_json("AKIANEWNEWNEWNEW2NEW")},
        stages={"v1": ("AWSPREVIOUS",), "v2": ("AWSCURRENT",)},
    )
    ctx.secrets = secrets
    ctx.runs.create(
        RunRecord(
            "r1",
            "rotation",
            secrets.arn,
            "v1",
            status=status,
            newest_wins=newest_wins,
            stuck_from="switching",
        )
    )
    if newer_run:
        ctx.runs.create(RunRecord("r2", "rotation", secrets.arn, "v2", status="queued"))
    if refused:
        before = ctx.runs.get("r1")
        with pytest.raises(FatalError, match="AWSCURRENT is version v2 now"):
            resume(ctx, "r1")
        after = ctx.runs.get("r1")  # not a write: a stuck run is not made active behind it
        assert (after.status, after.updated_at) == (status, before.updated_at)
    else:
        assert resume(ctx, "r1").followup == Followup.START_ROTATION


def test_reopening_a_failed_run_that_ended_otherwise_meanwhile_changes_nothing() -> None:
    """Step by step: resume reads a failed run and reopens its failed table; a newer run
    supersedes it before the status write. It stays superseded (its objects belong to the
    newer run now), and resume says so."""
    runs = ChangedAfterRead()
    rotation_run(runs, status="failed")
    runs.set_plan("r1", [TableOutcome(TableName("sales", "t0"), TableStatus.FAILED)])
    runs.then(status=RunStatus.SUPERSEDED, error="a newer run took over")
    with pytest.raises(FatalError, match="became superseded"):
        reopen_failed_tables("r1", runs)
    assert runs.get("r1").status == RunStatus.SUPERSEDED


def test_reopening_a_failed_run_puts_its_failed_objects_back_and_the_run_to_switching() -> None:
    runs = MemoryRuns()
    rotation_run(runs, status="failed")
    t0, t1 = TableName("sales", "t0"), TableName("sales", "t1")
    done = TableOutcome(t1, TableStatus.VALIDATED)
    runs.set_plan("r1", [TableOutcome(t0, TableStatus.FAILED), done])
    assert reopen_failed_tables("r1", runs) == [t0]
    assert runs.get("r1").status == RunStatus.SWITCHING
    assert runs.pending("r1") == [t0]


def test_of_two_resumes_of_a_stalled_rotation_at_once_one_queues_its_batches() -> None:
    """A rotation run whose worker died mid-switch still reads switching. Two operators resume
    it at the same moment: both have read it when one writes first; the other is refused (exit
    2), so the run's pending objects are queued once, not as two copies of each batch."""
    ctx, _ = world()
    value = key_json("AKIAOLDOLDOLDOLD1OLD")
    ctx.secrets = FakeSecrets(values={"v": value}, stages={"v": ("AWSCURRENT",)})
    ctx.runs.create(RunRecord(run_id="r1", kind="rotation", secret=ctx.secrets.arn, version_id="v"))
    ctx.runs.update("r1", status="switching")
    write = ctx.runs.update_if

    def the_other_resume_writes_first(run_id: str, expected: dict, **fields: object) -> bool:
        ctx.runs.update_if = write  # type: ignore[method-assign]
        assert resume(ctx, "r1").followup is Followup.START_ROTATION  # it read, then wrote
        return write(run_id, expected, **fields)

    ctx.runs.update_if = the_other_resume_writes_first  # type: ignore[method-assign]
    with pytest.raises(FatalError, match="while it was being resumed: nothing resumed"):
        resume(ctx, "r1")
    assert ctx.runs.get("r1").status == RunStatus.SWITCHING
