"""Switch one planned object of a run and record its outcome (fenced; safe to run twice)."""

from __future__ import annotations

from dataclasses import dataclass

from worker.domain.model import RunStatus, TableOutcome, TableStatus
from worker.domain.ports import Admission, DatabendAdmin, Fences, RunRecord, RunStore, SecretLocks
from worker.domain.sql import ObjectName, object_label
from worker.flow.fencing import DEFAULT_LEASE_SECONDS, admitted
from worker.flow.rotation import RetryPolicy, rotate_object
from worker.flow.runs.close import close_run, finish_table, lock_owner


@dataclass(frozen=True)
class Switched:
    outcome: TableOutcome
    closed: bool  # this table closed the run
    wave_complete: bool = False  # (migrations) this table completed its wave


def switch_and_record(
    run_id: str,
    table: ObjectName,
    *,
    runs: RunStore,
    admin: DatabendAdmin,
    locks: SecretLocks | None = None,
    retry: RetryPolicy | None = None,
    run: RunRecord | None = None,
    wave: tuple[int, int] | None = None,
    fences: Fences | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> Switched | None:
    """Switch one planned object (a table, a stage or a database default) of a run and record the
    outcome.

    Returns None when the object is not in the run, already finished (redelivery), or its run no
    longer admits changes (ended or paused). Late work of a run that a newer run of the secret
    superseded records the table ``superseded`` and changes nothing. A RetryableError that
    outlives the step's retries propagates to the caller. The attempt is written down before the
    ALTER: a first attempt trusts the plan's view of the table, a later one (after a crash or an
    error) looks at the table before acting. ``wave`` = (index, epoch) for a migration's table.
    """
    run = run or runs.get(run_id)
    if RunStatus(run.status).final:
        return None
    planned = runs.begin_attempt(run_id, table)
    if planned is None or planned.status.done:
        return None
    if locks is not None:
        locks.renew(run.secret, lock_owner(run))
    with admitted(fences, run, fence_item(table), lease_seconds=lease_seconds) as verdict:
        if verdict is Admission.SUPERSEDED:
            outcome = TableOutcome(
                table=table,
                status=TableStatus.SUPERSEDED,
                rule=planned.rule,
                reason="a newer run of the same secret took over; left untouched",
                previous=planned.previous,
                attempts=planned.attempts,
            )
        elif verdict is not Admission.ADMITTED:
            return None
        else:
            first_attempt = planned.attempts == 1 and planned.previous is not None
            revert = run.data.get("revert") or {}
            outcome = rotate_object(
                admin,
                table,
                connection=str(run.connection),
                target=str(run.target),
                may_skip_switched=run.may_skip_switched,
                retry=retry,
                known_current=planned.previous if first_attempt else None,
                revert_to=(revert["connection"], revert["target"]) if revert else None,
            )
            outcome.rule = planned.rule
            outcome.previous = outcome.previous or planned.previous
            outcome.attempts = planned.attempts
        if wave is None:
            return Switched(outcome, finish_table(run_id, outcome, runs=runs, locks=locks))
        remaining, finished, size = runs.record_wave_outcome(run_id, outcome, *wave)
    closed = close_run(run_id, runs, locks) if remaining == 0 else False
    return Switched(outcome, closed, wave_complete=not closed and finished >= size)


def fence_item(name: ObjectName) -> str:
    """What an object's change is registered as while in flight: ``db.table`` for a table (as
    always), ``stage s`` / ``database d`` for the other kinds."""
    return object_label(name)
