"""A migration's waves as the workers run them: release the current wave in batches, switch a
batch under the run's shared limits, judge a complete wave and go on to the next.

worker/runtime/jobs.py wires these to the services, sends the batches they return and logs what
they decided; the chaos suite (tests/chaos.py) drives the very same functions over its faulty
world. The rules of a wave (its verdict, the conditional write acting on it) live in
migration.py; this module is the order in which workers apply them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from worker.domain.errors import MigrationRefused
from worker.domain.model import RunStatus, TableOutcome
from worker.domain.ports import DatabendAdmin, Fences, Limits, RunStore
from worker.domain.sql import ObjectName
from worker.flow.fencing import DEFAULT_LEASE_SECONDS
from worker.flow.migration import (
    WaveDecision,
    WaveVerdict,
    conclude_wave,
    finished_in_wave,
    judge_wave,
)
from worker.flow.rotation import RetryPolicy
from worker.flow.runs.switch import BatchResult, give_up_objects, split_batches, switch_batch
from worker.flow.stale import LabelsView, check_on


@dataclass(frozen=True)
class Judged:
    """A complete wave's verdict, and what was done with it."""

    wave: int
    verdict: WaveVerdict
    decision: WaveDecision


@dataclass
class Release:
    """What releasing a run's current wave came to: the batches to send for ``wave`` (none when
    it had nothing left), and the verdicts on the waves found complete on the way (each one
    that let the run go on released the next wave at once: no task hop between waves)."""

    wave: int
    batches: list[list[ObjectName]] = field(default_factory=list)
    judged: list[Judged] = field(default_factory=list)


def release_wave(runs: RunStore, run_id: str) -> Release | None:
    """The current wave's unfinished objects cut into batches, one per slot of the run's
    ``--concurrency`` (again after a pause or a crash: finished objects are counted for this
    epoch and not sent). None when the run is not switching (paused, halted or over)."""
    judged: list[Judged] = []
    wave = 0
    while True:
        run = runs.get(run_id)
        if run.status != RunStatus.SWITCHING:
            return Release(wave, judged=judged) if judged else None
        wave, epoch = int(run.data["wave"]), int(run.data.get("epoch", 0))
        outcomes = runs.outcomes_for(run_id, runs.wave(run_id, wave))
        for outcome in outcomes:  # finished before a pause or crash: counted for this epoch
            if outcome.status.done:
                runs.wave_finished(run_id, wave, outcome.table, epoch)
        todo = [o.table for o in outcomes if not o.status.done]
        if todo:
            concurrency = int(run.data["options"]["concurrency"])
            return Release(wave, split_batches(todo, concurrency), judged)
        verdict = judge(runs, run_id, wave)
        if verdict is not None:
            judged.append(verdict)
        if verdict is None or verdict.decision is not WaveDecision.NEXT_WAVE:
            return Release(wave, judged=judged)


def judge(runs: RunStore, run_id: str, wave: int) -> Judged | None:
    """Judge ``wave`` if it is the run's current one and complete: halt on too many failures,
    else make the next wave current. None when there was nothing to judge.

    Any number of workers may judge the same wave at once (each batch that completes it, a
    redelivered one, the reaper's release): ``conclude_wave`` writes only if the run is still
    as read, so exactly one of them acts and the others find RUN_CHANGED. A worker that dies
    before writing leaves the wave to the next judge (no one-shot claim to lose)."""
    run = runs.get(run_id)
    if run.status != RunStatus.SWITCHING or int(run.data["wave"]) != wave:
        return None
    outcomes = runs.outcomes_for(run_id, runs.wave(run_id, wave))
    verdict = judge_wave(outcomes, float(run.data["options"]["max_error_rate"]))
    if not verdict.complete:
        return None
    return Judged(wave, verdict, conclude_wave(runs, run, wave, verdict))


@dataclass
class WaveBatch:
    """What one delivery of a migration batch did: its objects' result (None when the run was
    not switching or has ended), and whether its wave was found complete (then judge it)."""

    result: BatchResult | None
    wave_complete: bool = False


def migration_batch(
    run_id: str,
    wave: int,
    names: list[ObjectName],
    *,
    runs: RunStore,
    admin: DatabendAdmin,
    fences: Fences | None,
    limits: Limits,
    retry: RetryPolicy | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    each: Callable[[TableOutcome], AbstractContextManager[None]] | None = None,
    on_outcome: Callable[[TableOutcome, float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    behind: LabelsView | None = None,
) -> WaveBatch:
    """Switch a batch of ``wave`` under the run's shared limits: one concurrency slot for the
    batch (its objects go one after another), the shared rate per object.

    Right before each object's admission, ``behind.check(the target's fingerprint)``: once the
    target's key is one its bound secret has been rotated away from (worker/flow/stale.py), the
    batch switches nothing more and raises MigrationRefused with the reason (the outcomes so far
    are written): the task's gave_up hook records the rest failed with it, so the wave halts for
    the operator. The admission carries the labels epoch the check rests on; when the labels
    moved since, ``behind`` forgets what it read and the object is checked again."""
    run = runs.get(run_id)
    if run.status != RunStatus.SWITCHING:
        return WaveBatch(None)  # paused, halted or over: the objects stay pending for resume
    options, epoch = run.data["options"], int(run.data.get("epoch", 0))
    before_each = _before_each(run_id, run.target, options.get("rate"), limits, behind)
    with limits.slot(run_id, int(options["concurrency"])):
        result = switch_batch(
            run_id,
            names,
            runs=runs,
            admin=admin,
            fences=fences,
            retry=retry,
            run=run,
            wave=(wave, epoch),
            lease_seconds=lease_seconds,
            before_each=before_each,
            each=each,
            on_outcome=on_outcome,
            clock=clock,
        )
    if result is None:
        return WaveBatch(None)
    # finished already, maybe by a redelivered copy that counted it in an older epoch: count it
    # in this one too, or the resumed wave would never be judged complete
    counted = [finished_in_wave(runs, run_id, n, wave, epoch) for n in result.finished_before]
    return WaveBatch(result, result.wave_complete or any(counted))


def _before_each(
    run_id: str, target: str | None, rate: float | None, limits: Limits, behind: LabelsView | None
) -> Callable[[bool], int | None]:
    """What runs right before each object's admission: the run's shared rate (once per object,
    not again when the labels moved meanwhile), then the target's check; returns the labels
    epoch that check rests on."""

    def before_each(labels_moved: bool) -> int | None:
        if rate and not labels_moved:
            limits.pace(run_id, rate)
        why_not, labels_epoch = check_on(behind, target, labels_moved)
        if why_not is not None:
            raise MigrationRefused(f"not switched: the target connection's credentials {why_not}")
        return labels_epoch

    return before_each


def give_up_batch(
    runs: RunStore, run_id: str, wave: int, names: list[ObjectName], reason: str
) -> BatchResult:
    """A batch out of retries or stopped by a fatal error (its task's gave_up hook): its
    unfinished objects recorded failed with ``reason``, counted in the wave's current epoch
    (``wave_complete``: then judge the wave)."""
    epoch = int(runs.get(run_id).data.get("epoch", 0))
    return give_up_objects(run_id, names, reason, runs=runs, wave=(wave, epoch))
