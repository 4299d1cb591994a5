"""What each task does, with the process's services bound: plan a rotation, switch a batch of a
run's objects, release and judge a migration's waves, retire due keys, reconcile, and record what
a task gave up on.

The decisions live in worker/flow (runs/, migration.py, key_rotation.py, reconcile.py); this
module wires them to the services (the table time limit, the shared limits), the metrics and the
next messages. Messages are sent by task name, so nothing here imports tasks/.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from worker.domain.errors import RunNotFound
from worker.domain.model import RunKind, TableOutcome
from worker.domain.sql import ObjectName, object_label, object_ref
from worker.flow import waves
from worker.flow.inventory import take_inventory
from worker.flow.migration import WaveDecision
from worker.flow.reconcile import BindingReport, find_drift, queue_fix
from worker.flow.retire import retire_due
from worker.flow.rotation import RetryPolicy
from worker.flow.runs import (
    BatchResult,
    give_up,
    give_up_objects,
    prepare_rotation,
    split_batches,
    switch_batch,
)
from worker.flow.runs.switch import (
    SWITCHED_EARLIER,
)
from worker.observe.audit import earlier_switch
from worker.observe.metrics import table_finished
from worker.observe.notify import drift_found, retirement_report
from worker.runtime.celery_app import app
from worker.runtime.faults import fault_point
from worker.runtime.launch import enqueue_rotation
from worker.runtime.services import services

log = structlog.get_logger("rotator.tasks")

SWITCH_BATCH = "rotator.rotation.switch_batch"  # [run_id, [object ref, ...]]
MIGRATE_BATCH = "rotator.migration.batch"  # [run_id, wave, [object ref, ...]]
ADVANCE_KEY_ROTATION = "rotator.keys.advance"  # [run_id]


# --- rotations -----------------------------------------------------------------------------------


def plan_rotation(run_id: str) -> None:
    """Plan the run, then send its objects in batches, one per worker slot (ROTATOR_PARALLEL)."""
    s = services()
    names = prepare_rotation(
        run_id,
        runs=s.runs,
        secrets=s.secrets,
        admin=s.admin,
        bindings=s.bindings,
        locks=s.locks,
        newest=s.intake_state,
        fences=s.fences,
    )
    run = s.runs.get(run_id)
    structlog.contextvars.bind_contextvars(secret=run.secret, version=run.version_id)
    log.info("rotation planned", status=run.status, connection=run.connection, tables=len(names))
    # a new sending of the pending objects: batches of an earlier one (a resume or a repeated
    # event while they still run) stop at their next object
    dispatch = s.runs.redispatch(run_id) if names else 0
    for batch in split_batches(names, s.settings.parallel):
        send_rotation_batch(run_id, batch, dispatch)
    if not names:
        wake_parent(run_id)


def send_rotation_batch(run_id: str, names: list[ObjectName], dispatch: int = 0) -> None:
    _send_batch(SWITCH_BATCH, [run_id], names, {"dispatch": dispatch} if dispatch else None)


def _send_batch(
    task: str, lead: list[Any], names: list[ObjectName], kwargs: dict[str, Any] | None = None
) -> None:
    """One batch message. Its args as Celery shows them in logs and events (``argsrepr``) are
    the run and the number of objects: Celery would otherwise render every object's reference
    (CPU on every send, and log lines as long as the batch)."""
    args = [*lead, [object_ref(n) for n in names]]
    app.send_task(
        task, args=args, kwargs=kwargs or {}, argsrepr=repr((*lead, f"<{len(names)} objects>"))
    )


def rotation_batch(run_id: str, names: list[ObjectName], dispatch: int = 0) -> None:
    s = services()
    run = s.runs.get(run_id)
    structlog.contextvars.bind_contextvars(secret=run.secret, version=run.version_id)
    result = switch_batch(
        run_id,
        names,
        run=run,
        runs=s.runs,
        admin=s.admin,
        fences=s.fences,
        locks=s.locks,
        retry=RetryPolicy(),
        lease_seconds=s.lease_seconds,
        each=s.object_scope,
        on_outcome=_finished(RunKind.ROTATION, run_id, crash_point="rotation-after-table"),
        dispatch=dispatch,
    )
    if result is not None and result.closed:
        wake_parent(run_id)


def rotation_gave_up(
    run_id: str, names: list[ObjectName] | None, reason: str, dispatch: int = 0
) -> None:
    """A rotation task out of retries, or stopped by a fatal error: planning (``names`` None)
    fails the run; a batch fails its unfinished objects. Either way the run ends, resumable. A
    batch of an earlier sending of the run's objects fails none: the later batches have them."""
    s = services()
    if dispatch and names is not None and s.runs.get(run_id).dispatch != dispatch:
        log.warning("a batch of an earlier sending gave up; the later one has its objects")
        return
    if names is None:
        give_up(run_id, reason, runs=s.runs, locks=s.locks)
        log.error("rotation failed before switching any table", error=reason)
        wake_parent(run_id)
        return
    result = give_up_objects(run_id, names, reason, runs=s.runs, locks=s.locks)
    _log_given_up(result, reason)
    if result.closed:
        wake_parent(run_id)


