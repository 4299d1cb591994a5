"""Rotation tasks: plan a run, then switch its objects in batches (worker/runtime/jobs.py).

``rotator.rotation.switch_batch`` [run_id, [object ref, ...]] carries a batch (object refs:
``["table", db, table]``, ``["stage", s]``, ``["database", d]``). The one-object messages of
earlier versions, ``switch_table`` [run_id, database, table] and ``switch_object`` [run_id, kind,
name], are still taken as batches of one, so queued work keeps running.
"""

from __future__ import annotations

import structlog

from worker.domain.model import RunKind
from worker.domain.sql import TableName, object_from_ref, object_name
from worker.runtime import jobs
from worker.runtime.celery_app import RotatorTask, app


@app.task(
    base=RotatorTask,
    name="rotator.rotation.start",
    gave_up=lambda run_id, reason: jobs.rotation_gave_up(run_id, None, reason),
)
def start_rotation(run_id: str) -> None:
    structlog.contextvars.bind_contextvars(run_id=run_id)
    jobs.plan_rotation(run_id)


@app.task(
    base=RotatorTask,
    name="rotator.rotation.switch_batch",
    run_kind=RunKind.ROTATION,
    gave_up=lambda run_id, refs, reason, dispatch=0: jobs.rotation_gave_up(
        run_id, [object_from_ref(r) for r in refs], reason, dispatch
    ),
)
def switch_batch(run_id: str, refs: list[list[str]], dispatch: int = 0) -> None:
    structlog.contextvars.bind_contextvars(run_id=run_id)
    jobs.rotation_batch(run_id, [object_from_ref(r) for r in refs], dispatch)


@app.task(
    base=RotatorTask,
    name="rotator.rotation.switch_table",
    run_kind=RunKind.ROTATION,
    gave_up=lambda run_id, database, table, reason: jobs.rotation_gave_up(
        run_id, [TableName(database, table)], reason
    ),
)
def switch_table(run_id: str, database: str, table: str) -> None:
    structlog.contextvars.bind_contextvars(run_id=run_id)
    jobs.rotation_batch(run_id, [TableName(database, table)])


@app.task(
    base=RotatorTask,
    name="rotator.rotation.switch_object",
    run_kind=RunKind.ROTATION,
    gave_up=lambda run_id, kind, name, reason: jobs.rotation_gave_up(
        run_id, [object_name(kind, name)], reason
    ),
)
def switch_object(run_id: str, kind: str, name: str) -> None:
    structlog.contextvars.bind_contextvars(run_id=run_id)
    jobs.rotation_batch(run_id, [object_name(kind, name)])
