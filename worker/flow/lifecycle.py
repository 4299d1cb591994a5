"""A run's life after it started: pause, resume, abort, rollback — one place decides each.

The CLI, the Celery tasks and the rotation function call these; none of them decides anything of
its own. Each function returns what the caller must enqueue next (a ``Followup``), so this module
needs no Celery.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial

from worker.domain.bindings import Binding, find_binding
from worker.domain.errors import FatalError, RotatorError
from worker.domain.model import RunKind, RunStatus, TableOutcome, TableStatus
from worker.domain.ports import Admission, DatabendAdmin, Fences, RunRecord, RunStore
from worker.domain.sql import ObjectName, TableName, object_label
from worker.flow import key_rotation
from worker.flow import objects as objects_
from worker.flow.fencing import admit_on_fresh_labels, wait_until_idle
from worker.flow.key_rotation import KeyRotationContext, Phase
from worker.flow.migration import rollback_targets, switched_unrecorded
from worker.flow.rotation import RetryPolicy
from worker.flow.runs import reopen_failed_tables, resume_switching, update_or_refuse
from worker.flow.stale import LabelsView, check_on
from worker.flow.switch import rotate_object

PAUSE_WAIT_SECONDS = 120.0


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
    status = ctx.runs.get(run_id).status
    if not RunStatus(status).active:  # e.g. its planning gave up: no object was reopened
        resume_switching(run_id, ctx.runs, status)
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
    return _wait_idle(fences, run_id, busy_slots, timeout, sleep)


def _wait_idle(
    fences: Fences | None,
    run_id: str,
    busy_slots: Callable[[str], int],
    timeout: float,
    sleep: Callable[[float], None],
) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        flying = wait_until_idle(fences, [run_id], timeout=0, sleep=sleep)
        slots = busy_slots(run_id)
        if not flying and not slots:
            return []
        if time.monotonic() >= deadline:
            return flying + [f"{slots} concurrency slot(s)"] * bool(slots)
        sleep(0.2)


def abort(ctx: KeyRotationContext, run_id: str, bindings: list[Binding]) -> list[str]:
    """Undo an unfinished key rotation (see key_rotation.abort); returns tables switched back."""
    run = ctx.runs.get(run_id)
    if run.kind != RunKind.KEY_ROTATION:
        raise FatalError(f"run {run_id} is a {run.kind} run; only key rotations can be aborted")
    binding = find_binding(bindings, name=run.binding) if run.binding else None
    if binding is None:
        raise FatalError(f"binding {run.binding} of run {run_id} is no longer configured")
    return key_rotation.abort(ctx, run_id, binding)


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
    flying = _wait_idle(fences, run_id, busy_slots, timeout, time.sleep)
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
) -> tuple[ObjectName, str, TableOutcome | str]:
    """One object moved back onto ``connection`` (its previous credentials, ``fingerprint``):
    admitted on fresh labels, in flight until it has ended. The outcome, or why it stays."""
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
        return fences.enter(run_id, label, require_active=False, labels_epoch=epoch)

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
