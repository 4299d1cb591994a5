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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial

from worker.domain import masking
from worker.domain.bindings import Binding
from worker.domain.errors import (
    BrownOut,
    FatalError,
    KeyInUse,
    LockBusy,
    Refused,
    RotatorError,
    UnknownSecretError,
    UnreadableEvidence,
)
from worker.domain.model import (
    AccessKeyCredentials,
    PlannedTable,
    RunStatus,
    StoredObject,
)
from worker.domain.ports import (
    AccessKey,
    Admission,
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
from worker.domain.sql import object_label
from worker.flow import gc
from worker.flow import objects as objects_
from worker.flow.evidence import key_usage, refuse_if_used
from worker.flow.fencing import admitted, require_drained, take_fence, wait_until_idle
from worker.flow.rotation import (
    RetryPolicy,
    connection_name_for,
    ensure_connection,
    plan_rotation,
    rotate_object,
)
from worker.flow.runs import list_binding_objects, reopen_failed_tables


class Phase(StrEnum):
    PLANNED = "planned"
    PENDING_STORED = "pending_stored"
    SWITCHING = "switching"
    SWITCHED = "switched"
    TESTED = "tested"
    FINISHED = "finished"
    RETIRED = "retired"


PHASES = list(Phase)


class NotAKeySecret(FatalError):
    pass


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
    tables: list[StoredObject]  # every object (of any kind) that may use the current key
    planned: list[PlannedTable] = field(default_factory=list)  # what the binding will switch
    unreadable: list[StoredObject] = field(default_factory=list)
    allow_empty: bool = False


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


def plan_key_rotation(
    binding: Binding,
    info: SecretInfo,
    *,
    secrets: SecretStore,
    iam: IamKeys,
    admin: DatabendAdmin,
    allow_empty: bool = False,
    bound_secrets: tuple[str, ...] = (),
) -> KeyRotationPlan:
    """What ``rotate --commit`` would do, or why it must not: a spare key that may still be used
    (or cannot be shown unused), a binding that selects an object Databend cannot switch, or one
    that selects no object of any kind (unless ``allow_empty``)."""
    version, credentials, _ = current_credentials(secrets, info)
    user = binding.iam_user or iam.owner_of(credentials.access_key_id)
    keys = sorted(iam.list_keys(user), key=lambda k: k.created_at)
    others = [k for k in keys if k.key_id != credentials.access_key_id]
    to_remove, refusal = None, None
    if len(keys) >= 2:
        victim = others[0] if others else keys[0]
        try:
            refuse_if_used(
                admin, secrets, (*bound_secrets, info.arn), victim.key_id, "remove the spare key"
            )
            to_remove = victim.key_id
        except (KeyInUse, UnreadableEvidence) as exc:
            refusal = (
                f"user {user} already has two access keys and {masked(victim.key_id)} is the one "
                f"the secret does not hold: {exc}. Switch those first; nothing was changed."
            )
    usage = key_usage(admin, credentials.access_key_id)
    plan = plan_rotation(
        binding,
        list_binding_objects(admin, binding),
        connection="",
        target=credentials.fingerprint,
        old_fingerprints={credentials.fingerprint},
    )
    switchable = [p for p in plan.tables if not p.problem]
    if refusal is None and plan.refusals:
        refusal = (
            f"binding {binding.name} selects {len(plan.refusals)} object(s) on storage Databend "
            f"cannot switch to other credentials (only s3, gcs and azblob): "
            f"{'; '.join(plan.refusals[:10])}. Take them out of the binding; nothing was changed."
        )
    if refusal is None and not switchable and not allow_empty:
        refusal = (
            f"binding {binding.name} selects no object to switch (its selectors and discovery "
            "match no table, stage or database), so nothing would prove the new key before the "
            "old one is retired; fix the binding, or pass --allow-empty to rotate a key nothing "
            "uses. Nothing was changed."
        )
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
        tables=usage.users,
        planned=switchable,
        unreadable=usage.unreadable,
        allow_empty=allow_empty,
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
                "allow_empty": plan.allow_empty,
            },
        )
    )
    return run_id