def wake_parent(run_id: str) -> None:
    """A key rotation waits for its table run: tell it the table run has ended."""
    run = services().runs.get(run_id)
    if run.parent:
        app.send_task(ADVANCE_KEY_ROTATION, args=[run.parent])


# --- migrations ----------------------------------------------------------------------------------


def release_wave(run_id: str) -> None:
    """Send the current wave's unfinished objects (again, after a pause or crash), in as many
    batches as the run may switch at once (its --concurrency); a wave with nothing left is
    judged, and the next one released, at once."""
    release = waves.release_wave(services().runs, run_id)
    if release is None:
        return
    for judged in release.judged:
        _log_judged(judged)
    if release.batches:
        log.info("wave released", wave=release.wave, tables=sum(map(len, release.batches)))
    for batch in release.batches:
        _send_batch(MIGRATE_BATCH, [run_id, release.wave], batch)


def migration_batch(run_id: str, wave: int, names: list[ObjectName]) -> None:
    """Switch a batch under the run's shared limits (worker/flow/waves.py)."""
    s = services()
    done = waves.migration_batch(
        run_id,
        wave,
        names,
        runs=s.runs,
        admin=s.admin,
        fences=s.fences,
        limits=s.limits,
        retry=RetryPolicy(),
        lease_seconds=s.lease_seconds,
        each=s.object_scope,
        on_outcome=_finished(RunKind.MIGRATION, run_id),
        behind=s.rotated_away,
    )
    if done.result is None:
        return
    # one line per batch (its objects' lines are debug): which worker did how much of a run
    log.info("batch done", wave=wave, objects=len(names), recorded=len(done.result.outcomes))
    if done.wave_complete:
        judge(run_id, wave)


def migration_gave_up(run_id: str, wave: int, names: list[ObjectName], reason: str) -> None:
    result = waves.give_up_batch(services().runs, run_id, wave, names, reason)
    _log_given_up(result, reason)
    if result.wave_complete:
        judge(run_id, wave)


def judge(run_id: str, wave: int) -> None:
    """The wave is complete: halt on too many failures, else release the next wave."""
    judged = waves.judge(services().runs, run_id, wave)
    if judged is None:
        return
    _log_judged(judged)
    if judged.decision is WaveDecision.NEXT_WAVE:
        release_wave(run_id)  # from here: no extra task hop between waves


def _log_judged(judged: waves.Judged) -> None:
    verdict = judged.verdict
    if judged.decision is WaveDecision.HALTED:
        log.warning(
            "migration halted", wave=judged.wave, failed=verdict.failed, total=verdict.total
        )
    elif judged.decision is WaveDecision.RUN_CHANGED:
        log.info("wave verdict not acted on: the run changed meanwhile", wave=judged.wave)


# --- key rotations -------------------------------------------------------------------------------


