"""Prepare a rotation run: lock, read the version, plan, connect, pre-flight, write the plan.

Nothing is switched here: every object the plan names is written down as pending before the first
ALTER (worker/flow/runs/switch.py does those, one object at a time).
"""

from __future__ import annotations

import time

from worker.domain import masking
from worker.domain.bindings import Binding, binding_covering
from worker.domain.errors import (
    FatalError,
    LockBusy,
    PreflightFailed,
    Refused,
    SecretFormatError,
    UnknownSecretError,
)
from worker.domain.model import (
    Credentials,
    RotationPlan,
    RunKind,
    RunStatus,
    StoredObject,
    TableOutcome,
    TableStatus,
)
from worker.domain.ports import (
    Admission,
    DatabendAdmin,
    Fences,
    IntakeState,
    RunRecord,
    RunStore,
    SecretInfo,
    SecretLocks,
    SecretStore,
)
from worker.domain.secret_value import parse_secret_value
from worker.domain.sql import ObjectName, TableName
from worker.flow import objects as objects_
from worker.flow.fencing import admitted, require_drained, take_fence
from worker.flow.rotation import (
    connection_name_for,
    ensure_connection,
    plan_rotation,
    secret_keys_of,
)
from worker.flow.runs.close import close_run, lock_owner, release

_ROTATION_STAGES = ("AWSCURRENT", "AWSPREVIOUS", "AWSPENDING")


def prepare_rotation(
    run_id: str,
    *,
    runs: RunStore,
    secrets: SecretStore,
    admin: DatabendAdmin,
    bindings: list[Binding],
    locks: SecretLocks | None = None,
    newest: IntakeState | None = None,
    fences: Fences | None = None,
) -> list[ObjectName]:
    """Plan the run and return the objects still to switch (empty when the run is over).

    Takes the secret's lock and fencing token, reads the version, plans every object, refuses
    (nothing changed) when the binding selects one Databend cannot switch, creates the
    connection, proves it can list every bucket involved (pre-flight), and writes the plan (every
    object pending) before any object is touched (a plan of one table leaves that proof to the
    table's own ALTER: see ``preflight``). Raises LockBusy (retryable) while another run
    holds the secret.
    """
    run = runs.get(run_id)
    if not RunStatus(run.status).active:
        return []
    if locks is not None and not locks.acquire(run.secret, lock_owner(run)):
        raise LockBusy(f"another run is rotating secret {run.secret}")
    info: SecretInfo | None = None  # read once: the skip decision and the plan see the same
    if run.status != RunStatus.SWITCHING:  # decided before it takes over anything
        info, skipped = _skip_or_start(run, secrets=secrets, runs=runs, newest=newest, locks=locks)
        if skipped:
            return []
    take_fence(run, runs, fences)
    require_drained(fences, run)
    if run.status == RunStatus.SWITCHING:
        # redelivered (or resumed) after the plan was written: the same tables again
        return _still_pending(run, runs, locks)
    # from here on, a status written after reading it must not undo an abort (or a newer run's
    # takeover) that came in between: each is a conditional write. Nor may it undo another
    # worker's plan (a duplicate start taken at the same time): this one then goes on as a
    # redelivery, and the plan's batches are never left running beside a second planning
    while not runs.update_if(
        run_id, {"status": run.status}, status=RunStatus.PLANNING, started_at=time.time()
    ):
        run = runs.get(run_id)
        if not RunStatus(run.status).active:
            release(locks, run)
            return []
        if run.status == RunStatus.SWITCHING:
            return _still_pending(run, runs, locks)
    run.status = RunStatus.PLANNING
    with admitted(fences, run, "plan") as verdict:
        if verdict is not Admission.ADMITTED:
            release(locks, run)
            return []
        try:
            plan = _plan(
                run,
                info or secrets.describe(run.secret),
                runs=runs,
                secrets=secrets,
                admin=admin,
                bindings=bindings,
            )
        except FatalError as exc:
            _fail(run, runs, locks, exc)
            raise
    return _write_plan(run, plan, runs, locks)


def _skip_or_start(
    run: RunRecord,
    *,
    secrets: SecretStore,
    runs: RunStore,
    newest: IntakeState | None,
    locks: SecretLocks | None,
) -> tuple[SecretInfo | None, bool]:
    """The secret's description (read unless the run is a key rotation's) and whether the run
    was recorded SKIPPED (see ``_skip_reason``); a FatalError (an operator's version that is not
    AWSCURRENT: ``refuse_behind_awscurrent``) fails the run, before it takes the secret's fence
    from a run it would only undo, and propagates."""
    info: SecretInfo | None = None
    try:
        if run.newest_wins or not run.parent:
            info = secrets.describe(run.secret)
            if not run.newest_wins:  # an operator's run of one version
                refuse_behind_awscurrent(info, run.version_id)
        skip = _skip_reason(run, info, runs=runs, newest=newest)
    except FatalError as exc:
        _fail(run, runs, locks, exc)
        raise
    if skip is not None:  # skipped before it started: it changes nothing
        runs.update_unless_final(run.run_id, status=RunStatus.SKIPPED, error=skip)
        release(locks, run)
    return info, skip is not None


