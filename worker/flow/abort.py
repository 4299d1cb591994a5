"""Abort a key rotation that has not moved AWSCURRENT: end the run, wait for admitted changes,
switch its objects back to the old version, remove AWSPENDING and delete the keys it created."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from worker.domain import masking
from worker.domain.bindings import Binding
from worker.domain.errors import (
    FatalError,
    PartlyDone,
    Refused,
    RotatorError,
    UnreadableEvidence,
)
from worker.domain.model import RunStatus
from worker.domain.ports import Admission, RunRecord, SecretInfo
from worker.domain.secret_value import parse_secret_value
from worker.domain.sql import object_label
from worker.flow import objects as objects_
from worker.flow.evidence import key_usage
from worker.flow.fencing import wait_until_idle
from worker.flow.key_context import KeyRotationContext, Phase, release
from worker.flow.key_create import delete_key, held_keys, own_orphans
from worker.flow.rotation import connection_name_for, ensure_connection
from worker.flow.switch import rotate_object

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
    run = _not_past_awscurrent(ctx.runs.get(run_id))
    if run.status == RunStatus.ABORTED and run.data.get("abort_done"):
        return []
    run = _stop(ctx, run, wait_seconds, sleep)
    switched_back = _switch_back(ctx, run, binding)
    info = ctx.secrets.describe(run.secret)
    if "AWSPENDING" in getattr(info.versions.get(run.version_id), "stages", ()):
        ctx.writer.drop_pending(info.arn, run.version_id)
        if ctx.fences is not None:
            ctx.fences.labels_moved()  # a change checked before must end before its key goes
    try:
        _delete_new_keys(ctx, run, dict(ctx.runs.get(run_id).data), info)
    except (Refused, UnreadableEvidence) as exc:
        release(ctx, run)  # the rest is done: a newer rotation need not wait for the lock
        _kept_new_key(ctx, run_id, switched_back, str(exc))
    data = dict(ctx.runs.get(run_id).data)  # as the deletions left it (connections dropped)
    data.pop("abort_blocked", None)
    data["abort_done"] = ctx.clock()
    ctx.runs.update(run_id, data=data, error=None)
    release(ctx, run)
    return switched_back


def _kept_new_key(ctx: KeyRotationContext, run_id: str, switched_back: list[str], why: str) -> None:
    """The abort switched its objects back and removed AWSPENDING, but a key it made may still
    be in use: kept, the reason recorded in the run (``abort_blocked``, shown by `rotator
    status`), and PartlyDone says what was done (exit 1, not "nothing changed")."""
    data = dict(ctx.runs.get(run_id).data)
    data["abort_blocked"] = why
    ctx.runs.update(run_id, data=data)
    raise PartlyDone(
        f"run {run_id} aborted: {len(switched_back)} object(s) switched back to the old key, "
        f"AWSPENDING removed; but {why}. Ask `rotator abort {run_id}` again once nothing uses it"
    )


def _stop(
    ctx: KeyRotationContext, run: RunRecord, wait_seconds: float, sleep: Callable[[float], None]
) -> RunRecord:
    """Steps 1 and 2: mark the run (and its table run) final, wait for the changes admitted
    before; the run as it stands then (AWSCURRENT still not moved by it)."""
    run_id = run.run_id
    while True:
        # a step admitted before the run was marked may start the table run meanwhile: once that
        # step has ended, a table run that appeared is ended and waited for too
        run = _mark_aborted(ctx, run)
        table_run = run.data.get("table_run")
        runs_of_it = [run_id] + ([str(table_run)] if table_run else [])
        if table_run:
            _end_for_abort(ctx, str(table_run))
        flying = wait_until_idle(ctx.fences, runs_of_it, timeout=wait_seconds, sleep=sleep)
        if flying:
            raise FatalError(
                f"run {run_id} is marked aborted, but {len(flying)} change(s) were still in "
                f"flight after {wait_seconds:g}s ({', '.join(flying[:5])}); nothing was switched "
                f"back yet: ask `rotator abort {run_id}` again once they have ended"
            )
        # a step admitted before the mark may have moved AWSCURRENT meanwhile
        run = _not_past_awscurrent(ctx.runs.get(run_id))
        if run.data.get("table_run") == table_run:
            return run


def _delete_new_keys(
    ctx: KeyRotationContext, run: RunRecord, data: dict[str, Any], info: SecretInfo
) -> None:
    """Step 4's keys: the run's new key and the orphans it may have left, each deleted under the
    fail-closed rule."""
    user = str(run.data["user"])
    owns = run.status != RunStatus.SUPERSEDED and _owns_secret(ctx, run)
    mine = set(
        own_orphans(data, ctx.iam.list_keys(user), held=held_keys(ctx, info), trust_unrecorded=owns)
    )
    if data.get("new_key_id"):
        mine.add(str(data["new_key_id"]))
    for key in sorted(mine):
        if any(k.key_id == key for k in ctx.iam.list_keys(user)):
            delete_key(ctx, run, user, key, "delete the aborted rotation's new key")


def _owns_secret(ctx: KeyRotationContext, run: RunRecord) -> bool:
    """Does the run still hold the secret's newest fencing token (no newer run took over)?"""
    return ctx.fences is None or not run.fence or ctx.fences.is_newest(run.secret, run.fence)


