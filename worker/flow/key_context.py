"""What every step of a key rotation shares: its phases, what a step asks for next, the context
(ports, retry policy, clock) a step runs in, and the secret's current access key."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from worker.domain import masking
from worker.domain.bindings import Binding
from worker.domain.errors import NotAKeySecret
from worker.domain.model import AccessKeyCredentials, RunKind, RunStatus
from worker.domain.ports import (
    DatabendAdmin,
    Fences,
    IamKeys,
    RunRecord,
    RunStore,
    SecretInfo,
    SecretLocks,
    SecretStore,
    SecretWriter,
)
from worker.domain.secret_value import parse_secret_value
from worker.flow.rotation import RetryPolicy


class Phase(StrEnum):
    PLANNED = "planned"
    PENDING_STORED = "pending_stored"
    SWITCHING = "switching"
    SWITCHED = "switched"
    TESTED = "tested"
    FINISHED = "finished"
    RETIRED = "retired"


PHASES = list(Phase)


STEP_LEASE = 300.0  # a key-rotation step holds its run this long at most (if its worker lives)


class Next(StrEnum):
    CONTINUE = "continue"  # run the next step
    START_TABLES = "start_tables"  # enqueue the table run (data["table_run"])
    WAIT = "wait"  # the table run is under way; its end advances this run again
    STOP = "stop"  # done, failed or aborted


@dataclass
class KeyRotationContext:
    runs: RunStore
    secrets: SecretStore
    writer: SecretWriter
    iam: IamKeys
    admin: DatabendAdmin
    locks: SecretLocks | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    clock: Callable[[], float] = time.time
    # called at named points inside a step (crash tests hook a failure point here)
    checkpoint: Callable[[str], None] = lambda _name: None
    # every secret a binding names: a key one of them holds as AWSCURRENT/AWSPENDING is live
    bound_secrets: tuple[str, ...] = ()
    fences: Fences | None = None
    # every binding: after deleting a key, the connections it made holding that key are dropped
    bindings: tuple[Binding, ...] = ()


masked = masking.show_key


def current_credentials(
    secrets: SecretStore, info: SecretInfo
) -> tuple[str, AccessKeyCredentials, dict[str, object]]:
    version = info.version_with_stage("AWSCURRENT")
    if version is None:
        raise NotAKeySecret(f"secret {info.name} has no AWSCURRENT version")
    raw = secrets.read_version(info.arn, version)
    credentials = parse_secret_value(raw, where=f"secret {info.name} version {version}")
    if not isinstance(credentials, AccessKeyCredentials):
        raise NotAKeySecret(
            f"secret {info.name} holds a role, not an access key: nothing to rotate"
        )
    return version, credentials, json.loads(raw or "{}")


def fail(ctx: KeyRotationContext, run: RunRecord, error: str) -> None:
    ctx.runs.update(run.run_id, status=RunStatus.FAILED, error=error)
    release(ctx, run)


def release(ctx: KeyRotationContext, run: RunRecord) -> None:
    if ctx.locks is not None:
        ctx.locks.release(run.secret, run.run_id)


def unfinished_key_rotation(runs: RunStore, secret_arn: str) -> str | None:
    """Why a new key rotation of the secret may not start, if one has not ended: a second
    would create a third key behind the first's back. One cut short by a crash is resumed or
    aborted, not started over."""
    run = runs.unfinished_run(RunKind.KEY_ROTATION, secret_arn)
    if run is None:
        return None
    run_id = run.run_id
    return (
        f"key rotation {run_id} of this secret has not ended ({run.status}, phase "
        f"{run.phase}): follow it with `rotator status {run_id}`, or if its worker died, "
        f"`rotator resume {run_id}` (or `rotator abort {run_id}`)"
    )


def left_behind(runs: RunStore, secret_arn: str) -> str | None:
    """The last key rotation of the secret ended before moving AWSCURRENT but left its key
    (failed or superseded with AWSPENDING still holding it, or aborted keeping a key that may be
    in use): the operator resumes or aborts it first, or a new one is refused over that key."""
    last = runs.latest_run(RunKind.KEY_ROTATION, secret_arn)
    if last is None or last.phase in (Phase.FINISHED, Phase.RETIRED) or last.data.get("abort_done"):
        return None  # (an abort that finished cleaned up, whatever status it left)
    if last.status == RunStatus.ABORTED and last.data.get("abort_blocked"):
        then = "ask `rotator abort {0}` again once nothing uses its new key"
    elif last.status == RunStatus.FAILED and last.data.get("new_key_id"):
        then = "`rotator resume {0}` or `rotator abort {0}`"
    elif last.status == RunStatus.SUPERSEDED and last.data.get("new_key_id"):
        then = "`rotator abort {0}` removes its key"
    else:
        return None
    return (
        f"key rotation {last.run_id} is {last.status} before moving AWSCURRENT and left its new "
        f"key: {then.format(last.run_id)}"
    )
