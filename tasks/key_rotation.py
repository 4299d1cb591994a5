"""Key rotation tasks: advance the step machine; retire old keys when they are due."""

from __future__ import annotations

import time

import structlog

from worker.domain.errors import LockBusy, RetryableError, RunNotFound
from worker.flow.key_rotation import Next, Phase, advance, due_retirements, retire_old_key
from worker.observe.notify import retirement_report
from worker.runtime.celery_app import RotatorTask, app
from worker.runtime.faults import fault_point
from worker.runtime.services import services

log = structlog.get_logger("rotator.tasks")


@app.task(base=RotatorTask, bind=True, name="rotator.keys.advance")
def advance_key_rotation(self: RotatorTask, run_id: str) -> None:
    from tasks.rotation import start_rotation

    structlog.contextvars.bind_contextvars(run_id=run_id)
    s = services()
    ctx = s.key_rotation()
    ctx.checkpoint = lambda name: fault_point(f"key-rotation-{name}")
    while True:
        try:
            step = advance(ctx, run_id)
        except LockBusy as exc:
            raise self.retry(exc=exc, countdown=2, max_retries=900) from None
        except RetryableError as exc:
            raise self.retry(exc=exc, countdown=min(60, 2 ** (self.request.retries + 1))) from None
        run = s.runs.get(run_id)
        structlog.contextvars.bind_contextvars(secret=run.secret, version=run.version_id)
        log.info("key rotation step", phase=run.phase, next=step.value, status=run.status)
        fault_point(f"key-rotation-after-{run.phase}")
        if step is Next.CONTINUE:
            continue
        if step is Next.START_TABLES:
            start_rotation.delay(str(run.data["table_run"]))
        elif step is Next.STOP and run.phase == Phase.RETIRED:
            retire_due.delay()
        return


@app.task(base=RotatorTask, name="rotator.keys.retire_due")
def retire_due() -> None:
    """Deactivate / delete old keys whose grace period is over (idempotent; beat runs it)."""
    s = services()
    ctx = s.key_rotation()
    now = time.time()
    for run_id in s.runs.retiring():
        try:
            run = s.runs.get(run_id)
        except RunNotFound:  # lost before retiring runs were kept: the others still go on
            log.error("retiring run has no record; retire its old key by hand", run_id=run_id)
            continue
        for action in due_retirements(run, now):
            result = retire_old_key(ctx, run_id, action)
            log.info("old key " + action, run_id=run_id, result=result)
            # a blocked retirement is notified (worker/observe/notify.py)
            retirement_report(s, run_id)
        data = s.runs.get(run_id).data
        if data.get("deactivated_at") and data.get("deleted_at"):
            s.runs.unmark_retiring(run_id)
