"""Migration tasks: release a wave, switch a batch of its objects under the run's shared limits
(worker/runtime/jobs.py, which also judges each wave as it completes).

``rotator.migration.batch`` [run_id, wave, [object ref, ...]] carries a batch. The one-object
messages of earlier versions, ``rotator.migration.table`` [run_id, database, table, wave] and
``rotator.migration.object`` [run_id, kind, name, wave], are still taken as batches of one.
"""

from __future__ import annotations

import structlog

from worker.domain.model import RunKind
from worker.domain.sql import TableName, object_from_ref, object_name
from worker.runtime import jobs
from worker.runtime.celery_app import RotatorTask, app


@app.task(base=RotatorTask, name="rotator.migration.release_wave")
def release_wave(run_id: str) -> None:
    """Send the current wave's unfinished objects (again, after a pause or crash)."""
    structlog.contextvars.bind_contextvars(run_id=run_id)
    jobs.release_wave(run_id)


@app.task(
    base=RotatorTask,
    name="rotator.migration.batch",
    run_kind=RunKind.MIGRATION,
    gave_up=lambda run_id, wave, refs, reason: jobs.migration_gave_up(
        run_id, wave, [object_from_ref(r) for r in refs], reason
    ),
)
def migrate_batch(run_id: str, wave: int, refs: list[list[str]]) -> None:
    structlog.contextvars.bind_contextvars(run_id=run_id)
    jobs.migration_batch(run_id, wave, [object_from_ref(r) for r in refs])


@app.task(
    base=RotatorTask,
    name="rotator.migration.table",
    run_kind=RunKind.MIGRATION,
    gave_up=lambda run_id, database, table, wave, reason: jobs.migration_gave_up(
        run_id, wave, [TableName(database, table)], reason
    ),
)
def migrate_table(run_id: str, database: str, table: str, wave: int) -> None:
    structlog.contextvars.bind_contextvars(run_id=run_id)
    jobs.migration_batch(run_id, wave, [TableName(database, table)])


@app.task(
    base=RotatorTask,
    name="rotator.migration.object",
    run_kind=RunKind.MIGRATION,
    gave_up=lambda run_id, kind, name, wave, reason: jobs.migration_gave_up(
        run_id, wave, [object_name(kind, name)], reason
    ),
)
def migrate_object(run_id: str, kind: str, name: str, wave: int) -> None:
    structlog.contextvars.bind_contextvars(run_id=run_id)
    jobs.migration_batch(run_id, wave, [object_name(kind, name)])
