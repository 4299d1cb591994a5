"""Retire the old key of a finished key rotation: deactivate, then delete when due, each only if
nothing may still use the key; before deleting, a brown-out check reads every switched object
again and reactivates the key on any failure. Afterwards, dead connections are collected."""

from __future__ import annotations

import contextlib
from functools import partial

from worker.domain.errors import BrownOut, Refused, RotatorError, SlotTimeout, UnreadableEvidence
from worker.domain.model import AccessKeyCredentials
from worker.domain.ports import Limits, RunRecord
from worker.domain.secret_value import parse_secret_value
from worker.domain.sql import object_label
from worker.flow import objects as objects_
from worker.flow.evidence import refuse_if_used
from worker.flow.key_context import KeyRotationContext, Phase, masked
from worker.flow.key_create import drop_dead_connections, secrets_to_check


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
    if action == "delete" and not data.get("deactivated_at"):
        return "not deactivated yet"  # the brown-out check needs the key inactive first
    user, key = str(data["user"]), str(data["old_key_id"])
    try:
        refuse_if_used(
            ctx.admin,
            ctx.secrets,
            secrets_to_check(ctx, run),
            key,
            action,
            fences=ctx.fences,
            runs=ctx.runs,
            secret_key=_old_secret_key(ctx, run, key),
        )
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
    if action == "deactivate":
        # inactive for as long as the run asked before the delete, also when the deactivation
        # came late (its retirement was blocked): a reversible window, never a few seconds
        planned_at = float(data.get("deactivate_at", 0))
        gap = max(0.0, float(data.get("delete_at", planned_at)) - planned_at)  # (_retire set both)
        data["delete_at"] = max(float(data.get("delete_at", 0)), data[done_field] + gap)
    data.pop("retire_blocked", None)
    ctx.runs.update(run_id, data=data)
    if action == "delete":
        drop_dead_connections(ctx, run_id, user, key)
    return "done"


def _old_secret_key(ctx: KeyRotationContext, run: RunRecord, key: str) -> str | None:
    """The old key's secret key, from the version the rotation started from (None when that
    version cannot be read or holds another key: the evidence then rests on key ids alone)."""
    try:
        version = run.data.get("old_version")
        if not version:
            return None
        value = ctx.secrets.read_version(run.secret, str(version))
        credentials = parse_secret_value(value, where="the old version")
    except RotatorError:
        return None
    if isinstance(credentials, AccessKeyCredentials) and credentials.access_key_id == key:
        return credentials.secret_access_key
    return None


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


def retire_due(
    ctx: KeyRotationContext, limits: Limits, run_id: str, now: float
) -> list[tuple[str, str]] | None:
    """One sweep over a retiring run: each due action (deactivate, delete) and what came of it;
    the run leaves the retiring set once its old key is deactivated and deleted.

    One sweep at a time per run, across workers (a slot of 1 in the shared limits, kept alive
    while the sweep runs): a sweep sent while another still checks the run (a brown-out check
    of thousands of objects can outlast the beat's interval) leaves it to that one and returns
    None. Otherwise one sweep's brown-out could reactivate the key while another, whose check
    had passed, deletes it."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(limits.slot(f"retire:{run_id}", 1, wait=0))
        except SlotTimeout:
            return None
        done: list[tuple[str, str]] = []
        # asked again after each step: a late deactivation moves the delete on (retire_old_key)
        while (due := due_retirements(ctx.runs.get(run_id), now)) and due[0] not in dict(done):
            done.append((due[0], retire_old_key(ctx, run_id, due[0])))
        data = ctx.runs.get(run_id).data
        if data.get("deactivated_at") and data.get("deleted_at"):
            ctx.runs.unmark_retiring(run_id)
        return done


def due_retirements(run: RunRecord, now: float) -> list[str]:
    data = run.data
    actions = []
    if run.phase == Phase.RETIRED:
        delete_due = not data.get("deleted_at") and float(data.get("delete_at", 0)) <= now
        # never a delete before the deactivation and its brown-out check (which, when it
        # fails, raises before the delete is reached)
        deactivate_due = float(data.get("deactivate_at", 0)) <= now or delete_due
        if not data.get("deactivated_at") and deactivate_due:
            actions.append("deactivate")
        if delete_due:
            actions.append("delete")
    return actions