def _not_past_awscurrent(run: RunRecord) -> RunRecord:
    if run.phase in (Phase.FINISHED, Phase.RETIRED):
        raise FatalError(
            f"run {run.run_id} already moved AWSCURRENT: rotate again instead of aborting"
        )
    return run


def _mark_aborted(ctx: KeyRotationContext, run: RunRecord) -> RunRecord:
    """The key rotation marked aborted, only while it stands where it was read: another worker's
    step may move it on meanwhile, up to moving AWSCURRENT and retiring the old key (then there
    is nothing left to abort). Returns the run as marked."""
    while run.status not in (RunStatus.SUPERSEDED, RunStatus.ABORTED):
        seen = {"status": run.status, "phase": run.phase}
        if ctx.runs.update_if(run.run_id, seen, status=RunStatus.ABORTED, error="aborted"):
            return ctx.runs.get(run.run_id)
        run = _not_past_awscurrent(ctx.runs.get(run.run_id))
    return run


def _end_for_abort(ctx: KeyRotationContext, run_id: str) -> None:
    try:
        run = ctx.runs.get(run_id)
    except RotatorError:
        return
    if run.status not in (RunStatus.SUPERSEDED, RunStatus.ABORTED):
        ctx.runs.update(run_id, status=RunStatus.ABORTED, error="aborted")


def _switch_back(ctx: KeyRotationContext, run: RunRecord, binding: Binding) -> list[str]:
    """Objects (of every kind) that may show the new key, back onto the credentials of the
    version the rotation started from, or of AWSCURRENT's when someone else has made a newer
    version current since (the old version is behind it, its key theirs to retire). An operator
    who moved AWSCURRENT back to an older version meanwhile is followed by that move's own run,
    as ever: the objects go back to where the rotation found them first."""
    new_key = run.data.get("new_key_id")
    if not new_key:
        return []
    if not _owns_secret(ctx, run):
        return []  # a newer run of the secret owns the tables now: not ours to move
    info = ctx.secrets.describe(run.secret)
    old_version = str(run.data["old_version"])
    awscurrent = info.version_with_stage("AWSCURRENT")
    if awscurrent not in (None, run.version_id) and _newer(info, str(awscurrent), than=old_version):
        old_version = str(awscurrent)
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


def _newer(info: SecretInfo, version: str, *, than: str) -> bool:
    mine, theirs = info.versions.get(version), info.versions.get(than)
    if mine is None or theirs is None:
        return False
    return (mine.created_at or 0.0) > (theirs.created_at or 0.0)


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
