"""The periodic reconcile (``rotator worker --beat``, every ROTATOR_RECONCILE_INTERVAL seconds):
after a lost event or a Redis flush, this is what restores the truth. It logs each binding's
drift; with ROTATOR_RECONCILE=commit it also queues the runs that fix it (the next sweep sees
whether they did)."""

from __future__ import annotations

from worker.runtime import jobs
from worker.runtime.celery_app import RotatorTask, app


@app.task(base=RotatorTask, name="rotator.reconcile.sweep")
def reconcile_sweep() -> None:
    jobs.reconcile()
