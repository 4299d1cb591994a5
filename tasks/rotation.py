"""Rotation tasks: plan a run, then switch and validate each object in its own task.

A table goes to ``rotator.rotation.switch_table`` [run_id, database, table] (as it always did, so
queued work keeps its shape); a stage or a database default to ``rotator.rotation.switch_object``
[run_id, kind, name].
"""

from __future__ import annotations

import time

import structlog

from worker.adapters.databend_client import table_time_limit
from worker.domain.errors import FatalError, LockBusy, RetryableError
from worker.domain.model import RunKind, TableOutcome, TableStatus
from worker.domain.sql import ObjectName, TableName, object_label, object_name
from worker.flow.rotation import RetryPolicy
from worker.flow.runs import finish_table, prepare_rotation, switch_and_record
from worker.observe.metrics import TABLE_RETRIES, table_finished
from worker.runtime.celery_app import RotatorTask, app
from worker.runtime.faults import fault_point
from worker.runtime.services import services

log = structlog.get_logger("rotator.tasks")

LOCK_WAIT_SECONDS = 2.0  # how often a run waiting for its secret's lock tries again
LOCK_WAIT_ATTEMPTS = 900  # about half an hour of waiting before the run gives up


@app.task(base=RotatorTask, bind=True, name="rotator.rotation.start")
def start_rotation(self: RotatorTask, run_id: str) -> None:
    structlog.contextvars.bind_contextvars(run_id=run_id)
    s = services()
    try:
        tables = prepare_rotation(
            run_id,
            runs=s.runs,
            secrets=s.secrets,
            admin=s.admin,
            bindings=s.bindings,
            locks=s.locks,
            newest=s.intake_state,
            fences=s.fences,
        )
    except FatalError as exc:
        log.error("rotation failed before switching any table", error=str(exc))
        _wake_parent(run_id)
        return
    except LockBusy as exc:
        if self.request.retries >= LOCK_WAIT_ATTEMPTS:
            _give_up(run_id, f"gave up waiting for the secret's lock: {exc}")
            return
        raise self.retry(
            exc=exc, countdown=LOCK_WAIT_SECONDS, max_retries=LOCK_WAIT_ATTEMPTS
        ) from None
    except RetryableError as exc:
        if self.request.retries >= self.max_retries:
            _give_up(run_id, f"planning gave up after {self.request.retries} retries: {exc}")
            return
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from None
    run = s.runs.get(run_id)
    structlog.contextvars.bind_contextvars(secret=run.secret, version=run.version_id)
    log.info("rotation planned", status=run.status, connection=run.connection, tables=len(tables))
    for name in tables:
        enqueue_switch(run_id, name)
    if not tables:
        _wake_parent(run_id)


def enqueue_switch(run_id: str, name: ObjectName) -> None:
    if isinstance(name, TableName):
        switch_table.delay(run_id, name.database, name.table)
    else:
        switch_object.delay(run_id, name.kind, name.name)


@app.task(base=RotatorTask, bind=True, name="rotator.rotation.switch_table")
def switch_table(self: RotatorTask, run_id: str, database: str, table: str) -> None:
    _switch(self, run_id, TableName(database, table))


@app.task(base=RotatorTask, bind=True, name="rotator.rotation.switch_object")
def switch_object(self: RotatorTask, run_id: str, kind: str, name: str) -> None:
    """A stage or a database default of the run (a table may come this way too)."""
    _switch(self, run_id, object_name(kind, name))


def _switch(self: RotatorTask, run_id: str, name: ObjectName) -> None:
    structlog.contextvars.bind_contextvars(run_id=run_id, table=object_label(name))
    s = services()
    started = time.perf_counter()
    try:
        with table_time_limit(s.settings.table_time_limit):
            result = switch_and_record(
                run_id,
                name,
                runs=s.runs,
                admin=s.admin,
                locks=s.locks,
                retry=RetryPolicy(),
                fences=s.fences,
                lease_seconds=s.lease_seconds,
            )
        if result is None:
            return  # not part of this run, or already finished (a redelivered message)
        outcome, closed = result.outcome, result.closed
    except RetryableError as exc:
        if self.request.retries < self.max_retries:
            TABLE_RETRIES.labels(kind=RunKind.ROTATION).inc()
            raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from None
        planned = s.runs.outcome(run_id, name)
        outcome = TableOutcome(
            table=name,
            status=TableStatus.FAILED,
            rule=planned.rule if planned else "",
            reason=f"gave up after retries: {exc}",
        )
        closed = finish_table(run_id, outcome, runs=s.runs, locks=s.locks)
    fault_point("rotation-after-table")  # crash tests: die with the other tables in flight
    seconds = time.perf_counter() - started
    table_finished("rotation", str(outcome.status), seconds)
    if closed:
        _wake_parent(run_id)
    log.info(
        "table done",
        status=str(outcome.status),
        reason=outcome.reason,
        rows_read=outcome.rows_read,
        ms=round(seconds * 1000, 1),
        run_closed=closed,
    )


def _give_up(run_id: str, reason: str) -> None:
    """Planning ran out of retries: the run is failed (resumable), never left queued."""
    from worker.flow.runs import give_up

    give_up(run_id, reason, runs=services().runs, locks=services().locks)
    log.error("rotation failed before switching any table", error=reason)
    _wake_parent(run_id)


def _wake_parent(run_id: str) -> None:
    """A key rotation waits for its table run: tell it the table run has ended."""
    from tasks.key_rotation import advance_key_rotation

    run = services().runs.get(run_id)
    if run.parent:
        advance_key_rotation.delay(run.parent)


def _backoff(retries: int) -> float:
    return float(min(60, 2 ** (retries + 1)))
