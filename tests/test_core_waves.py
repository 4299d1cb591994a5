"""A migration's waves as workers run them (worker/flow/waves.py), step by step over in-memory
fakes: release in batches, switch a batch under the run's slots, judge a complete wave — also
when judges race or die."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.fakes import FakeAdmin, MemoryFences, MemoryLimits, MemoryRuns, fake_key
from worker.domain.errors import DatabendQueryError, LabelsMoving, SlotTimeout
from worker.domain.model import AccessKeyCredentials, RunStatus, TableStatus
from worker.domain.sql import TableName
from worker.flow import waves
from worker.flow.migration import (
    MigrationOptions,
    MigrationRefused,
    WaveDecision,
    new_migration,
    plan_migration,
)
from worker.flow.rotation import RetryPolicy
from worker.flow.runs import give_up_objects


class Died(BaseException):
    """A worker killed between two calls."""


class _Says:
    """A view of the labels that answers ``behind(target)`` and rests on no labels epoch."""

    def __init__(self, behind: Callable[[str | None], str | None]) -> None:
        self.behind = behind

    def check(self, fingerprint: str | None) -> tuple[str | None, int | None]:
        return self.behind(fingerprint), None

    def stale(self) -> None:
        pass


def _lake(tables: int) -> FakeAdmin:
    admin = FakeAdmin()
    admin.connections["dst"] = AccessKeyCredentials(fake_key("DST"), "dst-secret")
    for i in range(tables):
        admin.add(TableName("db", f"t{i}"), "OLD")
    return admin


def _migration(admin: FakeAdmin, runs: MemoryRuns, **options: Any) -> str:
    chosen = MigrationOptions(**{"canary": 1, "wave_size": 2, "concurrency": 2, **options})
    plan = plan_migration(
        admin,
        target="dst",
        from_connection=None,
        selectors=(),
        options=chosen,
        connection_fingerprints={"dst": str(admin.connection_fingerprint("dst"))},
    )
    return new_migration(runs, plan, chosen, "test")


def _batch(run_id: str, wave: int, names: list[TableName], runs: MemoryRuns, admin: FakeAdmin,
           limits: MemoryLimits | None = None) -> waves.WaveBatch:  # fmt: skip
    no_wait = RetryPolicy(attempts=1, initial_wait=0, max_wait=0, sleep=lambda _s: None)
    return waves.migration_batch(
        run_id, wave, names, runs=runs, admin=admin, fences=None,
        limits=limits or MemoryLimits(), retry=no_wait,
    )  # fmt: skip


def test_a_wave_is_released_in_one_batch_per_slot_without_its_finished_objects() -> None:
    admin, runs = _lake(7), MemoryRuns()
    run_id = _migration(admin, runs, canary=0, wave_size=5, concurrency=2)
    first = waves.release_wave(runs, run_id)
    assert first is not None and first.wave == 0
    assert [len(b) for b in first.batches] == [3, 2] and not first.judged
    _batch(run_id, 0, first.batches[0], runs, admin)  # 3 of the wave's 5 done, then a crash
    again = waves.release_wave(runs, run_id)
    assert again is not None and again.batches == [[b] for b in first.batches[1]]


def test_a_wave_with_nothing_left_is_judged_and_the_next_released_in_the_same_call() -> None:
    admin, runs = _lake(3), MemoryRuns()
    run_id = _migration(admin, runs)  # waves: [t0], [t1, t2]
    canary = waves.release_wave(runs, run_id)
    assert canary is not None
    done = _batch(run_id, 0, canary.batches[0], runs, admin)
    assert done.wave_complete  # the batch that completes the wave says so: its task judges
    # a redelivered release of the canary finds it complete: judged, wave 1 sent at once
    release = waves.release_wave(runs, run_id)
    assert release is not None and release.wave == 1
    assert [(j.wave, j.decision) for j in release.judged] == [(0, WaveDecision.NEXT_WAVE)]
    assert sorted(n for b in release.batches for n in b) == [TableName("db", "t1"),
                                                             TableName("db", "t2")]  # fmt: skip


def test_of_judges_racing_on_one_wave_exactly_one_acts() -> None:
    """Step by step: judge A has read the run and the wave's outcomes; judge B (another batch of
    the wave, or the reaper's release) judges it meanwhile and moves the run to wave 1. A's
    verdict then finds the run changed: the next wave is released once, never twice."""
    admin, runs = _lake(3), MemoryRuns()
    run_id = _migration(admin, runs)
    _batch(run_id, 0, [TableName("db", "t0")], runs, admin)
    acted: list[Any] = []
    outcomes_for = runs.outcomes_for

    def b_lands_meanwhile(rid: str, names: list[Any]) -> list[Any]:
        seen = outcomes_for(rid, names)
        if not acted:
            acted.append(None)
            acted[0] = waves.judge(runs, run_id, 0)  # B, complete, between A's read and write
        return seen

    runs.outcomes_for = b_lands_meanwhile  # type: ignore[method-assign]
    a = waves.judge(runs, run_id, 0)
    assert acted[0] is not None and acted[0].decision is WaveDecision.NEXT_WAVE
    assert a is not None and a.decision is WaveDecision.RUN_CHANGED
    assert runs.get(run_id).data["wave"] == 1


def test_a_judge_that_dies_before_its_write_leaves_the_wave_to_the_next_judge() -> None:
    """A worker killed after taking the wave's verdict but before writing it: the next judge (a
    redelivered batch, the reaper's release) still acts on it. A one-shot claim per wave, taken
    before the write, left such a run waiting for a human to resume it."""
    admin, runs = _lake(3), MemoryRuns()
    run_id = _migration(admin, runs)
    _batch(run_id, 0, [TableName("db", "t0")], runs, admin)
    update_if = runs.update_if

    def die(*_args: Any, **_fields: Any) -> bool:
        raise Died

    runs.update_if = die  # type: ignore[method-assign]
    with pytest.raises(Died):
        waves.judge(runs, run_id, 0)
    runs.update_if = update_if  # type: ignore[method-assign]
    release = waves.release_wave(runs, run_id)
    assert release is not None and release.wave == 1 and release.batches


def test_a_wave_over_the_error_limit_halts_and_releases_nothing() -> None:
    admin, runs = _lake(3), MemoryRuns()
    run_id = _migration(admin, runs)
    admin.switch_failures[TableName("db", "t0")] = [DatabendQueryError(1025, "Unknown table")]
    _batch(run_id, 0, [TableName("db", "t0")], runs, admin)
    release = waves.release_wave(runs, run_id)
    assert release is not None and release.batches == []
    assert [j.decision for j in release.judged] == [WaveDecision.HALTED]
    assert runs.get(run_id).status == RunStatus.HALTED
    assert waves.release_wave(runs, run_id) is None  # halted: nothing more is sent


@pytest.mark.parametrize("status", [RunStatus.PAUSED, RunStatus.HALTED, RunStatus.SUCCEEDED])
def test_a_batch_of_a_run_not_switching_changes_nothing(status: RunStatus) -> None:
    admin, runs = _lake(3), MemoryRuns()
    run_id = _migration(admin, runs)
    runs.update(run_id, status=status)
    done = _batch(run_id, 0, [TableName("db", "t0")], runs, admin)
    assert done.result is None and not admin.statements
    assert waves.release_wave(runs, run_id) is None


def test_a_batch_takes_one_of_the_runs_slots_and_none_free_switches_nothing() -> None:
    admin, runs, limits = _lake(3), MemoryRuns(), MemoryLimits()
    run_id = _migration(admin, runs, concurrency=1, rate=5.0)
    with limits.slot(run_id, 1), pytest.raises(SlotTimeout):
        _batch(run_id, 0, [TableName("db", "t0")], runs, admin, limits)
    assert not admin.statements
    done = _batch(run_id, 0, [TableName("db", "t0")], runs, admin, limits)
    assert done.result is not None and [o.status for o in done.result.outcomes] == [
        TableStatus.VALIDATED
    ]
    assert limits.paced == [(run_id, 5.0)] and limits.busy_slots(run_id) == 0


def test_a_batch_whose_target_was_rotated_away_since_planning_switches_nothing() -> None:
    """The migration was planned onto a connection whose key was then current; by the time a
    batch runs, the secret has been rotated away from it (``behind`` says why): the batch
    switches nothing and raises the reason; the task's gave_up hook (give_up_objects, as
    jobs.migration_gave_up does) fails its objects with it, and the wave halts."""
    admin, runs = _lake(4), MemoryRuns()
    run_id = _migration(admin, runs, canary=0, wave_size=3)  # waves [t0, t1, t2], [t3]
    seen: list[str | None] = []

    def behind(target: str | None) -> str | None:
        seen.append(target)
        return "ak ******DST may be a key secret s has been rotated away from"

    batch = [TableName("db", f"t{i}") for i in range(3)]
    with pytest.raises(MigrationRefused, match=r"not switched: .* ak \*{6}DST may be") as refused:
        waves.migration_batch(
            run_id, 0, batch, runs=runs, admin=admin, fences=None, limits=MemoryLimits(),
            behind=_Says(behind),
        )  # fmt: skip
    assert not admin.statements and seen == [runs.get(run_id).target]
    given_up = give_up_objects(run_id, batch, str(refused.value), runs=runs, wave=(0, 0))
    assert [o.status for o in given_up.outcomes] == [TableStatus.FAILED] * 3
    assert given_up.wave_complete
    judged = waves.judge(runs, run_id, 0)
    assert judged is not None and judged.decision is WaveDecision.HALTED
    assert admin.keys[TableName("db", "t3")] == fake_key("OLD")  # the next wave: untouched


def test_a_target_rotated_away_from_mid_batch_stops_the_batch_at_its_next_object() -> None:
    """The secret moves on while a batch runs: the objects switched before are recorded, the
    next one is not switched."""
    admin, runs = _lake(3), MemoryRuns()
    run_id = _migration(admin, runs, canary=0, wave_size=3)
    answers = iter([None, "ak ******DST may be a key secret s has been rotated away from"])
    batch = [TableName("db", f"t{i}") for i in range(3)]
    with pytest.raises(MigrationRefused):
        waves.migration_batch(
            run_id, 0, batch, runs=runs, admin=admin, fences=None, limits=MemoryLimits(),
            behind=_Says(lambda _target: next(answers)),
        )  # fmt: skip
    assert [o.status for o in runs.outcomes(run_id)] == [
        TableStatus.VALIDATED,
        TableStatus.PENDING,
        TableStatus.PENDING,
    ]
    assert admin.keys[batch[1]] == fake_key("OLD") and admin.keys[batch[0]] == fake_key("DST")


def test_a_migration_onto_a_key_rotated_away_from_is_refused_when_planned() -> None:
    admin, runs = _lake(2), MemoryRuns()
    options = MigrationOptions()
    plan = plan_migration(
        admin,
        target="dst",
        from_connection=None,
        selectors=(),
        options=options,
        connection_fingerprints={"dst": str(admin.connection_fingerprint("dst"))},
        behind=lambda target: f"{target} may be a key secret s has been rotated away from",
    )
    with pytest.raises(MigrationRefused, match=r"target connection dst: ak:.* rotated away"):
        new_migration(runs, plan, options, "test")
    assert runs.runs == {}


def test_a_batch_whose_labels_keep_moving_under_each_check_is_tried_again_later() -> None:
    """Each admission finds the labels moved since the target was checked: the object is
    checked again on fresh labels, a few times, then the batch raises a RetryableError (the
    task tries it later); nothing was switched."""
    admin, runs = _lake(2), MemoryRuns()
    run_id = _migration(admin, runs, canary=0, wave_size=2)
    fences = MemoryFences(runs)
    checks: list[str] = []

    class Moving:
        def check(self, fingerprint: str | None) -> tuple[str | None, int | None]:
            checks.append("check")
            fences.labels_moved()  # (a rotation moves them right after each read)
            return None, fences.epoch - 1

        def stale(self) -> None:
            checks.append("stale")

    with pytest.raises(LabelsMoving):
        waves.migration_batch(
            run_id, 0, [TableName("db", "t0"), TableName("db", "t1")], runs=runs, admin=admin,
            fences=fences, limits=MemoryLimits(), behind=Moving(),
        )  # fmt: skip
    assert checks == ["check", "stale", "check", "stale", "check"]
    assert not admin.statements and fences.in_flight(run_id) == []
