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

import math
import uuid
from functools import partial

from worker.domain import masking
from worker.domain.errors import (
    ConfigError,
    FatalError,
    KeyInUse,
    LockBusy,
    NotAKeySecret,
    Refused,
    RotatorError,
)
from worker.domain.model import RunKind, RunStatus
from worker.domain.ports import (
    Admission,
    RunRecord,
    RunStore,
)
from worker.domain.sql import object_label
from worker.flow import objects as objects_
from worker.flow.abort import ABORT_WAIT_SECONDS, abort
from worker.flow.evidence import wait_for_changes_onto
from worker.flow.fencing import admitted, require_drained, take_fence
from worker.flow.key_context import (
    PHASES,
    STEP_LEASE,
    KeyRotationContext,
    Next,
    Phase,
    current_credentials,
    fail,
    masked,
    release,
    unfinished_key_rotation,
)
from worker.flow.key_create import create_and_store_key
from worker.flow.key_plan import KeyRotationPlan, plan_key_rotation
from worker.flow.retire import due_retirements, retire_old_key
from worker.flow.runs import reopen_failed_tables, resume_switching
from worker.flow.switch import MOVED_MEANWHILE

# The story's other steps live beside this module (key_plan, key_context, key_create, retire,
# abort); their names are exported here too, so callers import one module for a key rotation.
__all__ = [
    "ABORT_WAIT_SECONDS",
    "PHASES",
    "STEP_LEASE",
    "KeyInUse",
    "KeyRotationContext",
    "KeyRotationPlan",
    "Next",
    "NotAKeySecret",
    "Phase",
    "abort",
    "advance",
    "current_credentials",
    "due_retirements",
    "masked",
    "new_key_rotation",
    "parse_duration",
    "plan_key_rotation",
    "resume",
    "retire_old_key",
]


