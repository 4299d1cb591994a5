"""The end of a run: record an object's outcome, close the run when the last one is in (releasing
the secret's lock), give up on a run whose planning ran out of retries, reopen failed objects."""

from __future__ import annotations

from typing import Any

from worker.domain.errors import FatalError
from worker.domain.model import RunStatus, TableOutcome, TableStatus
from worker.domain.ports import RunRecord, RunStore, SecretLocks
from worker.domain.sql import ObjectName, TableName
from worker.flow.switch import MOVED_MEANWHILE


def finish_table(
    run_id: str, outcome: TableOutcome, *, runs: RunStore, locks: SecretLocks | None = None
) -> bool:
    """Record an object's outcome; True when this closed the run."""
    remaining = runs.record_outcome(run_id, outcome)
    if remaining == 0:
        return close_run(run_id, runs, locks)
    return False


def close_run(run_id: str, runs: RunStore, locks: SecretLocks | None = None) -> bool:
    """The last outcome is in: ``failed`` when an object failed, ``superseded`` when a newer run
    of the secret took some over (they were left untouched), else ``succeeded``."""
    run = runs.get(run_id)
    if RunStatus(run.status).final:
        return False
    status, error = _verdict(runs, run_id)
    if not runs.update_unless_final(run_id, status=status, error=error):
        return False  # ended meanwhile (an abort, a newer run): that status stands
    release(locks, run)
    return True


def _verdict(runs: RunStore, run_id: str) -> tuple[RunStatus, str | None]:
    """The closing run's status and error. When its per-status counts show no object failed or
    superseded, it succeeded without reading a single outcome (a run of 10,000 objects used to
    decode them all here); otherwise the outcomes give the message."""
    counts = runs.status_counts(run_id)
    if counts is not None and not any(_failed_or_left(status) for status in counts):
        return RunStatus.SUCCEEDED, None
    outcomes = runs.outcomes(run_id)
    failed = [o for o in outcomes if o.status.failed]
    # (an object a migration moved since the plan is not this run's any more: not left undone)
    left = [
        o for o in outcomes if o.status is TableStatus.SUPERSEDED and o.reason != MOVED_MEANWHILE
    ]
    of = f"of {len(outcomes)} {_objects_word(outcomes)}"
    if failed:
        return RunStatus.FAILED, f"{len(failed)} {of} failed"
    if left:
        return RunStatus.SUPERSEDED, f"{len(left)} {of} left to a newer run of the same secret"
    return RunStatus.SUCCEEDED, None


def _failed_or_left(status: str) -> bool:
    """A count under an unknown status name is treated like a failure: the outcomes decide."""
    try:
        known = TableStatus(status)
    except ValueError:
        return True
    return known.failed or known is TableStatus.SUPERSEDED


def give_up(run_id: str, reason: str, *, runs: RunStore, locks: SecretLocks | None) -> None:
    """A run whose planning ran out of retries ends ``failed`` with the reason (resumable)."""
    run = runs.get(run_id)
    if not runs.update_unless_final(run_id, status=RunStatus.FAILED, error=reason):
        return
    release(locks, run)


def _objects_word(outcomes: list[TableOutcome]) -> str:
    """'tables' while a run holds only tables (as its messages always said), else 'objects'."""
    return "tables" if all(isinstance(o.table, TableName) for o in outcomes) else "objects"


def reopen_failed_tables(run_id: str, runs: RunStore) -> list[ObjectName]:
    """Put a run's failed objects back to pending (for ``rotator resume``); returns them. The
    run goes back to switching only if its status is still the one read before they were
    reopened (an abort or a newer run landing meanwhile is not undone)."""
    failed = [o for o in runs.outcomes(run_id) if o.status.failed]
    if not failed:
        return []
    status = runs.get(run_id).status
    for outcome in failed:
        runs.record_pending(
            run_id, TableOutcome(table=outcome.table, rule=outcome.rule, previous=outcome.previous)
        )
    resume_switching(run_id, runs, status)
    return [o.table for o in failed]


def resume_switching(run_id: str, runs: RunStore, was: str, since: float | None = None) -> None:
    """A resumed run back to switching, only if its status is still ``was`` (as read before the
    decision): an abort or a newer run landing meanwhile is not undone, and resume says so.
    With ``since`` (the run's updated_at as read), only if nothing at all was written since:
    of two resumes of one run at the same moment, one goes on and the other is refused."""
    update_or_refuse(
        runs,
        run_id,
        {"status": was} if since is None else {"status": was, "updated_at": since},
        "it was being resumed: nothing resumed",
        status=RunStatus.SWITCHING,
        error=None,
    )


def update_or_refuse(
    runs: RunStore, run_id: str, expected: dict[str, Any], during: str, **fields: Any
) -> None:
    """An operator's write that holds only if the run is still as read (``expected``); when
    something else changed it meanwhile, nothing is written and the command is refused, naming
    what the run became."""
    if not runs.update_if(run_id, expected, **fields):
        now = runs.get(run_id).status
        what = f"became {now}" if now != expected.get("status") else f"changed (still {now})"
        raise FatalError(f"run {run_id} {what} while {during}")


def lock_owner(run: RunRecord) -> str:
    """A key rotation's table run works under its parent's lock."""
    return run.parent or run.run_id


def release(locks: SecretLocks | None, run: RunRecord) -> None:
    if locks is not None and run.parent is None:
        locks.release(run.secret, run.run_id)
