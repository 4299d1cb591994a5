"""Rolling a migration back: the objects it switched go back to their previous connections.

One rollback at a time moves an object: each move back is an exclusive in-flight item
(``rollback:<object>``), so a second rollback of the same run started meanwhile (another
operator, a retry from another shell) waits for that object's move to end and then finds it
already back, instead of switching it a second time.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial

from worker.domain.errors import FatalError, RotatorError
from worker.domain.model import RunKind, RunStatus, TableOutcome, TableStatus
from worker.domain.ports import Admission, DatabendAdmin, Fences, RunRecord, RunStore
from worker.domain.sql import ObjectName, TableName, object_label
from worker.flow import objects as objects_
from worker.flow.fencing import PAUSE_WAIT_SECONDS, admit_on_fresh_labels, wait_idle
from worker.flow.migration import rollback_targets, switched_unrecorded
from worker.flow.rotation import RetryPolicy
from worker.flow.runs import update_or_refuse
from worker.flow.stale import LabelsView, check_on
from worker.flow.switch import rotate_object

BUSY_WAIT_SECONDS = 0.2  # between looks at an object another rollback is moving back


@dataclass
class RolledBack:
    moved: list[ObjectName] = field(default_factory=list)
    failed: list[tuple[ObjectName, str]] = field(default_factory=list)
    unknown: list[ObjectName] = field(default_factory=list)  # no connection for the old credentials
    unreachable: list[tuple[ObjectName, str]] = field(default_factory=list)  # probe failed
    # previous credentials a bound secret has moved away from: left where the migration put them
    behind: list[tuple[ObjectName, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.failed or self.unknown or self.unreachable or self.behind)


def rollback(
    runs: RunStore,
    admin: DatabendAdmin,
    fences: Fences | None,
    run_id: str,
    *,
    busy_slots: Callable[[str], int] = lambda _run: 0,
    concurrency: int = 8,
    timeout: float = PAUSE_WAIT_SECONDS,
    retry: RetryPolicy | None = None,
    per_table: Callable[[], AbstractContextManager[object]] = nullcontext,
    behind: LabelsView | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RolledBack:
    """Move the objects a migration switched back to their previous connection.

    The run is paused first and objects in flight are waited for (any still in flight at
    ``timeout``: nothing moves, run it again); each previous connection must list the buckets of
    its objects (a probe) before any object is moved onto it; every object moved is validated (a
    table read back, a stage listed, a database's bucket listed), each inside ``per_table()``
    (the CLI passes the table time limit). Right before each object moves, ``behind.check(its
    previous credentials)`` says why they must not be moved onto (a key a bound secret was
    rotated away from: worker/flow/stale.py), and then it stays where the migration put it. Each
    move back counts as in flight (``rollback:<object>``, with the labels epoch its check rests
    on) until it has ended: a key's retirement waits for one checked before the labels moved."""
    run = runs.get(run_id)
    if run.kind != RunKind.MIGRATION:
        raise FatalError(f"run {run_id} is a {run.kind} run; only migrations roll back")
    _start_rollback(runs, run)
    flying = wait_idle(fences, run_id, busy_slots, timeout, sleep)
    if flying:
        raise FatalError(
            f"run {run_id}: {len(flying)} change(s) still in flight after {timeout:g}s "
            f"({', '.join(flying[:3])}): nothing moved back; run `rotator rollback {run_id}` "
            "again once they have ended"
        )
    outcomes = switched_unrecorded(admin, runs.outcomes(run_id), str(run.target))
    back, unknown = rollback_targets(outcomes, run.data.get("previous_connections", {}))
    result = RolledBack(unknown=list(unknown))
    reachable = _probe_previous(admin, back, result)
    targets = [item for item in back if item[1] in reachable]

    undo = partial(
        _move_back,
        run_id=run_id,
        admin=admin,
        fences=fences,
        behind=behind,
        per_table=per_table,
        retry=retry,
        sleep=sleep,
    )
    caller = contextvars.copy_context()  # each move's audit row names the run, as the caller's
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for table, connection, outcome in pool.map(lambda t: caller.copy().run(undo, t), targets):
            _record_move(runs, run_id, result, table, connection, outcome)
    runs.update(
        run_id,
        status=RunStatus.ROLLED_BACK,
        error=None if result.complete else "some tables could not be moved back",
    )
    return result


def _record_move(
    runs: RunStore,
    run_id: str,
    result: RolledBack,
    table: ObjectName,
    connection: str,
    outcome: TableOutcome | str,
) -> None:
    """One object's move back counted in ``result``; a moved one recorded ROLLED_BACK."""
    if isinstance(outcome, str):  # why it stays where the migration put it
        result.behind.append((table, outcome))
    elif outcome.status.failed:
        result.failed.append((table, str(outcome.reason)))
    else:
        result.moved.append(table)
        runs.record_outcome(
            run_id,
            TableOutcome(
                table=table,
                status=TableStatus.ROLLED_BACK,
                rule=f"rolled back to {connection}",
                rows_read=outcome.rows_read,
                previous=outcome.previous,
            ),
        )


def _move_back(
    item: tuple[ObjectName, str, str],
    run_id: str,
    admin: DatabendAdmin,
    fences: Fences | None,
    behind: LabelsView | None,
    per_table: Callable[[], AbstractContextManager[object]],
    retry: RetryPolicy | None,
    sleep: Callable[[float], None],
) -> tuple[ObjectName, str, TableOutcome | str]:
    """One object moved back onto ``connection`` (its previous credentials, ``fingerprint``):
    admitted on fresh labels, in flight until it has ended. The outcome, or why it stays.

    While another rollback is moving it (BUSY), wait: its entry ends with that move (or within
    seconds of that process dying), and the switch then looks at the object first, so one the
    other moved back is left as it is (ALREADY_SWITCHED) rather than switched again."""
    table, connection, fingerprint = item
    label = f"rollback:{object_label(table)}"

    def check(labels_moved: bool) -> int | None:
        why_not, epoch = check_on(behind, fingerprint, labels_moved)
        if why_not is not None:
            raise _Behind(f"its previous credentials: {why_not}; left as it is")
        return epoch

    def enter(epoch: int | None) -> Admission:
        if fences is None:
            return Admission.ADMITTED
        while True:
            verdict = fences.enter(
                run_id, label, require_active=False, labels_epoch=epoch, exclusive=True
            )
            if verdict is not Admission.BUSY:
                return verdict
            sleep(BUSY_WAIT_SECONDS)

    try:
        verdict = admit_on_fresh_labels(check, enter, object_label(table))
    except _Behind as exc:
        return table, connection, str(exc)
    if verdict is not Admission.ADMITTED:
        raise FatalError(f"run {run_id} is gone ({verdict}): nothing more moved back")
    try:
        with per_table():
            outcome = rotate_object(
                admin, table, connection=connection, target=fingerprint, retry=retry
            )
    finally:
        if fences is not None:
            fences.leave(run_id, label)
    return table, connection, outcome


class _Behind(Exception):
    """An object's previous credentials are a key rotated away from: it stays (the reason)."""


def _start_rollback(runs: RunStore, run: RunRecord) -> None:
    """Mark the run as rolling back before any object moves, only if it is still as read. From
    then on no table is admitted (a switching run is paused first) and ``rotator resume`` refuses
    it, so no wave can switch objects forward while they are moved back. A rollback that stops
    halfway leaves the mark: running rollback again finishes it."""
    if run.data.get("rolling_back") and run.status != RunStatus.SWITCHING:
        return  # an earlier rollback started it
    status = RunStatus.PAUSED if run.status == RunStatus.SWITCHING else run.status
    update_or_refuse(
        runs,
        run.run_id,
        {"status": run.status, "data": run.data},
        "the rollback started: nothing moved back; try again",
        status=status,
        data={**run.data, "rolling_back": True},
    )


def _probe_previous(
    admin: DatabendAdmin, back: list[tuple[ObjectName, str, str]], result: RolledBack
) -> set[str]:
    """The previous connections that can list every bucket of the objects going back to them."""
    every_kind = any(not isinstance(name, TableName) for name, _, _ in back)
    listed = objects_.list_all(admin) if every_kind else list(admin.list_external_tables())
    buckets: dict[ObjectName, str | None] = {t.name: t.storage.bucket for t in listed}
    by_connection: dict[str, set[str]] = {}
    for table, connection, _ in back:
        bucket = buckets.get(table)
        by_connection.setdefault(connection, set()).update([bucket] if bucket else [])
    reachable = set()
    for connection, needed in by_connection.items():
        try:
            for bucket in sorted(needed):
                admin.probe_connection(connection, bucket)
        except RotatorError as exc:
            result.unreachable += [
                (t, f"connection {connection} cannot list its bucket: {exc}")
                for t, c, _ in back
                if c == connection
            ]
            continue
        reachable.add(connection)
    return reachable
