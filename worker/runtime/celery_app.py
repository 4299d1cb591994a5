"""The Celery app. Configured from Settings when a process starts using it (worker or CLI).

Delivery: tasks are acknowledged late and rejected when a worker dies, so an interrupted task runs
again; every task is therefore idempotent and carries ids only (run id, table name).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import structlog
from celery import Celery, Task, signals
from celery.utils.time import get_exponential_backoff_interval

from worker.domain.errors import FatalError, LockBusy, RetryableError
from worker.domain.retries import TASK_BACKOFF, TASK_BACKOFF_MAX, TASK_RETRIES
from worker.observe.metrics import TABLE_RETRIES
from worker.runtime.settings import Settings

log = structlog.get_logger("rotator.tasks")

app = Celery(
    "rotator",
    include=[
        "tasks.rotation",
        "tasks.key_rotation",
        "tasks.migration",
        "tasks.runs",
        "tasks.reconcile",
        "tasks.service",
    ],
)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue="rotator",
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
)


def configure_app(settings: Settings) -> Celery:
    settings.require("redis_url")
    schedule: dict[str, dict[str, Any]] = {
        "retire-due-keys": {
            "task": "rotator.keys.retire_due",
            "schedule": settings.retire_interval,
        },
        "reap-stuck-runs": {
            "task": "rotator.runs.reap",
            "schedule": min(settings.reap_interval, settings.stuck_after),
        },
    }
    schedule.update(service_schedule(settings))  # rotation schedules, notices
    if settings.reconcile_interval > 0:
        schedule["reconcile"] = {
            "task": "rotator.reconcile.sweep",
            "schedule": settings.reconcile_interval,
        }
    app.conf.update(
        broker_url=settings.redis_url,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        # Only the prefork pool enforces these; the threads pool ignores them, so the Databend
        # client enforces the table time limit itself (worker/adapters/databend_client.py).
        # They sit above it so that its classified, retryable error comes first where both apply.
        task_time_limit=settings.table_time_limit + 90,
        task_soft_time_limit=settings.table_time_limit + 30,
        beat_schedule=schedule,
    )
    return app


def service_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The rotation schedule and the notification sweep (see tasks/service.py)."""
    return {
        "rotation-schedule": {
            "task": "rotator.schedule.tick",
            "schedule": settings.schedule_interval,
        },
        "notify-ended-runs": {
            "task": "rotator.notify.sweep",
            "schedule": settings.notify_interval,
        },
    }


class RotatorTask(Task):  # type: ignore[misc]
    """Shared behaviour of every task, declared once.

    - A fresh log context per task, bound to the task's identity.
    - Retries: a RetryableError runs the task again after 2 s, 4 s, 8 s ... (at most 60 s, full
      jitter), at most TASK_RETRIES times since the task last made progress (a batch that recorded
      objects before the error counts from zero again); an error that knows its delay or budget
      (``retry_after``, ``max_retries``: LockBusy) overrides them; a task may declare its own
      budget (``max_retries``, ``retry_backoff`` options). worker/domain/retries.py lists them.
    - A FatalError is expected: logged without a traceback, never retried.
    - One failure hook: out of retries or fatal, ``on_failure`` hands the task's arguments and the
      reason to the task's ``gave_up`` (declared with the task), which records the outcome, so a
      run is never left waiting on work that ended.
    """

    abstract = True
    autoretry_for = (RetryableError,)
    max_retries = TASK_RETRIES
    retry_backoff = TASK_BACKOFF
    retry_backoff_max = TASK_BACKOFF_MAX
    retry_jitter = True
    throws = (FatalError,)
    run_kind: str | None = None  # the kind of run whose objects this task switches (metrics)
    gave_up: Callable[..., None] | None = None  # (*task args, reason=...) records the failure

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(task=self.name, task_id=self.request.id)
        return super().__call__(*args, **kwargs)

    def retry(  # the error's own delay and budget win over the task's
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        if isinstance(exc, RetryableError):
            if exc.progress:  # a batch that recorded objects before this error: budget anew
                self.request.retries = 0
                countdown = get_exponential_backoff_interval(
                    self.retry_backoff, 0, self.retry_backoff_max, self.retry_jitter
                )
            countdown = countdown if exc.retry_after is None else exc.retry_after
            max_retries = max_retries if exc.max_retries is None else exc.max_retries
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        waiting = isinstance(exc, LockBusy)  # a wait, not a failure
        (log.debug if waiting else log.warning)(
            "task will run again", error=str(exc), retry=self.request.retries + 1
        )
        if self.run_kind is not None and not waiting:
            TABLE_RETRIES.labels(kind=self.run_kind).inc()

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        hook = type(self).__dict__.get("gave_up")
        if hook is None:
            return
        if isinstance(exc, RetryableError):
            reason = f"gave up after {self.request.retries} retries: {exc}"
        else:
            reason = str(exc) or type(exc).__name__
        hook(*args, reason=reason, **kwargs)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Celery calls this instead of configuring logging itself.
    from worker.observe.logs import configure_logging
    from worker.runtime.settings import settings

    current = settings()
    configure_logging(current.log_level, current.log_format)


@signals.worker_ready.connect
def _log_databend_server(**_: Any) -> None:
    from worker.runtime.services import log_server, services

    log_server(services().admin)


@signals.worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    from worker.runtime.services import reset_services

    reset_services()


# The worker's pid, inherited by the beat child it forks (billiard's, not multiprocessing's).
_PROCESS_AT_IMPORT = os.getpid()


@signals.beat_embedded_init.connect
def _beat_ends_with_its_worker(**_: Any) -> None:
    """`rotator worker --beat` runs beat as a child process: it must not outlive a killed worker.

    A SIGTERM'd worker stops its beat itself; a SIGKILL'd one cannot, so the child asks Linux to
    kill it when its parent dies (and exits at once if that already happened). SIGKILL, as Celery
    does for pool children: beat keeps no state to save, and SIGTERM's handler can be swallowed or
    held up by whatever beat is doing when it lands.
    """
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux") or os.getpid() == _PROCESS_AT_IMPORT:
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != _PROCESS_AT_IMPORT:  # the worker died before prctl took effect
        os._exit(0)