def refuse_behind_awscurrent(info: SecretInfo, version_id: str) -> None:
    """A version AWSCURRENT does not hold is not applied: it would move objects behind the
    secret, onto a key that may be on its way out (a key rotation deactivates and deletes the
    key it rotated away from). To go back to an older version, move AWSCURRENT to it: that move
    has a run of its own."""
    current = info.version_with_stage("AWSCURRENT")
    if current is not None and current != version_id:
        raise Refused(
            f"version {version_id} of {info.name} is not AWSCURRENT (version {current} is): "
            "applying it would move objects behind the secret, onto a key that may be retired; "
            "nothing was changed (to go back to it, move AWSCURRENT to it)"
        )


def _fail(run: RunRecord, runs: RunStore, locks: SecretLocks | None, exc: FatalError) -> None:
    runs.update_unless_final(run.run_id, status=RunStatus.FAILED, error=str(exc))
    release(locks, run)


def _still_pending(run: RunRecord, runs: RunStore, locks: SecretLocks | None) -> list[ObjectName]:
    """What is left to switch; a run with nothing left is closed (its last write may have been
    cut short before it could close it)."""
    pending = runs.pending(run.run_id)
    if not pending:
        close_run(run.run_id, runs, locks)
    return pending


def _write_plan(
    run: RunRecord, plan: RotationPlan, runs: RunStore, locks: SecretLocks | None
) -> list[ObjectName]:
    """Every planned object pending (one the plan refuses: failed with its problem), then the
    run SWITCHING, unless it ended meanwhile (then none of its objects is switched)."""
    outcomes = []
    for planned in plan.tables:
        outcome = TableOutcome(table=planned.table, rule=planned.rule, previous=planned.current)
        if planned.problem:
            outcome.status, outcome.reason = TableStatus.FAILED, planned.problem
        outcomes.append(outcome)
    runs.set_plan(run.run_id, outcomes)
    if not runs.update_unless_final(run.run_id, status=RunStatus.SWITCHING, notes=list(plan.notes)):
        release(locks, run)
        return []
    return _still_pending(run, runs, locks)


def _skip_reason(
    run: RunRecord, info: SecretInfo | None, *, runs: RunStore, newest: IntakeState | None
) -> str | None:
    """Why an event-driven run must not start, if it must not.

    It applies what AWSCURRENT holds when it plans, nothing older: the label may have moved on
    before this run's turn came (its event still on the way). An operator who moves AWSCURRENT
    back is obeyed: the label decides, not dates. And the label move a key rotation makes is its
    own: that rotation finishes (and retires the old key), a run of ours would only supersede it.
    """
    if not run.newest_wins or info is None:
        return None
    outdated = info.version_with_stage("AWSCURRENT")
    if outdated is None and newest is not None:  # no label to go by: the intake's newest
        latest = newest.newest(info.arn)
        outdated = latest.version_id if latest else None
    if outdated is not None and outdated != run.version_id:
        return f"version {outdated} is newer (AWSCURRENT moved on before this run planned)"
    owner = runs.unfinished_run(RunKind.KEY_ROTATION, info.arn)
    if owner is not None and owner.version_id == run.version_id:
        return f"key rotation {owner.run_id} made this version current and is finishing it"
    return None