def new_key_rotation(
    runs: RunStore,
    plan: KeyRotationPlan,
    *,
    deactivate_after: float,
    delete_after: float,
    alone: bool = True,
) -> str:
    """Record a key rotation run (nothing external is changed yet). ``alone``: refused (nothing
    recorded) while another key rotation of the secret has not ended, checked and recorded in
    one step, so two started at the same moment (two operators, a schedule's tick) cannot both
    be; the models of Secrets Manager's own schedule, which does not look, pass False."""
    if plan.refusal:
        raise KeyInUse(plan.refusal)
    check_retirement_delays(deactivate_after, delete_after)
    run_id = uuid.uuid4().hex
    blocking = runs.create(
        RunRecord(
            run_id=run_id,
            kind=RunKind.KEY_ROTATION,
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
        ),
        alone=alone,  # a second rotation started meanwhile would make a third key behind its back
    )
    if blocking is not None:
        raise FatalError(
            unfinished_key_rotation(runs, plan.secret_arn)
            or f"key rotation {blocking} of this secret has not ended"
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
        # conditional: an abort since the check above is not undone by this write
        if not ctx.runs.update_unless_final(
            run_id, status=RunStatus.SWITCHING, started_at=ctx.clock()
        ):
            return Next.STOP
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
            fail(ctx, run, str(exc))
            return Next.STOP


def _start_tables(ctx: KeyRotationContext, run: RunRecord) -> Next:
    """Start the table run — once no migration's or rollback's change that may land on the old
    key, admitted before the new key was stored as AWSPENDING, is in flight (LockBusy: the step
    is tried again shortly). One could otherwise commit onto the old key after the table run
    switched that object, and the test step would find it there; later ones are refused."""
    if ctx.fences is not None:
        wait_for_changes_onto(
            ctx.fences,
            ctx.runs,
            str(run.data["old_key_id"]),
            "checked before the new key was stored, before switching tables",
            checked_before=ctx.fences.labels_epoch(),
        )
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
                kind=RunKind.ROTATION,
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
        # (one a migration moved elsewhere since the plan need only be off the old key)
        moved = outcome.reason == MOVED_MEANWHILE
        if current.storage.may_hold(old) or not (moved or current.storage.may_hold(new)):
            raise FatalError(f"{object_label(name)} is not on the new key")
        ctx.retry.call(partial(objects_.validate, ctx.admin, name, current))
    ctx.runs.update(run.run_id, phase=Phase.TESTED)
    return Next.CONTINUE


# admissions held while AWSCURRENT moves, at most this long should the mover die meanwhile
LABELS_MOVING_SECONDS = 60.0


def _finish(ctx: KeyRotationContext, run: RunRecord) -> Next:
    """finishSecret: AWSCURRENT to the new version — only from the version this run started on.

    A running migration (or rollback) checks its target's key against the labels right before
    each object, and Databend commits its ALTER a moment later: one checked while the old key
    was AWSCURRENT must not commit after the label has moved. So admissions are held while
    AWSCURRENT moves, and it moves only once no change that may land on the old key is in
    flight (LockBusy: the step is tried again shortly); then the labels are marked moved and
    every later check reads them afresh."""
    info = ctx.secrets.describe(run.secret)
    current = info.version_with_stage("AWSCURRENT")
    if current not in (run.data["old_version"], run.version_id):
        raise Refused(
            f"AWSCURRENT moved to version {current} since this rotation started: not moving it to "
            f"{run.version_id}; `rotator abort {run.run_id}` removes the pending key"
        )
    if ctx.fences is not None and current != run.version_id:
        ctx.fences.labels_moving(LABELS_MOVING_SECONDS)
        old_key, why = str(run.data["old_key_id"]), "checked while it was AWSCURRENT"
        wait_for_changes_onto(ctx.fences, ctx.runs, old_key, f"{why} before moving AWSCURRENT")
    ctx.writer.make_current(run.secret, run.version_id)
    if ctx.fences is not None:
        ctx.fences.labels_moved()  # admissions go on, and check their targets on fresh labels
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
    release(ctx, run)
    return Next.STOP


def _retired(ctx: KeyRotationContext, run: RunRecord) -> Next:
    return Next.STOP


_STEPS = {
    Phase.PLANNED: create_and_store_key,
    Phase.PENDING_STORED: _start_tables,
    Phase.SWITCHING: _await_tables,
    Phase.SWITCHED: _test_tables,
    Phase.TESTED: _finish,
    Phase.FINISHED: _retire,
    Phase.RETIRED: _retired,
}


def resume(ctx: KeyRotationContext, run_id: str) -> list[str]:
    """Make a failed, stuck or stalled key rotation go on; returns the tables reopened, if any."""
    run = ctx.runs.get(run_id)
    retired = run.data.get("deactivated_at") and run.data.get("deleted_at")
    if run.status == RunStatus.SUCCEEDED and run.phase == Phase.RETIRED and not retired:
        ctx.runs.mark_retiring(run_id)  # only the old key's retirement is left: keep it scheduled
        return []
    if run.status in (RunStatus.SUCCEEDED, RunStatus.ABORTED, RunStatus.SUPERSEDED):
        hint = f": `rotator abort {run_id}` cleans up its key" if run.status == "superseded" else ""
        raise FatalError(f"run {run_id} is {run.status}: nothing to resume{hint}")
    # (an abort meanwhile: its key is going; a second resume at once would queue every
    # object's batch twice)
    resume_switching(run_id, ctx.runs, run.status, since=run.updated_at)
    if run.phase == Phase.SWITCHING and run.data.get("table_run"):
        return [str(t) for t in reopen_failed_tables(str(run.data["table_run"]), ctx.runs)]
    return []


def check_retirement_delays(deactivate_after: float, delete_after: float) -> None:
    """The old key is deleted only after it was deactivated and every object proved to work
    without it (the brown-out check): a delete due before the deactivation is refused."""
    if delete_after < deactivate_after:
        raise ConfigError(
            f"--delete-after ({delete_after:g}s) is shorter than --deactivate-after "
            f"({deactivate_after:g}s): the old key is deleted only after it was deactivated "
            "and every object still worked without it"
        )


def parse_duration(text: str) -> float:
    """``0``, ``90s``, ``15m``, ``2h``, ``7d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    try:
        has_unit = bool(text) and text[-1] in units
        value = float(text[:-1]) * units[text[-1]] if has_unit else float(text)
    except ValueError:
        raise ValueError(f"bad duration {text!r}: use e.g. 0, 90s, 15m, 2h, 7d") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"bad duration {text!r}: must be a finite number, not negative")
    return value
