"""Migration tasks: release a wave, switch one object under the run's shared limits, judge waves.

Tables go to ``rotator.migration.table`` [run_id, database, table, wave] as they always did; a
stage or a database default to ``rotator.migration.object`` [run_id, kind, name, wave].
"""

from __future__ import annotations

import time

import structlog

from worker.adapters.databend_client import table_time_limit
from worker.domain.errors import RetryableError
from worker.domain.model import RunKind, RunStatus, TableOutcome, TableStatus
from worker.domain.sql import ObjectName, TableName, object_label, object_name
from worker.flow.migration import finished_in_wave, judge_wave
from worker.flow.rotation import RetryPolicy
from worker.flow.runs import close_run, switch_and_record
from worker.observe.metrics import TABLE_RETRIES, table_finished
from worker.runtime.celery_app import RotatorTask, app
from worker.runtime.services import services

log = structlog.get_logger("rotator.tasks")


@app.task(base=RotatorTask, name="rotator.migration.release_wave")
def release_wave(run_id: str) -> None:
    """Enqueue the current wave's unfinished tables (again, after a pause or crash)."""
    structlog.contextvars.bind_contextvars(run_id=run_id)
    enqueue_wave(run_id)


def enqueue_wave(run_id: str) -> None:
    s = services()
    run = s.runs.get(run_id)
    if run.status != RunStatus.SWITCHING:
        return
    wave = int(run.data["wave"])
    tables = s.runs.wave(run_id, wave)
    outcomes = s.runs.outcomes_for(run_id, tables)
    for outcome in outcomes:  # finished before a pause or crash: counted for this epoch
        if outcome.status.done:
            s.runs.wave_finished(run_id, wave, outcome.table, int(run.data.get("epoch", 0)))
    todo = [o.table for o in outcomes if not o.status.done]
    log.info("wave released", wave=wave, tables=len(todo))
    if not todo:
        judge(run_id, wave)
    for name in todo:
        if isinstance(name, TableName):
            migrate_table.delay(run_id, name.database, name.table, wave)
        else:
            migrate_object.delay(run_id, name.kind, name.name, wave)


@app.task(base=RotatorTask, bind=True, name="rotator.migration.table")
def migrate_table(self: RotatorTask, run_id: str, database: str, table: str, wave: int) -> None:
    _migrate(self, run_id, TableName(database, table), wave)


@app.task(base=RotatorTask, bind=True, name="rotator.migration.object")
def migrate_object(self: RotatorTask, run_id: str, kind: str, name: str, wave: int) -> None:
    """A stage or a database default of the migration."""
    _migrate(self, run_id, object_name(kind, name), wave)


def _migrate(self: RotatorTask, run_id: str, name: ObjectName, wave: int) -> None:
    structlog.contextvars.bind_contextvars(run_id=run_id, table=object_label(name))
    s = services()
    run = s.runs.get(run_id)
    if run.status != RunStatus.SWITCHING:
        return  # paused, halted or over: the table stays pending for `rotator resume`
    options = run.data["options"]
    epoch = int(run.data.get("epoch", 0))
    started = time.perf_counter()
    try:
        with s.limits.slot(run_id, int(options["concurrency"])):
            if options.get("rate"):
                s.limits.pace(run_id, options["rate"])
                if s.runs.get(run_id).status != RunStatus.SWITCHING:
                    return  # paused while this table waited for its turn
            with table_time_limit(s.settings.table_time_limit):
                result = switch_and_record(
                    run_id,
                    name,
                    runs=s.runs,
                    admin=s.admin,
                    retry=RetryPolicy(),
                    run=run,
                    wave=(wave, epoch),
                    fences=s.fences,
                    lease_seconds=s.lease_seconds,
                )
    except RetryableError as exc:
        if self.request.retries < self.max_retries:
            TABLE_RETRIES.labels(kind=RunKind.MIGRATION).inc()
            raise self.retry(exc=exc, countdown=min(60, 2 ** (self.request.retries + 1))) from None
        planned = s.runs.outcome(run_id, name)
        outcome = TableOutcome(
            table=name,
            status=TableStatus.FAILED,
            reason=f"gave up: {exc}",
            rule=planned.rule if planned else "",
        )
        remaining, finished, size = s.runs.record_wave_outcome(run_id, outcome, wave, epoch)
        table_finished("migration", str(outcome.status), time.perf_counter() - started)
        if remaining == 0:
            close_run(run_id, s.runs)
        elif finished >= size:
            judge(run_id, wave)
        return
    if result is None:
        # finished already, maybe by a redelivered copy that counted it in an older epoch: count
        # it in this one too, or the resumed wave would never be judged complete
        if finished_in_wave(s.runs, run_id, name, wave, epoch):
            judge(run_id, wave)
        return
    seconds = time.perf_counter() - started
    table_finished("migration", str(result.outcome.status), seconds)
    log.debug(
        "table done",
        status=str(result.outcome.status),
        reason=result.outcome.reason,
        ms=round(seconds * 1000, 1),
    )
    if result.wave_complete:
        judge(run_id, wave)


def judge(run_id: str, wave: int) -> None:
    """The wave is complete: halt on too many failures, else release the next wave."""
    s = services()
    run = s.runs.get(run_id)
    if run.status != RunStatus.SWITCHING or int(run.data["wave"]) != wave:
        return
    outcomes = s.runs.outcomes_for(run_id, s.runs.wave(run_id, wave))
    verdict = judge_wave(outcomes, float(run.data["options"]["max_error_rate"]))
    if not verdict.complete:
        return
    if not s.limits.once(f"judged:{run_id}:{run.data.get('epoch', 0)}:{wave}"):
        return
    if verdict.halt:
        s.runs.update(
            run_id,
            status=RunStatus.HALTED,
            error=(
                f"wave {wave}: {verdict.failed} of {verdict.total} tables failed "
                f"({verdict.error_rate:.0%}), over the limit of "
                f"{float(run.data['options']['max_error_rate']):.0%}; the rest was not touched"
            ),
        )
        log.warning("migration halted", wave=wave, failed=verdict.failed, total=verdict.total)
        return
    if wave + 1 < s.runs.wave_count(run_id):
        data = dict(run.data)
        data["wave"] = wave + 1
        s.runs.update(run_id, data=data)
        enqueue_wave(run_id)  # from here: no extra task hop between waves
