"""Key rotation tasks: advance the step machine; retire old keys when they are due."""

from __future__ import annotations

import structlog

from tasks.rotation import start_rotation
from worker.domain.ports import RunRecord
from worker.flow.key_rotation import Next, Phase, advance
from worker.runtime import jobs
from worker.runtime.celery_app import RotatorTask, app
from worker.runtime.faults import fault_point
from worker.runtime.services import services

log = structlog.get_logger("rotator.tasks")


@app.task(base=RotatorTask, name="rotator.keys.advance")
def advance_key_rotation(run_id: str) -> None:
    """Run the key rotation's steps until one waits (a lock, the table run) or it ends; a
    LockBusy or a transient error tries again later (the base task's retries)."""
    structlog.contextvars.bind_contextvars(run_id=run_id)
    s = services()
    ctx = s.key_rotation()
    ctx.checkpoint = lambda name: fault_point(f"key-rotation-{name}")
    while (step := advance(ctx, run_id)) is Next.CONTINUE:
        _log_step(s.runs.get(run_id), step)
    run = s.runs.get(run_id)
    _log_step(run, step)
    if step is Next.START_TABLES:
        start_rotation.delay(str(run.data["table_run"]))
    elif step is Next.STOP and run.phase == Phase.RETIRED:
        retire_due.delay()


def _log_step(run: RunRecord, step: Next) -> None:
    structlog.contextvars.bind_contextvars(secret=run.secret, version=run.version_id)
    log.info("key rotation step", phase=run.phase, next=step.value, status=run.status)
    fault_point(f"key-rotation-after-{run.phase}")


@app.task(base=RotatorTask, name="rotator.keys.retire_due")
def retire_due() -> None:
    """Deactivate / delete old keys whose grace period is over (idempotent; beat runs it)."""
    jobs.retire_due_keys()
