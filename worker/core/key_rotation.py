"""Zero-downtime rotation of an IAM user's access key, in Secrets Manager's four steps plus retire.

    planned --create key, store AWSPENDING--> pending_stored --start table run--> switching
    --every table switched and read back--> switched --read back again--> tested
    --AWSCURRENT moved--> finished --old key deactivated (or scheduled), deletion scheduled-->
    retired

Databend writes ``ALTER TABLE … CONNECTION`` with the table's OLD key, so the old key stays active
until every table is switched and read back; retiring it re-checks that no table still uses it.
Each step writes what it is about to change into the run record first (``run.data``) and checks
before acting, so a crash anywhere resumes from the record: an access key created but never stored
(the crash came between the two calls) is found by comparing with the keys recorded beforehand and
deleted, never guessed at.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial

from worker.core.bindings import Binding
from worker.core.model import (
    AccessKeyCredentials,
    ExternalTable,
    RunStatus,
    TableStatus,
)
from worker.core.ports import (
    AccessKey,
    DatabendAdmin,
    IamKeys,
    RunRecord,
    RunStore,
    SecretInfo,
    SecretLocks,
    SecretStore,
    SecretWriter,
)
from worker.core.rotation import (
    RetryPolicy,
    connection_name_for,
    ensure_connection,
    rotate_table,
)
from worker.core.runs import reopen_failed_tables
from worker.core.secret_value import parse_secret_value
from worker.errors import FatalError, LockBusy, RotatorError, UnknownSecretError


class Phase(StrEnum):
    PLANNED = "planned"
    PENDING_STORED = "pending_stored"
    SWITCHING = "switching"
    SWITCHED = "switched"
    TESTED = "tested"
    FINISHED = "finished"
    RETIRED = "retired"


PHASES = list(Phase)


class KeyInUse(FatalError):
    pass


class NotAKeySecret(FatalError):
    pass


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


@dataclass(frozen=True)
class KeyRotationPlan:
    secret_arn: str
    secret_name: str
    binding: str
    user: str
    current_version: str
    current_key: str
    keys: list[AccessKey]
    key_to_remove: str | None
    refusal: str | None
    tables: list[ExternalTable]


def masked(key_id: str) -> str:
    return f"******{key_id[-3:]}"


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


def tables_using(admin: DatabendAdmin, key_id: str) -> list[ExternalTable]:
    """External tables whose storage_param shows this key's suffix."""
    return [t for t in admin.list_external_tables() if t.storage.ak_suffix == key_id[-3:]]


def plan_key_rotation(
    binding: Binding, info: SecretInfo, *, secrets: SecretStore, iam: IamKeys, admin: DatabendAdmin
) -> KeyRotationPlan:
    version, credentials, _ = current_credentials(secrets, info)
    user = binding.iam_user or iam.owner_of(credentials.access_key_id)
    keys = sorted(iam.list_keys(user), key=lambda k: k.created_at)
    others = [k for k in keys if k.key_id != credentials.access_key_id]
    to_remove, refusal = None, None
    if len(keys) >= 2:
        victim = others[0] if others else keys[0]
        users = tables_using(admin, victim.key_id)
        if users:
            names = ", ".join(str(t.name) for t in users[:5])
            refusal = (
                f"user {user} already has two access keys and {masked(victim.key_id)}, "
                f"the one the secret does not hold, is still used by {len(users)} "
                f"table(s): {names}. Switch those tables first; nothing was changed."
            )
        else:
            to_remove = victim.key_id
    return KeyRotationPlan(
        secret_arn=info.arn,
        secret_name=info.name,
        binding=binding.name,
        user=user,
        current_version=version,
        current_key=credentials.access_key_id,
        keys=keys,
        key_to_remove=to_remove,
        refusal=refusal,
        tables=tables_using(admin, credentials.access_key_id),
    )


def new_key_rotation(
    runs: RunStore, plan: KeyRotationPlan, *, deactivate_after: float, delete_after: float
) -> str:
    """Record a key rotation run (nothing external is changed yet)."""
    if plan.refusal:
        raise KeyInUse(plan.refusal)
    run_id = uuid.uuid4().hex
    runs.create(
        RunRecord(
            run_id=run_id,
            kind="key-rotation",
            secret=plan.secret_arn,
            version_id=str(uuid.uuid4()),  # the AWSPENDING version to be (its ClientRequestToken)
            binding=plan.binding,
            phase=Phase.PLANNED,
            data={
                "user": plan.user,
                "old_key_id": plan.current_key,
                "old_version": plan.current_version,
                "deactivate_after": deactivate_after,
                "delete_after": delete_after,
            },
        )
    )
    return run_id


