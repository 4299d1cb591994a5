"""A Secrets Manager rotation function: ``handler({"SecretId", "ClientRequestToken", "Step"})``.

For teams that prefer Secrets Manager's scheduler: each step drives the same key-rotation state
machine as ``rotator rotate --commit`` (run id ``sm-<token>``, the token being the AWSPENDING
version), with the tables switched inline instead of through Celery:

    createSecret  new access key stored as AWSPENDING (the unused other key removed if free)
    setSecret     connection from it; every affected table switched and read back
    testSecret    every table read back again on the new key
    finishSecret  AWSCURRENT moved; old key deactivated, its deletion scheduled (needs a worker
                  with --beat, or `rotator retire-due` from cron)

Every step may run twice; a failed step raises, so Secrets Manager keeps AWSCURRENT where it was.
Configuration comes from the environment like every rotator process.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from worker.domain.bindings import binding_covering
from worker.domain.errors import FatalError, RunNotFound
from worker.domain.model import RunKind, RunStatus
from worker.domain.ports import RunRecord
from worker.domain.sql import ObjectName
from worker.flow.key_rotation import (
    PHASES,
    Next,
    Phase,
    advance,
    plan_key_rotation,
)
from worker.flow.rotation import RetryPolicy
from worker.flow.runs import prepare_rotation, split_batches, switch_batch
from worker.runtime.services import object_scope
from worker.runtime.settings import settings

STEP_TARGETS = {
    "createSecret": Phase.PENDING_STORED,
    "setSecret": Phase.SWITCHED,
    "testSecret": Phase.TESTED,
    "finishSecret": Phase.RETIRED,
}
_TOKEN = re.compile(r"[A-Za-z0-9-]{32,64}\Z")


class RotationStepFailed(RuntimeError):
    """Raised to Secrets Manager so that it marks the rotation failed."""


def handler(
    event: dict[str, Any], context: Any = None, *, services: Any = None, table_threads: int = 8
) -> dict[str, str]:
    secret_id, token, step = _validated(event)
    if services is None:
        from worker.runtime.services import services as process_services

        services = process_services()
    ctx = services.key_rotation()
    run_id = f"sm-{token}"
    try:
        run = services.runs.get(run_id)
    except RunNotFound:
        run = _new_run(services, secret_id, token, run_id)
    target = STEP_TARGETS[step]
    while PHASES.index(Phase(run.phase or Phase.PLANNED)) < PHASES.index(target):
        step_result = advance(ctx, run_id)
        if step_result in (Next.START_TABLES, Next.WAIT):
            _switch_tables_inline(
                services, str(services.runs.get(run_id).data["table_run"]), table_threads
            )
        elif step_result is Next.STOP:
            break
        run = services.runs.get(run_id)
    run = services.runs.get(run_id)
    if run.status in (RunStatus.FAILED, RunStatus.ABORTED, RunStatus.SUPERSEDED):
        raise RotationStepFailed(f"{step} failed: {run.error or run.status}")
    return {"run_id": run_id, "phase": str(run.phase), "status": str(run.status)}


def _validated(event: Any) -> tuple[str, str, str]:
    if not isinstance(event, dict):
        raise ValueError("the rotation event must be an object")
    secret_id, token, step = (event.get(k) for k in ("SecretId", "ClientRequestToken", "Step"))
    if not isinstance(secret_id, str) or not secret_id or len(secret_id) > 2048:
        raise ValueError("SecretId must be a non-empty string")
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise ValueError("ClientRequestToken must be a version id (32-64 letters, digits, -)")
    if step not in STEP_TARGETS:
        raise ValueError(f"Step must be one of {', '.join(STEP_TARGETS)}")
    return secret_id, token, str(step)


def _new_run(services: Any, secret_id: str, token: str, run_id: str) -> RunRecord:
    info = services.secrets.describe(secret_id)
    binding = binding_covering(services.bindings, info.arn, info.name)
    if token in info.versions and "AWSCURRENT" in info.versions[token].stages:
        raise FatalError(f"version {token} is already AWSCURRENT")
    plan = plan_key_rotation(
        binding,
        info,
        secrets=services.secrets,
        iam=services.iam,
        admin=services.admin,
        bound_secrets=tuple(b.secret for b in services.bindings),
    )
    if plan.refusal:
        raise FatalError(plan.refusal)
    run = RunRecord(
        run_id=run_id,
        kind=RunKind.KEY_ROTATION,
        secret=info.arn,
        version_id=token,
        binding=binding.name,
        phase=Phase.PLANNED,
        data={
            "user": plan.user,
            "old_key_id": plan.current_key,
            "old_version": plan.current_version,
            "deactivate_after": 0,
            "delete_after": 7 * 86400,
        },
    )
    services.runs.create(run)
    return run


def _switch_tables_inline(services: Any, table_run: str, threads: int) -> None:
    """The table run's objects, switched here in batches on ``threads`` threads: the same step a
    worker's batch task runs (worker/flow/runs/switch.py)."""
    tables = prepare_rotation(
        table_run,
        runs=services.runs,
        secrets=services.secrets,
        admin=services.admin,
        bindings=services.bindings,
        locks=services.locks,
        fences=services.fences,
    )
    limit = settings().table_time_limit

    def switch(batch: list[ObjectName]) -> None:
        switch_batch(
            table_run,
            batch,
            runs=services.runs,
            admin=services.admin,
            locks=services.locks,
            retry=RetryPolicy(),
            fences=services.fences,
            lease_seconds=services.lease_seconds,
            each=lambda planned: object_scope(planned, limit),
        )

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(switch, split_batches(tables, threads)))
