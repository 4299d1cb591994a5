"""Service tasks the worker's beat runs: the rotation schedule and the notification sweep, plus
the delivery of one notification to one sink, retried with backoff apart from any run."""

from __future__ import annotations

from typing import Any

import structlog
from celery import signals

from worker.runtime.celery_app import RotatorTask, app
from worker.runtime.services import services

log = structlog.get_logger("rotator.tasks")

DELIVERY_ATTEMPTS = 10  # 5 s, 10 s, 20 s … capped at 300 s: about half an hour in all


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


@app.task(base=RotatorTask, bind=True, name="rotator.notify.deliver", max_retries=DELIVERY_ATTEMPTS)
def deliver_notification(self: RotatorTask, sink: str, message: dict[str, Any]) -> None:
    from worker.observe.notify import DeliveryFailed, deliver

    try:
        deliver(services().settings, sink, message)
    except DeliveryFailed as exc:
        attempts = self.request.retries + 1
        if exc.retry and self.request.retries < DELIVERY_ATTEMPTS:
            log.warning(
                "notification not delivered yet", sink=sink, error=str(exc), attempt=attempts
            )
            raise self.retry(countdown=min(300, 5 * 2**self.request.retries)) from None
        log.error(
            "notification dropped",
            sink=sink,
            error=str(exc),
            attempts=attempts,
            notification=message.get("event"),
            run_id=message.get("run_id"),
        )
        return
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