def advance(ctx: KeyRotationContext, run_id: str) -> Next:
    """Do the next step of a key rotation. Fatal errors fail the run (resumable)."""
    run = ctx.runs.get(run_id)
    if RunStatus(run.status).final:
        return Next.STOP
    if ctx.locks is not None and not ctx.locks.acquire(run.secret, run_id):
        raise LockBusy(f"another run is rotating secret {run.secret}")
    if run.status == RunStatus.QUEUED:
        ctx.runs.update(run_id, status=RunStatus.SWITCHING, started_at=ctx.clock())
    step = _STEPS[Phase(run.phase or Phase.PLANNED)]
    try:
        return step(ctx, run)
    except FatalError as exc:
        _fail(ctx, run, str(exc))
        return Next.STOP


def _create_and_store_key(ctx: KeyRotationContext, run: RunRecord) -> Next:
    data = dict(run.data)
    info = ctx.secrets.describe(run.secret)
    stored = _stored_pending(ctx, info, run.version_id)
    if stored is not None:  # stored before a crash: take the key id from it
        data["new_key_id"] = stored.access_key_id
        ctx.runs.update(run.run_id, phase=Phase.PENDING_STORED, data=data)
        return Next.CONTINUE
    user, old_key = str(data["user"]), str(data["old_key_id"])
    keys = ctx.iam.list_keys(user)
    if "keys_before" not in data:
        data["keys_before"] = [k.key_id for k in keys]
        ctx.runs.update(run.run_id, data=data)  # write-ahead: what existed before we create one
    for orphan in [k for k in keys if k.key_id not in data["keys_before"]]:
        ctx.iam.delete_key(user, orphan.key_id)  # created by a crashed attempt, never stored
    keys = [k for k in keys if k.key_id in data["keys_before"]]
    if len(keys) >= 2:
        victim = sorted((k for k in keys if k.key_id != old_key), key=lambda k: k.created_at)[0]
        users = tables_using(ctx.admin, victim.key_id)
        if users:
            raise KeyInUse(
                f"user {user} has two keys and {masked(victim.key_id)} is still used "
                f"by {', '.join(str(t.name) for t in users[:5])}"
            )
        data["removed_key_id"] = victim.key_id
        data["keys_before"] = [k for k in data["keys_before"] if k != victim.key_id]
        ctx.runs.update(run.run_id, data=data)
        ctx.iam.delete_key(user, victim.key_id)
    _, current, current_value = current_credentials(ctx.secrets, info)
    if current.access_key_id != old_key:
        raise FatalError(
            f"the secret's current key changed to {masked(current.access_key_id)} "
            "since this rotation was planned"
        )
    key_id, secret_key = ctx.iam.create_key(user)
    ctx.checkpoint("after-create-key")
    value = {k: v for k, v in current_value.items() if k not in _KEY_FIELDS}
    value.update(access_key_id=key_id, secret_access_key=secret_key)
    ctx.writer.put_pending(info.arn, run.version_id, json.dumps(value))
    data["new_key_id"] = key_id
    ctx.runs.update(run.run_id, phase=Phase.PENDING_STORED, data=data)
    return Next.CONTINUE


def _stored_pending(
    ctx: KeyRotationContext, info: SecretInfo, version_id: str
) -> AccessKeyCredentials | None:
    """The key already stored in the pending version, if any. (Secrets Manager's own scheduler
    creates the AWSPENDING version id before the value exists.)"""
    if version_id not in info.versions:
        return None
    try:
        raw = ctx.secrets.read_version(info.arn, version_id)
    except UnknownSecretError:
        return None
    if raw is None:
        return None
    stored = parse_secret_value(raw, where=f"pending version {version_id}")
    if not isinstance(stored, AccessKeyCredentials):
        raise NotAKeySecret(f"pending version {version_id} does not hold an access key")
    return stored


_KEY_FIELDS = {
    "access_key_id",
    "secret_access_key",
    "AccessKeyId",
    "SecretAccessKey",
    "aws_access_key_id",
    "aws_secret_access_key",
}


