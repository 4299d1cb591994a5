"""createSecret: a new access key for the user, stored as AWSPENDING (see key_rotation.py).

Every key this run creates is written down before and after CreateAccessKey; a crash between the
two leaves an orphan that only this run's record can claim, and a key Databend would show like the
old one is made again. Nothing is deleted that may still be used (``delete_key``)."""

from __future__ import annotations

import json

from worker.domain import masking
from worker.domain.errors import (
    FatalError,
    NotAKeySecret,
    Refused,
    RotatorError,
    UnknownSecretError,
)
from worker.domain.model import AccessKeyCredentials
from worker.domain.ports import AccessKey, RunRecord, SecretInfo
from worker.domain.secret_value import parse_secret_value
from worker.flow import gc
from worker.flow.evidence import refuse_if_used
from worker.flow.key_context import (
    KeyRotationContext,
    Next,
    Phase,
    current_credentials,
    masked,
)


def create_and_store_key(ctx: KeyRotationContext, run: RunRecord) -> Next:
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
        _pending_stored(ctx)  # (again: the crash may have come before the first mark)
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
    for orphan in own_orphans(data, keys, held=held_keys(ctx, info)):
        delete_key(ctx, run, user, orphan, "delete the key this run created but never stored")
    keys = ctx.iam.list_keys(user)
    if len(keys) >= 2:
        victim = sorted((k for k in keys if k.key_id != old_key), key=lambda k: k.created_at)[0]
        data = dict(ctx.runs.get(run.run_id).data)  # as the deletions left it
        data["removed_key_id"] = victim.key_id
        ctx.runs.update(run.run_id, data=data)
        delete_key(ctx, run, user, victim.key_id, "remove the spare key")
    key_id, secret_key = _create_distinct_key(ctx, run, user, old_key)
    data = dict(ctx.runs.get(run.run_id).data)
    value = {k: v for k, v in current_value.items() if k not in _KEY_FIELDS}
    value.update(access_key_id=key_id, secret_access_key=secret_key)
    ctx.writer.put_pending(info.arn, run.version_id, json.dumps(value))
    _pending_stored(ctx)
    data["new_key_id"] = key_id
    ctx.runs.update(run.run_id, phase=Phase.PENDING_STORED, data=data)
    return Next.CONTINUE


def _pending_stored(ctx: KeyRotationContext) -> None:
    """The new key is AWSPENDING: from now on the old key is one the secret is being rotated
    away from, and no migration or rollback moves an object onto it (worker/flow/stale.py).
    Marking the labels moved makes every running one check again on fresh labels; the table run
    starts once the changes admitted on the older view have ended (key_rotation._start_tables)."""
    if ctx.fences is not None:
        ctx.fences.labels_moved()


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
        delete_key(ctx, run, user, key_id, "delete a new key that looks like the old one")
    raise FatalError(f"IAM kept returning keys that Databend would show like {masked(old_key)}")


def own_orphans(
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


def held_keys(ctx: KeyRotationContext, info: SecretInfo) -> set[str]:
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


def delete_key(
    ctx: KeyRotationContext, run: RunRecord, user: str, key_id: str, action: str
) -> None:
    """DeleteAccessKey, only when the key is provably unused (refuses otherwise); then the
    rotator's own connections holding it are dropped."""
    secrets = secrets_to_check(ctx, run)
    refuse_if_used(
        ctx.admin, ctx.secrets, secrets, key_id, action, fences=ctx.fences, runs=ctx.runs
    )
    ctx.iam.delete_key(user, key_id)
    drop_dead_connections(ctx, run.run_id, user, key_id)


def drop_dead_connections(ctx: KeyRotationContext, run_id: str, user: str, key: str) -> None:
    """Garbage collection after a key is deleted: the connections the rotator made that hold it
    are dropped (see flow/gc.py), recorded in the run's ``connections_dropped``; a failure is
    recorded (``gc_error``) and never undoes the deletion."""
    data = dict(ctx.runs.get(run_id).data)
    try:
        live = [k.key_id for k in ctx.iam.list_keys(user)]
        live += gc.bound_secret_keys(ctx.secrets, list(ctx.bindings))
        dropped = gc.drop_after_key_deletion(ctx.admin, ctx.bindings, key, live)
        data["connections_dropped"] = [*data.get("connections_dropped", []), *dropped]
        data.pop("gc_error", None)
    except RotatorError as exc:
        data["gc_error"] = f"dead connections not dropped: {exc}"
    ctx.runs.update(run_id, data=data)


def secrets_to_check(ctx: KeyRotationContext, run: RunRecord) -> tuple[str, ...]:
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
