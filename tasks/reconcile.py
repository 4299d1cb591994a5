"""The periodic reconcile (``rotator worker --beat``, every ROTATOR_RECONCILE_INTERVAL seconds):
after a lost event or a Redis flush, this is what restores the truth. It logs each binding's
drift; with ROTATOR_RECONCILE=commit it also queues the runs that fix it (the next sweep sees
whether they did)."""

from __future__ import annotations

import structlog

from worker.flow.inventory import take_inventory
from worker.flow.reconcile import find_drift, queue_fix
from worker.observe.notify import drift_found
from worker.runtime.celery_app import RotatorTask, app
from worker.runtime.launch import enqueue_rotation
from worker.runtime.services import services

log = structlog.get_logger("rotator.tasks")


@app.task(base=RotatorTask, name="rotator.reconcile.sweep")
def reconcile_sweep() -> None:
    s = services()
    found = take_inventory(s.admin, s.secrets, s.iam, s.bindings)
    for report in find_drift(found, s.runs):
        if s.settings.reconcile == "commit":
            run_id = queue_fix(report, found.views[report.binding], s.runs)
            if run_id is not None:
                enqueue_rotation(run_id)
        problems = sorted({f"{d.problem} {d.kind} {d.name}" for d in report.drift})
        drift_found(
            s,
            binding=report.binding,
            secret=report.secret,
            objects=[(f"{d.kind} {d.name}", f"{d.problem}: {d.detail}") for d in report.drift],
        )
        (log.warning if report.drift else log.info)(
            "reconciled",
            binding=report.binding,
            drift=len(report.drift),
            problems=problems[:20],
            busy=report.busy,
            queued_run=report.queued,
        )