def _start_tables(ctx: KeyRotationContext, run: RunRecord) -> Next:
    data = dict(run.data)
    table_run = data.get("table_run") or uuid.uuid4().hex
    if "table_run" not in data:
        data["table_run"] = table_run
        ctx.runs.update(run.run_id, data=data)
    try:
        ctx.runs.get(table_run)
    except RotatorError:
        ctx.runs.create(
            RunRecord(
                run_id=table_run,
                kind="rotation",
                secret=run.secret,
                version_id=run.version_id,
                binding=run.binding,
                parent=run.run_id,
            )
        )
    ctx.runs.update(run.run_id, phase=Phase.SWITCHING)
    return Next.START_TABLES


def _await_tables(ctx: KeyRotationContext, run: RunRecord) -> Next:
    table_run = ctx.runs.get(str(run.data["table_run"]))
    if not RunStatus(table_run.status).final:
        return Next.WAIT
    if table_run.status != RunStatus.SUCCEEDED:
        failed = [o for o in ctx.runs.outcomes(table_run.run_id) if o.status.failed]
        names = "; ".join(f"{o.table}: {o.reason}" for o in failed[:10])
        raise FatalError(
            f"stopped before finishing: {table_run.error or 'the table run failed'}"
            f" ({names}); the old key stays active — fix the cause, then "
            f"`rotator resume {run.run_id}`, or `rotator abort {run.run_id}`"
        )
    ctx.runs.update(run.run_id, phase=Phase.SWITCHED)
    return Next.CONTINUE


def _test_tables(ctx: KeyRotationContext, run: RunRecord) -> Next:
    """testSecret: every table reads with the new key, and none still shows the old one."""
    new_suffix = str(run.data["new_key_id"])[-3:]
    for outcome in ctx.runs.outcomes(str(run.data["table_run"])):
        current = ctx.retry.call(partial(ctx.admin.describe_table, outcome.table))
        if current is None or current.storage.ak_suffix != new_suffix:
            raise FatalError(f"table {outcome.table} is not on the new key")
        ctx.retry.call(partial(ctx.admin.read_back, outcome.table))
    ctx.runs.update(run.run_id, phase=Phase.TESTED)
    return Next.CONTINUE


def _finish(ctx: KeyRotationContext, run: RunRecord) -> Next:
    ctx.writer.make_current(run.secret, run.version_id)
    ctx.runs.update(run.run_id, phase=Phase.FINISHED)
    return Next.CONTINUE


def _retire(ctx: KeyRotationContext, run: RunRecord) -> Next:
    data = dict(run.data)
    now = ctx.clock()
    data.setdefault("deactivate_at", now + float(data.get("deactivate_after", 0)))
    data.setdefault("delete_at", now + float(data.get("delete_after", 7 * 86400)))
    ctx.runs.update(run.run_id, data=data)
    ctx.runs.mark_retiring(run.run_id)  # the schedule deletes the old key when it is due
    if float(data["deactivate_at"]) <= now:
        retire_old_key(ctx, run.run_id, "deactivate")
    ctx.runs.update(
        run.run_id, phase=Phase.RETIRED, status=RunStatus.SUCCEEDED, updated_at=ctx.clock()
    )
    _release(ctx, run)
    return Next.STOP


def _retired(ctx: KeyRotationContext, run: RunRecord) -> Next:
    return Next.STOP


_STEPS = {
    Phase.PLANNED: _create_and_store_key,
    Phase.PENDING_STORED: _start_tables,
    Phase.SWITCHING: _await_tables,
    Phase.SWITCHED: _test_tables,
    Phase.TESTED: _finish,
    Phase.FINISHED: _retire,
    Phase.RETIRED: _retired,
}


def retire_old_key(ctx: KeyRotationContext, run_id: str, action: str) -> str:
    """Deactivate or delete the rotation's old key, once, and only if no table still uses it."""
    run = ctx.runs.get(run_id)
    data = dict(run.data)
    done_field = "deactivated_at" if action == "deactivate" else "deleted_at"
    if data.get(done_field):
        return "already done"
    if run.phase not in (Phase.FINISHED, Phase.RETIRED):
        return "not finished"
    user, key = str(data["user"]), str(data["old_key_id"])
    users = tables_using(ctx.admin, key)
    if users:
        data["retire_blocked"] = f"{len(users)} table(s) still use {masked(key)}"
        ctx.runs.update(run_id, data=data)
        return str(data["retire_blocked"])
    existing = {k.key_id: k for k in ctx.iam.list_keys(user)}
    if key in existing:
        if action == "deactivate":
            ctx.iam.set_active(user, key, False)
        else:
            ctx.iam.delete_key(user, key)
    data[done_field] = ctx.clock()
    data.pop("retire_blocked", None)
    ctx.runs.update(run_id, data=data)
    return "done"