def advance(ctx: KeyRotationContext, run_id: str) -> Next:
    """Do the next step of a key rotation. Fatal errors fail the run (resumable).

    Every step runs fenced: once a newer run of the secret has taken over, or the run was
    aborted, a late step changes nothing."""
    run = ctx.runs.get(run_id)
    if not RunStatus(run.status).active:
        return Next.STOP
    if ctx.locks is not None and not ctx.locks.acquire(run.secret, run_id):
        raise LockBusy(f"another run is rotating secret {run.secret}")
    take_fence(run, ctx.runs, ctx.fences)
    require_drained(ctx.fences, run)
    if run.status == RunStatus.QUEUED:
        ctx.runs.update(run_id, status=RunStatus.SWITCHING, started_at=ctx.clock())
        run.status = RunStatus.SWITCHING
    # one step of a run at a time, whatever number of workers were handed it (duplicates, resume)
    with admitted(ctx.fences, run, "step", lease_seconds=STEP_LEASE, exclusive=True) as verdict:
        if verdict is Admission.BUSY:
            raise LockBusy(f"another worker is running a step of key rotation {run_id}")
        if verdict is not Admission.ADMITTED:
            return Next.STOP
        run = ctx.runs.get(run_id)  # as it is now that this worker has the step
        try:
            return _STEPS[Phase(run.phase or Phase.PLANNED)](ctx, run)
        except FatalError as exc:
            _fail(ctx, run, str(exc))
            return Next.STOP


def _create_and_store_key(ctx: KeyRotationContext, run: RunRecord) -> Next:
    """createSecret: a new key for the user, stored as the AWSPENDING version.

    Order matters for safety: first prove the secret still holds the key this run was planned
    from (a newer rotation may have happened meanwhile), then clean up what this run itself left
    behind, then make room, then create. Every key this run creates is written down before and
    after CreateAccessKey, so a crash between the two is found again; no other key is ever
    deleted as an "orphan", and nothing is deleted that may still be used.
    """
    data = dict(run.data)
    info = ctx.secrets.describe(run.secret)
    stored = _stored_pending(ctx, info, run.version_id)
    if stored is not None:  # stored before a crash: take the key id from it
        data["new_key_id"] = stored.access_key_id
        ctx.runs.update(run.run_id, phase=Phase.PENDING_STORED, data=data)
        return Next.CONTINUE
    user, old_key = str(data["user"]), str(data["old_key_id"])
    _, current, current_value = current_credentials(ctx.secrets, info)
    if current.access_key_id != old_key:
        raise Refused(
            f"the secret's current key changed to {masked(current.access_key_id)} since this "
            "rotation was planned (another rotation ran); nothing was deleted or created: "
            f"`rotator abort {run.run_id}` and start a new rotation if one is still wanted"
        )
    keys = ctx.iam.list_keys(user)
    if "keys_before" not in data:
        data["keys_before"] = [k.key_id for k in keys]
        ctx.runs.update(run.run_id, data=data)  # write-ahead: what existed before we create one
    for orphan in _own_orphans(data, keys, held=_held_keys(ctx, info)):
        _delete_key(ctx, run, user, orphan, "delete the key this run created but never stored")
    keys = ctx.iam.list_keys(user)
    if len(keys) >= 2:
        victim = sorted((k for k in keys if k.key_id != old_key), key=lambda k: k.created_at)[0]
        data["removed_key_id"] = victim.key_id
        ctx.runs.update(run.run_id, data=data)
        _delete_key(ctx, run, user, victim.key_id, "remove the spare key")
    key_id, secret_key = _create_distinct_key(ctx, run, user, old_key)
    data = dict(ctx.runs.get(run.run_id).data)
    value = {k: v for k, v in current_value.items() if k not in _KEY_FIELDS}
    value.update(access_key_id=key_id, secret_access_key=secret_key)
    ctx.writer.put_pending(info.arn, run.version_id, json.dumps(value))
    data["new_key_id"] = key_id
    ctx.runs.update(run.run_id, phase=Phase.PENDING_STORED, data=data)
    return Next.CONTINUE


_LOOK_ALIKE_ATTEMPTS = 8


