"""No run hangs silently: find runs without progress and re-enqueue them, or flag them ``stuck``.

A run makes progress whenever its record or one of its tables is written (``updated_at``). One that
has made none for ``stuck_after`` seconds — a lost message, a worker killed while the broker still
holds its task, planning that never got the lock — is handed back to the task that continues it
(every task is idempotent and fenced, so a duplicate changes nothing), at most ``MAX_REQUEUES``
times in a row; after that, or where re-enqueueing is not ours to do, it is marked ``stuck`` with
the reason, which ``rotator status`` shows and ``rotator resume`` clears.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.domain.errors import RunNotFound
from worker.domain.model import RunKind, RunStatus
from worker.domain.ports import Fences, RunRecord, RunStore
from worker.flow.key_rotation import Phase
from worker.flow.lifecycle import Followup

DEFAULT_STUCK_AFTER = 900.0
MAX_REQUEUES = 3


@dataclass(frozen=True)
class Reaped:
    run_id: str
    followup: Followup  # NOTHING when the run was marked stuck
    reason: str


def reap(
    runs: RunStore, fences: Fences | None, *, now: float, stuck_after: float = DEFAULT_STUCK_AFTER
) -> list[Reaped]:
    """Look at every unfinished run once; return what was re-enqueued or flagged."""
    reaped = []
    for run_id in runs.unfinished():
        try:
            run = runs.get(run_id)
        except RunNotFound:
            runs.forget_unfinished(run_id)  # expired or flushed
            continue
        quiet = now - (run.updated_at or run.created_at)  # stamped by the store on every write
        if not RunStatus(run.status).active or quiet < stuck_after:
            continue
        if fences is not None and fences.in_flight(run_id):
            continue  # a change is under way (slow, not lost): its lease bounds it
        result = _reap_one(runs, run, quiet, now)
        if result is not None:
            reaped.append(result)
    return reaped


def _reap_one(runs: RunStore, run: RunRecord, quiet: float, now: float) -> Reaped | None:
    decided = _followup(runs, run)
    if decided is None:
        return None
    followup, target, why = decided
    progressed = run.updated_at > run.requeued_at + 1
    requeues = 0 if progressed else run.requeues
    # written only if the run is still as read (a write stamps updated_at): one that moved
    # meanwhile — progress, a pause, an abort — is neither flagged nor re-enqueued
    seen = {"status": run.status, "updated_at": run.updated_at}
    if followup is Followup.NOTHING or requeues >= MAX_REQUEUES:
        why = why or f"re-enqueued {requeues} times without progress"
        reason = f"stuck: no progress for {quiet:.0f}s while {run.status} ({why})"
        stuck = {"status": RunStatus.STUCK, "error": reason, "stuck_from": str(run.status)}
        if not runs.update_if(run.run_id, seen, **stuck):
            return None
        return Reaped(run.run_id, Followup.NOTHING, reason)
    if not runs.update_if(run.run_id, seen, requeues=requeues + 1, requeued_at=now):
        return None
    return Reaped(target, followup, f"no progress for {quiet:.0f}s while {run.status}")


def _followup(runs: RunStore, run: RunRecord) -> tuple[Followup, str, str] | None:
    """(what continues this run, for which run id, why not when NOTHING); None when it waits on
    another run, which is looked at on its own."""
    if run.run_id.startswith("sm-"):
        why = "driven by Secrets Manager's rotation function, which retries its own steps"
        return Followup.NOTHING, run.run_id, why
    if run.kind == RunKind.MIGRATION:
        return Followup.RELEASE_WAVE, run.run_id, ""
    if run.kind != RunKind.KEY_ROTATION:
        return Followup.START_ROTATION, run.run_id, ""
    if run.phase == Phase.SWITCHING and run.data.get("table_run"):
        try:
            child = runs.get(str(run.data["table_run"]))
        except RunNotFound:
            return Followup.NOTHING, run.run_id, "its table run's record is gone"
        if RunStatus(child.status).active:
            return None
    return Followup.ADVANCE_KEY_ROTATION, run.run_id, ""
