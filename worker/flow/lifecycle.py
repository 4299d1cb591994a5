"""A run's life after it started: pause, resume, abort — one place decides each (a migration's
rollback: worker/flow/rollback.py).

The CLI, the Celery tasks and the rotation function call these; none of them decides anything of
its own. Each function returns what the caller must enqueue next (a ``Followup``), so this module
needs no Celery.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from worker.domain.bindings import Binding, find_binding
from worker.domain.errors import FatalError
from worker.domain.model import RunKind, RunStatus, TableOutcome
from worker.domain.ports import Fences, RunRecord, RunStore
from worker.domain.sql import object_label
from worker.flow import key_rotation
from worker.flow.fencing import PAUSE_WAIT_SECONDS, wait_idle
from worker.flow.key_rotation import KeyRotationContext, Phase
from worker.flow.runs import reopen_failed_tables, update_or_refuse


class Followup(StrEnum):
    """What the caller enqueues after a lifecycle call (for ``Resumed.run_id``)."""

    NOTHING = "nothing"
    START_ROTATION = "start_rotation"  # plan / re-enqueue a rotation run's pending tables
    ADVANCE_KEY_ROTATION = "advance_key_rotation"
    RETIRE_DUE = "retire_due"  # only the old key's retirement is left
    RELEASE_WAVE = "release_wave"  # a migration's current wave


@dataclass(frozen=True)
class Resumed:
    run_id: str
    followup: Followup
    reopened: list[str] = field(default_factory=list)


def resume(ctx: KeyRotationContext, run_id: str) -> Resumed:
    """Make a failed, stuck, paused or interrupted run go on (finished tables stay done)."""
    run = ctx.runs.get(run_id)
    if run.kind == RunKind.MIGRATION:
        _refuse_unresumable_migration(run)  # before any write, the stuck run's below too
    done = (RunStatus.SUCCEEDED, RunStatus.SKIPPED, RunStatus.SUPERSEDED)
    if run.kind == RunKind.ROTATION and not run.parent and run.status not in done:
        _refuse_behind_awscurrent(ctx, run)  # (a key rotation's table run: its parent decides)
    if run.status == RunStatus.STUCK:  # back to where the reaper found it (if still as read)
        back = run.stuck_from or RunStatus.QUEUED
        update_or_refuse(
            ctx.runs,
            run_id,
            {"status": RunStatus.STUCK, "data": run.data},
            "it was being resumed: nothing resumed",
            status=back,
            error=None,
        )
        run = ctx.runs.get(run_id)
    if run.kind == RunKind.MIGRATION:
        return _resume_migration(ctx.runs, run)
    if run.kind == RunKind.KEY_ROTATION:
        reopened = key_rotation.resume(ctx, run_id)
        run = ctx.runs.get(run_id)  # as it is now: another worker may have advanced it meanwhile
        phase = run.phase
        if phase == Phase.SWITCHING and run.data.get("table_run"):
            return Resumed(str(run.data["table_run"]), Followup.START_ROTATION, reopened)
        if phase == Phase.RETIRED:
            return Resumed(run_id, Followup.RETIRE_DUE)
        return Resumed(run_id, Followup.ADVANCE_KEY_ROTATION)
    if run.status in done:
        raise FatalError(f"run {run_id} is {run.status}: nothing to resume")
    reopened = [str(t) for t in reopen_failed_tables(run_id, ctx.runs)]
    now = ctx.runs.get(run_id)
    # back to switching if its planning gave up (else its status stays); either way only if
    # nothing was written since the read: of two resumes at once one queues the run's batches,
    # the other exits 2
    to = now.status if RunStatus(now.status).active else RunStatus.SWITCHING
    expected = {"status": now.status, "updated_at": now.updated_at}
    during = "it was being resumed: nothing resumed"
    update_or_refuse(ctx.runs, run_id, expected, during, status=to, error=None)
    return Resumed(run_id, Followup.START_ROTATION, reopened)


def _refuse_behind_awscurrent(ctx: KeyRotationContext, run: RunRecord) -> None:
    """A rotation run whose version AWSCURRENT has left, and which a run of the new AWSCURRENT
    follows (or which, event-driven, applies AWSCURRENT only), is not resumed: it would move
    objects behind the secret until that run moves them again."""
    try:
        current = ctx.secrets.describe(run.secret).version_with_stage("AWSCURRENT")
    except FatalError:
        return  # (a secret gone or unreadable: its run's own planning fails with the reason)
    if current in (None, run.version_id):
        return
    if run.newest_wins or ctx.runs.latest_run(RunKind.ROTATION, run.secret, current) is not None:
        raise FatalError(
            f"run {run.run_id} applies version {run.version_id}, but AWSCURRENT is version "
            f"{current} now, whose run switches the objects: nothing resumed"
        )


def _resume_migration(runs: RunStore, run: RunRecord) -> Resumed:
    """Judge the run's current wave again, its failed tables reopened; written only if the run
    is still as ``run`` (the read this decision was made on; ``resume`` has refused what may not
    be resumed)."""
    run_id = run.run_id
    wave = int(run.data["wave"])
    data = dict(run.data)
    data["epoch"] = int(data.get("epoch", 0)) + 1  # the wave may be judged again
    # only if nothing changed since the read: a rollback, a verdict or another resume landing
    # meanwhile is not overwritten (and no object is reopened for it)
    update_or_refuse(
        runs,
        run_id,
        {"status": run.status, "data": run.data},
        "it was being resumed: nothing resumed",
        status=RunStatus.SWITCHING,
        error=None,
        data=data,
    )
    in_wave = set(runs.wave(run_id, wave))
    reopened = []
    for outcome in runs.outcomes(run_id):
        if outcome.table in in_wave and outcome.status.failed:
            runs.record_pending(
                run_id,
                TableOutcome(table=outcome.table, rule=outcome.rule, previous=outcome.previous),
            )
            reopened.append(object_label(outcome.table))
    return Resumed(run_id, Followup.RELEASE_WAVE, reopened)


def _refuse_unresumable_migration(run: RunRecord) -> None:
    """A migration that succeeded, was rolled back or is being rolled back is not resumed (a
    wave released now would switch forward the objects being moved back)."""
    if run.status in (RunStatus.SUCCEEDED, RunStatus.ROLLED_BACK):
        raise FatalError(f"run {run.run_id} is {run.status}: nothing to resume")
    if run.data.get("rolling_back"):
        raise FatalError(
            f"run {run.run_id} is being rolled back: nothing resumed (run `rotator rollback"
            f" {run.run_id}` again to finish the rollback)"
        )


def pause(
    runs: RunStore,
    fences: Fences | None,
    run_id: str,
    *,
    busy_slots: Callable[[str], int] = lambda _run: 0,
    timeout: float = PAUSE_WAIT_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Pause a running migration; returns what is still in flight at ``timeout`` (empty: none).

    Paused first, so no table is admitted any more (a task waiting for a concurrency slot finds
    the run paused when it gets one, and leaves its table pending); then waits until every
    admitted table is recorded and every slot is given back."""
    run = runs.get(run_id)
    if run.kind != RunKind.MIGRATION or run.status != RunStatus.SWITCHING:
        raise FatalError(
            f"run {run_id} is a {run.status} {run.kind} run: only a running migration can be paused"
        )
    # (only if it is still switching: a run that ended meanwhile is not shown paused)
    if not runs.update_if(run_id, {"status": RunStatus.SWITCHING}, status=RunStatus.PAUSED):
        now = runs.get(run_id).status
        raise FatalError(f"run {run_id} is {now} now: only a running migration can be paused")
    return wait_idle(fences, run_id, busy_slots, timeout, sleep)


def abort(ctx: KeyRotationContext, run_id: str, bindings: list[Binding]) -> list[str]:
    """Undo an unfinished key rotation (see key_rotation.abort); returns tables switched back."""
    run = ctx.runs.get(run_id)
    if run.kind != RunKind.KEY_ROTATION:
        raise FatalError(f"run {run_id} is a {run.kind} run; only key rotations can be aborted")
    binding = find_binding(bindings, name=run.binding) if run.binding else None
    if binding is None:
        raise FatalError(f"binding {run.binding} of run {run_id} is no longer configured")
    return key_rotation.abort(ctx, run_id, binding)