def _plan(
    run: RunRecord,
    info: SecretInfo,
    *,
    runs: RunStore,
    secrets: SecretStore,
    admin: DatabendAdmin,
    bindings: list[Binding],
) -> RotationPlan:
    """Read the version, plan (refusing unswitchable objects before anything changes), make its
    connection (and one to revert to), pre-flight."""
    if run.version_id not in info.versions:
        raise UnknownSecretError(f"secret {info.name} has no version {run.version_id}")
    if run.parent:
        _require_unmoved(runs.get(run.parent), info)
    binding = binding_covering(bindings, info.arn, info.name)
    where = f"secret {info.name} version {run.version_id}"
    credentials = parse_secret_value(secrets.read_version(info.arn, run.version_id), where=where)
    old = _old_credentials(secrets, info, run.version_id)
    connection = connection_name_for(binding, run.version_id)
    plan = plan_rotation(
        binding,
        list_binding_objects(admin, binding),
        connection=connection,
        target=credentials.fingerprint,
        old_fingerprints={c.fingerprint for c in old.values()},
        secret_keys=secret_keys_of([*old.values(), credentials]),
    )
    refuse_unswitchable(plan, binding)
    # write-ahead: the connection's name is on record before it exists
    runs.update(
        run.run_id,
        binding=binding.name,
        connection=connection,
        target=credentials.fingerprint,
        may_skip_switched=all(
            masking.distinguishable(credentials.fingerprint, o.fingerprint) for o in old.values()
        ),
    )
    ensure_connection(admin, connection, credentials)
    data = dict(run.data)
    previous = _previous_version(info, run.version_id)
    # a connection on the previous credentials, to switch back to: only when an object may show
    # them (a switch goes back only onto what the object showed), so a run after that key's
    # retirement does not make its connection again
    was = old.get(previous) if previous is not None else None
    if was is not None and any(objects_.may_show(o.current, was.fingerprint) for o in plan.tables):
        back = connection_name_for(binding, str(previous))
        ensure_connection(admin, back, was)
        data["revert"] = {"connection": back, "target": was.fingerprint}
    runs.update(run.run_id, data=data)
    preflight(admin, connection, plan)
    return plan


def list_binding_objects(admin: DatabendAdmin, binding: Binding) -> list[StoredObject]:
    """What a plan of the binding looks at: its tables' databases (every one with ``discover``),
    and stages and database defaults when it selects or discovers them."""
    return objects_.list_for(
        admin,
        databases=binding.databases_to_scan(),
        tables=binding.tables_to_scan(),
        stages=binding.lists_stages,
        defaults=binding.lists_databases,
    )


def refuse_unswitchable(plan: RotationPlan, binding: Binding) -> None:
    """Objects the binding selects that Databend cannot switch (oss, cos, …): refuse by name."""
    if plan.refusals:
        raise Refused(
            f"binding {binding.name} selects {len(plan.refusals)} object(s) on storage Databend "
            f"cannot switch to other credentials (only s3, gcs and azblob): "
            f"{'; '.join(plan.refusals[:10])}. Take them out of the binding; nothing was changed"
        )


def _require_unmoved(key_rotation: RunRecord, info: SecretInfo) -> None:
    """A key rotation's tables move only while AWSCURRENT is still the version it started from:
    if someone else rotated the secret meanwhile, its pending key must not replace theirs."""
    started_from = key_rotation.data.get("old_version")
    current = info.version_with_stage("AWSCURRENT")
    if started_from and current != started_from:
        raise Refused(
            f"AWSCURRENT of {info.name} moved to version {current} since key rotation "
            f"{key_rotation.run_id} started from {started_from}: no table was switched to its "
            f"pending key; `rotator abort {key_rotation.run_id}`"
        )


def _old_credentials(
    secrets: SecretStore, info: SecretInfo, version_id: str
) -> dict[str, Credentials]:
    """The credentials of the secret's other current/previous/pending versions, by version."""
    old: dict[str, Credentials] = {}
    for version in info.versions.values():
        if version.version_id == version_id or not set(version.stages) & set(_ROTATION_STAGES):
            continue
        try:
            raw = secrets.read_version(info.arn, version.version_id)
            old[version.version_id] = parse_secret_value(raw, where=info.name)
        except SecretFormatError:
            continue  # an unreadable old version only narrows discovery
    return old


def _previous_version(info: SecretInfo, version_id: str) -> str | None:
    """The version the tables are on before this run: AWSCURRENT unless that is this version
    (an event after the label moved), then AWSPREVIOUS."""
    current = info.version_with_stage("AWSCURRENT")
    if current and current != version_id:
        return current
    return info.version_with_stage("AWSPREVIOUS")


def preflight(admin: DatabendAdmin, connection: str, plan: RotationPlan) -> None:
    """Before the first ALTER: the new connection must list every bucket the plan touches, so a
    key that cannot reach one of them changes no object at all.

    A plan of one table needs no probe: its ``ALTER TABLE … CONNECTION`` checks the new
    credentials on the table's own location before it changes anything (an invalid key fails
    with 3901, the table untouched; Databend's own tests hold that an ALTER to a connection with a
    wrong key fails). Stages and database defaults are always probed: their ALTER never touches
    storage.
    """
    switchable = [t for t in plan.tables if not t.problem]
    if len(switchable) == 1 and isinstance(switchable[0].table, TableName):
        return
    buckets = sorted({t.bucket for t in switchable if t.bucket})
    for bucket in buckets:
        try:
            admin.probe_connection(connection, bucket)
        except FatalError as exc:
            raise PreflightFailed(
                f"pre-flight: connection {connection} cannot list bucket {bucket} ({exc}); "
                "no object was touched"
            ) from None