def _create_distinct_key(
    ctx: KeyRotationContext, run: RunRecord, user: str, old_key: str
) -> tuple[str, str]:
    """CreateAccessKey, recorded before and after; a key Databend would show like the old one
    (same ``******XYZ`` or ``AK***YZ``) is deleted and made again, so that what a table shows
    always tells the two apart."""
    for _ in range(_LOOK_ALIKE_ATTEMPTS):
        data = dict(ctx.runs.get(run.run_id).data)
        data["creating_since"] = data.get("creating_since") or ctx.clock()
        ctx.runs.update(run.run_id, data=data)
        key_id, secret_key = ctx.iam.create_key(user)
        ctx.checkpoint("after-create-key")
        data["created_keys"] = [*data.get("created_keys", []), key_id]
        ctx.runs.update(run.run_id, data=data)
        if not masking.look_alike(key_id, old_key):
            return key_id, secret_key
        _delete_key(ctx, run, user, key_id, "delete a new key that looks like the old one")
    raise FatalError(f"IAM kept returning keys that Databend would show like {masked(old_key)}")


def _own_orphans(
    data: dict[str, object],
    keys: list[AccessKey],
    *,
    held: set[str],
    trust_unrecorded: bool = True,
) -> list[str]:
    """Keys this run created and never stored: recorded after CreateAccessKey, or (a crash came
    between the call and the record) absent from ``keys_before``, created after this run announced
    it was creating one, and held by no version of the secret. The unrecorded kind is trusted only
    while this run still owns the secret (``trust_unrecorded``): once a newer run took over, a key
    made since may be that run's. The fail-closed check before deleting applies to both."""
    before = set(map(str, data.get("keys_before", [])))  # type: ignore[call-overload]
    created = set(map(str, data.get("created_keys", [])))  # type: ignore[call-overload]
    since = data.get("creating_since")
    orphans = []
    for key in keys:
        if key.key_id in before or key.key_id in held:
            continue
        recorded = key.key_id in created
        unrecorded_own = (
            trust_unrecorded and since is not None and key.created_at >= float(since) - 5  # type: ignore[arg-type]
        )
        if recorded or unrecorded_own:
            orphans.append(key.key_id)
    return orphans


def _held_keys(ctx: KeyRotationContext, info: SecretInfo) -> set[str]:
    """Every key id some version of the secret holds, whatever its labels."""
    held = set()
    for version in info.versions.values():
        try:
            value = json.loads(ctx.secrets.read_version(info.arn, version.version_id) or "{}")
        except (ValueError, RotatorError):
            continue
        if isinstance(value, dict):
            held |= {str(value[f]) for f in _KEY_FIELDS if f.endswith(("_id", "Id")) and f in value}
    return held


def _delete_key(
    ctx: KeyRotationContext, run: RunRecord, user: str, key_id: str, action: str
) -> None:
    """DeleteAccessKey, only when the key is provably unused (refuses otherwise)."""
    refuse_if_used(ctx.admin, ctx.secrets, _secrets_to_check(ctx, run), key_id, action)
    ctx.iam.delete_key(user, key_id)


def _secrets_to_check(ctx: KeyRotationContext, run: RunRecord) -> tuple[str, ...]:
    return (*ctx.bound_secrets, run.secret)


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
        names = "; ".join(f"{object_label(o.table)}: {o.reason}" for o in failed[:10])
        raise FatalError(
            f"stopped before finishing: {table_run.error or 'the table run failed'}"
            f" ({names}); the old key stays active — fix the cause, then "
            f"`rotator resume {run.run_id}`, or `rotator abort {run.run_id}`"
        )
    if not ctx.runs.outcomes(table_run.run_id) and not run.data.get("allow_empty"):
        raise Refused(
            "the table run switched no object, so nothing proves the new key before the old one "
            "would be retired; stopped before moving AWSCURRENT (the old key stays active). "
            f"Fix the binding and `rotator resume {run.run_id}`, or `rotator abort {run.run_id}`"
        )
    ctx.runs.update(run.run_id, phase=Phase.SWITCHED)
    return Next.CONTINUE


