"""Service tasks the worker's beat runs: the rotation schedule and the notification sweep, plus
the delivery of one notification to one sink, retried with backoff apart from any run."""

from __future__ import annotations

from typing import Any

import structlog
from celery import signals

from worker.domain.retries import DELIVERY_BACKOFF, DELIVERY_BACKOFF_MAX, DELIVERY_RETRIES
from worker.runtime import jobs
from worker.runtime.celery_app import RotatorTask, app
from worker.runtime.services import services

log = structlog.get_logger("rotator.tasks")


@app.task(base=RotatorTask, name="rotator.schedule.tick")
def schedule_tick() -> None:
    from worker.runtime.scheduler import tick

    for seen in tick(services()):
        if seen.problem:
            log.warning("schedule: key age unknown", binding=seen.binding, problem=seen.problem)


@app.task(base=RotatorTask, name="rotator.notify.sweep")
def notify_sweep() -> None:
    from worker.observe.notify import sweep_ended

    sweep_ended(services())


@app.task(
    base=RotatorTask,
    name="rotator.notify.deliver",
    max_retries=DELIVERY_RETRIES,
    retry_backoff=DELIVERY_BACKOFF,
    retry_backoff_max=DELIVERY_BACKOFF_MAX,
    gave_up=lambda sink, message, reason: jobs.notification_dropped(sink, message, reason),
)
def deliver_notification(sink: str, message: dict[str, Any]) -> None:
    """One notification to one sink, apart from any run; DeliveryUnavailable is retried."""
    from worker.observe.notify import deliver

    deliver(services().settings, sink, message)
    log.info("notification delivered", sink=sink, notification=message.get("event"))


@signals.worker_init.connect
def _worker_is_the_actor(**_: Any) -> None:
    """Runs a worker creates on its own (none but the schedule's, which say so) are the worker's;
    its audit flusher starts with it."""
    from worker.observe import actor
    from worker.observe.audit import recorder

    actor.set_default("worker")
    audit = recorder()
    if audit is not None:
        audit.start()  # also ships rows a process that died on this host left in the spool