def due_retirements(run: RunRecord, now: float) -> list[str]:
    data = run.data
    actions = []
    if run.phase == Phase.RETIRED:
        if not data.get("deactivated_at") and float(data.get("deactivate_at", 0)) <= now:
            actions.append("deactivate")
        if not data.get("deleted_at") and float(data.get("delete_at", 0)) <= now:
            actions.append("delete")
    return actions


def resume(ctx: KeyRotationContext, run_id: str) -> list[str]:
    """Make a failed or stalled key rotation go on; returns the tables reopened, if any."""
    run = ctx.runs.get(run_id)
    if run.status == RunStatus.SUCCEEDED and run.phase == Phase.RETIRED:
        ctx.runs.mark_retiring(run_id)  # only the old key's retirement is left: keep it scheduled
        return []
    if run.status in (RunStatus.SUCCEEDED, RunStatus.ABORTED):
        raise FatalError(f"run {run_id} is {run.status}: nothing to resume")
    reopened: list[str] = []
    if run.phase == Phase.SWITCHING and run.data.get("table_run"):
        reopened = [str(t) for t in reopen_failed_tables(str(run.data["table_run"]), ctx.runs)]
    ctx.runs.update(run_id, status=RunStatus.SWITCHING, error=None)
    return reopened


def abort(ctx: KeyRotationContext, run_id: str, binding: Binding) -> list[str]:
    """Undo a key rotation that has not finished: tables back on the old key's connection,
    AWSPENDING removed, the new key deleted. Returns the tables switched back."""
    run = ctx.runs.get(run_id)
    if run.phase in (Phase.FINISHED, Phase.RETIRED):
        raise FatalError(f"run {run_id} already moved AWSCURRENT: rotate again instead of aborting")
    if run.status == RunStatus.ABORTED:
        return []
    data = dict(run.data)
    info = ctx.secrets.describe(run.secret)
    old_version = str(data["old_version"])
    old = parse_secret_value(
        ctx.secrets.read_version(info.arn, old_version),
        where=f"secret {info.name} version {old_version}",
    )
    back = connection_name_for(binding, old_version)
    ensure_connection(ctx.admin, back, old)
    switched_back = []
    new_key = data.get("new_key_id")
    if new_key and data.get("table_run"):
        for outcome in ctx.runs.outcomes(str(data["table_run"])):
            current = ctx.admin.describe_table(outcome.table)
            if current is None or current.storage.ak_suffix != str(new_key)[-3:]:
                continue
            result = rotate_table(
                ctx.admin, outcome.table, connection=back, target=old.fingerprint, retry=ctx.retry
            )
            if result.status is TableStatus.FAILED:
                raise FatalError(f"could not switch {outcome.table} back: {result.reason}")
            switched_back.append(str(outcome.table))
    if run.version_id in info.versions:
        ctx.writer.drop_pending(info.arn, run.version_id)
    if new_key:
        if tables_using(ctx.admin, str(new_key)):
            raise FatalError(f"tables still use the new key {masked(str(new_key))}; not deleted")
        if any(k.key_id == new_key for k in ctx.iam.list_keys(str(data["user"]))):
            ctx.iam.delete_key(str(data["user"]), str(new_key))
    ctx.runs.update(run_id, status=RunStatus.ABORTED, error=None, updated_at=ctx.clock())
    _release(ctx, run)
    return switched_back


def _fail(ctx: KeyRotationContext, run: RunRecord, error: str) -> None:
    ctx.runs.update(run.run_id, status=RunStatus.FAILED, error=error, updated_at=ctx.clock())
    _release(ctx, run)


def _release(ctx: KeyRotationContext, run: RunRecord) -> None:
    if ctx.locks is not None:
        ctx.locks.release(run.secret, run.run_id)


def parse_duration(text: str) -> float:
    """``0``, ``90s``, ``15m``, ``2h``, ``7d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    try:
        has_unit = bool(text) and text[-1] in units
        value = float(text[:-1]) * units[text[-1]] if has_unit else float(text)
    except ValueError:
        raise ValueError(f"bad duration {text!r}: use e.g. 0, 90s, 15m, 2h, 7d") from None
    if value < 0:
        raise ValueError(f"bad duration {text!r}: must not be negative")
    return value