def _test_tables(ctx: KeyRotationContext, run: RunRecord) -> Next:
    """testSecret: every object of the rotation (table, stage, database default) works with the
    new key, and none still shows the old one."""
    new = masking.held("ak", str(run.data["new_key_id"]))
    old = masking.held("ak", str(run.data["old_key_id"]))
    for outcome in ctx.runs.outcomes(str(run.data["table_run"])):
        name = outcome.table
        current = ctx.retry.call(partial(objects_.describe, ctx.admin, name))
        if current is None or current.storage.unreadable is not None:
            raise FatalError(f"{object_label(name)} cannot be looked at again in Databend")
        if not current.storage.may_hold(new) or current.storage.may_hold(old):
            raise FatalError(f"{object_label(name)} is not on the new key")
        ctx.retry.call(partial(objects_.validate, ctx.admin, name, current))
    ctx.runs.update(run.run_id, phase=Phase.TESTED)
    return Next.CONTINUE


def _finish(ctx: KeyRotationContext, run: RunRecord) -> Next:
    """finishSecret: AWSCURRENT to the new version — only from the version this run started on."""
    info = ctx.secrets.describe(run.secret)
    current = info.version_with_stage("AWSCURRENT")
    if current not in (run.data["old_version"], run.version_id):
        raise Refused(
            f"AWSCURRENT moved to version {current} since this rotation started: not moving it to "
            f"{run.version_id}; `rotator abort {run.run_id}` removes the pending key"
        )
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
    """Deactivate or delete the rotation's old key, once, and only if nothing may still use it.

    Fail closed: every table row must have been read, none may show the key, and no current or
    pending version of a bound secret may hold it. Before deleting, every table of the rotation
    is read again (the old key has been inactive meanwhile): if one cannot be read, the key is
    reactivated and the retirement stops with an alert (a brown-out caught in time).
    """
    run = ctx.runs.get(run_id)
    data = dict(run.data)
    done_field = "deactivated_at" if action == "deactivate" else "deleted_at"
    if data.get(done_field):
        return "already done"
    if run.phase not in (Phase.FINISHED, Phase.RETIRED):
        return "not finished"
    user, key = str(data["user"]), str(data["old_key_id"])
    try:
        refuse_if_used(ctx.admin, ctx.secrets, _secrets_to_check(ctx, run), key, action)
        if action == "delete":
            _brownout_check(ctx, run)
    except (Refused, UnreadableEvidence) as exc:
        data = dict(ctx.runs.get(run_id).data)
        data["retire_blocked"] = str(exc)
        ctx.runs.update(run_id, data=data)
        return str(exc)
    existing = {k.key_id: k for k in ctx.iam.list_keys(user)}
    if key in existing:
        if action == "deactivate":
            ctx.iam.set_active(user, key, False)
        else:
            ctx.iam.delete_key(user, key)
    data[done_field] = ctx.clock()
    data.pop("retire_blocked", None)
    ctx.runs.update(run_id, data=data)
    if action == "delete":
        _drop_dead_connections(ctx, run_id, user, key)
    return "done"


def _drop_dead_connections(ctx: KeyRotationContext, run_id: str, user: str, key: str) -> None:
    """Garbage collection after the old key is gone: the connections the rotator made that hold
    it are dropped (see core/gc.py); a failure here is recorded and never undoes the retirement."""
    data = dict(ctx.runs.get(run_id).data)
    try:
        live = [k.key_id for k in ctx.iam.list_keys(user)]
        live += gc.bound_secret_keys(ctx.secrets, list(ctx.bindings))
        data["connections_dropped"] = gc.drop_after_key_deletion(ctx.admin, ctx.bindings, key, live)
        data.pop("gc_error", None)
    except RotatorError as exc:
        data["gc_error"] = f"dead connections not dropped: {exc}"
    ctx.runs.update(run_id, data=data)