def retire_due_keys() -> None:
    """Deactivate / delete the old keys whose grace period is over; a blocked retirement is
    notified (worker/observe/notify.py)."""
    s = services()
    ctx = s.key_rotation()
    now = time.time()
    for run_id in s.runs.retiring():
        try:
            # its audit rows (key deactivated or deleted, connections dropped) name the run
            with structlog.contextvars.bound_contextvars(run_id=run_id):
                done = retire_due(ctx, s.limits, run_id, now)
        except RunNotFound:  # lost before retiring runs were kept: the others still go on
            log.error("retiring run has no record; retire its old key by hand", run_id=run_id)
            continue
        if done is None:
            log.info("old key retirement left to the sweep already on it", run_id=run_id)
            continue
        for action, result in done:
            log.info("old key " + action, run_id=run_id, result=result)
            retirement_report(s, run_id)


# --- reconcile -----------------------------------------------------------------------------------


def reconcile() -> None:
    """Each binding's drift, logged and notified; with ROTATOR_RECONCILE=commit also the runs
    that fix it, queued (the next sweep sees whether they did)."""
    s = services()
    found = take_inventory(s.admin, s.secrets, s.iam, s.bindings)
    for report in find_drift(found, s.runs):
        if s.settings.reconcile == "commit":
            run_id = queue_fix(report, found.views[report.binding], s.runs)
            if run_id is not None:
                enqueue_rotation(run_id)
        problems = sorted({f"{d.problem} {d.kind} {d.name}" for d in report.drift})
        drift_noticed(s, report)
        (log.warning if report.drift else log.info)(
            "reconciled",
            binding=report.binding,
            drift=len(report.drift),
            problems=problems[:20],
            busy=report.busy,
            queued_run=report.queued,
        )


def drift_noticed(s: Any, report: BindingReport) -> None:
    """What a reconcile (the beat's or ``rotator reconcile``) found for one binding: the count
    ``rotator_drift_objects`` shows and, when there is drift, a notice (once a day per set)."""
    drift_found(
        s,
        binding=report.binding,
        secret=report.secret,
        objects=[(f"{d.kind} {d.name}", f"{d.problem}: {d.detail}") for d in report.drift],
        # the metric counts objects, as the schedule's tick does, not the secret's own row
        # (no_run, unreadable): otherwise the two writers' counts flap
        out_of_step=sum(d.kind != "secret" for d in report.drift),
    )


# --- notifications -------------------------------------------------------------------------------


def notification_dropped(sink: str, message: dict[str, Any], reason: str) -> None:
    log.error(
        "notification dropped",
        sink=sink,
        error=reason,
        notification=message.get("event"),
        run_id=message.get("run_id"),
    )


# --- shared --------------------------------------------------------------------------------------


def _finished(
    kind: RunKind, run_id: str, crash_point: str = ""
) -> Callable[[TableOutcome, float], None]:
    """Per object: the metrics, one log line (debug for a migration's many), the audit row of a
    switch an earlier attempt made but could not record, and (crash tests) the named fault
    point."""
    say = log.debug if kind is RunKind.MIGRATION else log.info

    def finished(outcome: TableOutcome, seconds: float) -> None:
        if outcome.reason == SWITCHED_EARLIER:  # (rare: read the run's connection only then)
            connection = str(services().runs.get(run_id).connection or "")
            label = object_label(outcome.table)
            earlier_switch(run_id, label, outcome.previous, connection, outcome.attempts)
        table_finished(str(kind), str(outcome.status), seconds)
        say(
            "table done",
            table=object_label(outcome.table),
            status=str(outcome.status),
            reason=outcome.reason,
            rows_read=outcome.rows_read,
            ms=round(seconds * 1000, 1),
        )
        if crash_point:
            fault_point(crash_point)  # die with this outcome unwritten, the batch in flight

    return finished


def _log_given_up(result: BatchResult, reason: str) -> None:
    for outcome in result.outcomes:
        log.error("table failed", table=object_label(outcome.table), reason=reason)
