"""Run-wide tasks: the reaper that keeps any run from hanging silently (beat runs it)."""

from __future__ import annotations

import time

import structlog

from worker.flow.reaper import reap
from worker.runtime.celery_app import RotatorTask, app
from worker.runtime.launch import enqueue_followup
from worker.runtime.services import services

log = structlog.get_logger("rotator.tasks")


@app.task(base=RotatorTask, name="rotator.runs.reap")
def reap_stuck_runs() -> None:
    s = services()
    for reaped in reap(s.runs, s.fences, now=time.time(), stuck_after=s.settings.stuck_after):
        log.warning(
            "run without progress",
            run_id=reaped.run_id,
            action=str(reaped.followup),
            reason=reaped.reason,
        )
        enqueue_followup(reaped.followup, reaped.run_id)