def _brownout_check(ctx: KeyRotationContext, run: RunRecord) -> None:
    """Validate every object the rotation switched (read a table back, list a stage, list a
    database default's bucket through its connection); on any failure reactivate the old key."""
    failures = []
    for outcome in ctx.runs.outcomes(str(run.data.get("table_run", ""))):
        name = outcome.table
        try:
            current = ctx.retry.call(partial(objects_.describe, ctx.admin, name))
            ctx.retry.call(partial(objects_.validate, ctx.admin, name, current))
        except RotatorError as exc:
            failures.append(f"{object_label(name)}: {exc}")
    if not failures:
        return
    user, key = str(run.data["user"]), str(run.data["old_key_id"])
    if any(k.key_id == key and not k.active for k in ctx.iam.list_keys(user)):
        ctx.iam.set_active(user, key, True)
    data = dict(ctx.runs.get(run.run_id).data)
    data.pop("deactivated_at", None)
    data["alert"] = f"brown-out: reactivated {masked(key)}"
    ctx.runs.update(run.run_id, data=data)
    raise BrownOut(
        f"ALERT: {len(failures)} object(s) could not be used while {masked(key)} was inactive, "
        f"so it was reactivated and not deleted: {'; '.join(failures[:5])}"
    )


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
    """Make a failed, stuck or stalled key rotation go on; returns the tables reopened, if any."""
    run = ctx.runs.get(run_id)
    if run.status == RunStatus.SUCCEEDED and run.phase == Phase.RETIRED:
        ctx.runs.mark_retiring(run_id)  # only the old key's retirement is left: keep it scheduled
        return []
    if run.status in (RunStatus.SUCCEEDED, RunStatus.ABORTED, RunStatus.SUPERSEDED):
        hint = f": `rotator abort {run_id}` cleans up its key" if run.status == "superseded" else ""
        raise FatalError(f"run {run_id} is {run.status}: nothing to resume{hint}")
    reopened: list[str] = []
    if run.phase == Phase.SWITCHING and run.data.get("table_run"):
        reopened = [str(t) for t in reopen_failed_tables(str(run.data["table_run"]), ctx.runs)]
    ctx.runs.update(run_id, status=RunStatus.SWITCHING, error=None)
    return reopened


ABORT_WAIT_SECONDS = 120.0


def abort(
    ctx: KeyRotationContext,
    run_id: str,
    binding: Binding,
    *,
    wait_seconds: float = ABORT_WAIT_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Undo a key rotation that has not moved AWSCURRENT. Returns the tables switched back.

    1. The run (and its table run) is marked final first: no change of it is admitted any more.
    2. Changes admitted before are waited for (bounded; on time-out nothing more is done and
       ``abort`` may be asked again).
    3. Every table that may show the new key is switched back to a connection made from the old
       version and read back — only while no newer run of the secret holds the fence.
    4. AWSPENDING is removed, then each key this run created is deleted under the fail-closed
       rule (no table may show it, no live version of a bound secret may hold it).
    Asking again after a refusal or a time-out goes on from where it stopped.
    """
    run = ctx.runs.get(run_id)
    if run.phase in (Phase.FINISHED, Phase.RETIRED):
        raise FatalError(f"run {run_id} already moved AWSCURRENT: rotate again instead of aborting")
    if run.status == RunStatus.ABORTED and run.data.get("abort_done"):
        return []
    table_run = run.data.get("table_run")
    runs_of_it = [run_id] + ([str(table_run)] if table_run else [])
    for rid in runs_of_it:
        _end_for_abort(ctx, rid)
    flying = wait_until_idle(ctx.fences, runs_of_it, timeout=wait_seconds, sleep=sleep)
    if flying:
        raise FatalError(
            f"run {run_id} is marked aborted, but {len(flying)} change(s) were still in flight "
            f"after {wait_seconds:g}s ({', '.join(flying[:5])}); nothing was switched back yet: "
            f"ask `rotator abort {run_id}` again once they have ended"
        )
    switched_back = _switch_back(ctx, run, binding)
    info = ctx.secrets.describe(run.secret)
    if "AWSPENDING" in getattr(info.versions.get(run.version_id), "stages", ()):
        ctx.writer.drop_pending(info.arn, run.version_id)
    user = str(run.data["user"])
    data = dict(ctx.runs.get(run_id).data)
    owns = run.status != RunStatus.SUPERSEDED and _owns_secret(ctx, run)
    mine = set(
        _own_orphans(
            data, ctx.iam.list_keys(user), held=_held_keys(ctx, info), trust_unrecorded=owns
        )
    )
    if data.get("new_key_id"):
        mine.add(str(data["new_key_id"]))
    for key in sorted(mine):
        if any(k.key_id == key for k in ctx.iam.list_keys(user)):
            _delete_key(ctx, run, user, key, "delete the aborted rotation's new key")
    data["abort_done"] = ctx.clock()
    ctx.runs.update(run_id, data=data, error=None)
    _release(ctx, run)
    return switched_back


def _owns_secret(ctx: KeyRotationContext, run: RunRecord) -> bool:
    """Does the run still hold the secret's newest fencing token (no newer run took over)?"""
    return ctx.fences is None or not run.fence or ctx.fences.is_newest(run.secret, run.fence)


def _end_for_abort(ctx: KeyRotationContext, run_id: str) -> None:
    try:
        run = ctx.runs.get(run_id)
    except RotatorError:
        return
    if run.status not in (RunStatus.SUPERSEDED, RunStatus.ABORTED):
        ctx.runs.update(run_id, status=RunStatus.ABORTED, error="aborted")


def _switch_back(ctx: KeyRotationContext, run: RunRecord, binding: Binding) -> list[str]:
    """Objects (of every kind) that may show the new key, back onto the old version's
    credentials."""
    new_key = run.data.get("new_key_id")
    if not new_key:
        return []
    if not _owns_secret(ctx, run):
        return []  # a newer run of the secret owns the tables now: not ours to move
    info = ctx.secrets.describe(run.secret)
    old_version = str(run.data["old_version"])
    old = parse_secret_value(
        ctx.secrets.read_version(info.arn, old_version),
        where=f"secret {info.name} version {old_version}",
    )
    new = masking.held("ak", str(new_key))
    usage = key_usage(ctx.admin, str(new_key))
    if usage.unreadable:
        names = ", ".join(object_label(t.name) for t in usage.unreadable[:5])
        raise UnreadableEvidence(f"cannot tell which objects show the new key: {names}")
    # only the objects this rotation planned: another team's object that happens to look like the
    # new key (1 in 1,024 in the current form) is not ours to move; its deletion refuses instead
    planned = {o.table for o in ctx.runs.outcomes(str(run.data.get("table_run", "")))}
    candidates = sorted({t.name for t in usage.users} & planned, key=object_label)
    if not candidates:
        return []
    back = connection_name_for(binding, old_version)
    ensure_connection(ctx.admin, back, old)
    switched_back = []
    for table in candidates:
        with _abort_admitted(ctx, run, f"abort:{object_label(table)}") as verdict:
            if verdict is not Admission.ADMITTED:
                break  # taken over while switching back: its objects are not ours to move
            current = objects_.describe(ctx.admin, table)
            if current is None or not current.storage.may_hold(new):
                continue
            result = rotate_object(
                ctx.admin, table, connection=back, target=old.fingerprint, retry=ctx.retry
            )
        if result.status.failed:
            raise FatalError(f"could not switch {object_label(table)} back: {result.reason}")
        switched_back.append(object_label(table))
    return switched_back


@contextmanager
def _abort_admitted(ctx: KeyRotationContext, run: RunRecord, item: str) -> Iterator[Admission]:
    """An abort's own change: admitted while the aborted run still holds the newest token (the
    run itself is final by then), and in flight until it ends, so that a newer run of the secret
    waits for it before touching anything."""
    if ctx.fences is None or not run.fence:
        yield Admission.ADMITTED
        return
    verdict = ctx.fences.enter(
        run.run_id, item, secret_arn=run.secret, token=run.fence, require_active=False
    )
    try:
        yield verdict
    finally:
        if verdict is Admission.ADMITTED:
            ctx.fences.leave(run.run_id, item)


def _fail(ctx: KeyRotationContext, run: RunRecord, error: str) -> None:
    ctx.runs.update(run.run_id, status=RunStatus.FAILED, error=error)
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
