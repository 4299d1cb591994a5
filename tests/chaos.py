"""The chaos suite's contact with the core (issue 10), and the world its scenarios start from.

The chaos suite drives the core through seeded random schedules over a faulty world and checks the
safety invariants after every step — Jepsen's way: generate schedules, check invariants. Its parts,
in reading order:

- **tests/chaos.py** (this module): section 1, *the adapter* — the only code of the suite that
  calls ``worker.flow``, always with keyword arguments; when the core's API changes, adjust this
  section and nothing else. Section 2, ``build_world``: one secret, its IAM user(s), a lake.
- **tests/chaos_world.py**: the faulty fakes — real IAM keys, an ALTER that needs both keys,
  transient faults, crashes (a dead worker does nothing more), Redis flushes and its atomic batch
  writes, a second worker between two calls.
- **tests/chaos_invariants.py**: the invariants, each explained.
- **tests/chaos_schedule.py**: the schedule generator (``Scenario``) and ``run_scenarios``, used
  by tests/test_chaos.py and benchmarks/chaos.py. A run's objects go in batch messages
  (``switch_batch`` below), as the workers send and switch them.

Every scenario replays exactly from its seed, with a readable trace:
``python benchmarks/chaos.py --scenarios 1 --seed 17 --trace``.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from tests.chaos_world import (
    LOCK_TTL,
    ChaosAdmin,
    ChaosFences,
    ChaosIam,
    ChaosIntake,
    ChaosLimits,
    ChaosLocks,
    ChaosRuns,
    ChaosWriter,
    Clock,
    Env,
    Faults,
    World,
)
from tests.fakes import FakeSecrets
from worker.domain.bindings import Binding, Selector
from worker.domain.errors import FatalError
from worker.domain.events import Action, EventDecision
from worker.domain.masking import MaskForm
from worker.domain.model import (
    AccessKeyCredentials,
    RunStatus,
    parse_storage_param,
)
from worker.domain.sql import DatabaseName, ObjectName, StageName, TableName
from worker.flow import key_rotation as _key_rotation
from worker.flow import lifecycle as _lifecycle
from worker.flow import migration as _migration
from worker.flow import reaper as _reaper
from worker.flow import retire as _retire
from worker.flow import rollback as _rollback
from worker.flow import runs as _runs
from worker.flow import stale as _stale
from worker.flow import waves as _waves
from worker.flow.intake import handle_event
from worker.flow.rotation import RetryPolicy
from worker.flow.runs import switch as _batch

STUCK_AFTER = 900.0  # ROTATOR_STUCK_AFTER
LABELS_MAX_AGE = 5.0  # worker/runtime/services.LABELS_MAX_AGE
USERS = ("svc", "svc2")  # IAM users: K0 belongs to the first; an outside rotation may use either
OPS = "ops_role"  # the operator's own connection (a key of IAM user "ops", in no secret)
OPS_KEYS = (
    "AKIAOPSOPSOPSOPS2QZX",
    "AKIAOPSOPSOPSOPS7WVU",
)  # its key: the one K0 does not look like

# =================================================================================================
# 1. The adapter: everything below, down to section 2, calls the core. Adjust it when the API
#    changes; nothing else in the chaos suite imports worker.flow.
# =================================================================================================

BINDING = Binding(
    name="lake-main",
    secret="databend/lake",
    connection_prefix="lake_main",
    selectors=(Selector.parse("sales.*"),),
    discover=True,
    buckets=("lake",),
)


def secret_value(key_id: str, secret_key: str) -> str:
    return json.dumps({"access_key_id": key_id, "secret_access_key": secret_key})


def render_storage(mask: str) -> Callable[[str, str, str, bool], Any]:
    """What Databend shows of a table in system.tables, parsed by the core's own parser. ``mask``:
    'legacy' (≤ 1.2.918, ``******XYZ``) or 'current' (≥ 1.2.919, ``AK***YZ``). A blind row shows
    ``***``: a storage_param from which no key can be read."""

    def render(key_id: str, bucket: str, root: str, blind: bool) -> Any:
        if blind:
            shown = "****"  # no masking form shows this: the row cannot be read
        elif mask == "legacy":
            shown = f"******{key_id[-3:]}"
        else:
            shown = f"{key_id[:2]}***{key_id[-2:]}"
        text = f"s3 | bucket={bucket},root={root},endpoint=https://s3.amazonaws.com,ak={shown},iam_role="
        return parse_storage_param(text)

    return render


def _no_sleep(attempts: int = 4) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, initial_wait=0.0, max_wait=0.0, sleep=lambda _s: None)


def intake(world: World, version_id: str, enqueue: Callable[[str], None]) -> tuple[str, str, str]:
    """An EventBridge "Secret Label Updated" (AWSCURRENT → version_id) through the intake:
    (verdict, reason, run id or '')."""
    decision = EventDecision(
        Action.ROTATE,
        "AWSCURRENT label moved",
        event_id=f"evt-{version_id[:8]}",
        secret=world.secrets.arn,
        version_id=version_id,
        kind="Secret Label Updated",
    )
    result = handle_event(
        decision,
        secrets=world.secrets,
        bindings=world.bindings,
        state=world.intake,
        runs=world.runs,
        enqueue=enqueue,
        labels_moved=world.fences.labels_moved,
    )
    return str(result.verdict), result.reason, result.run_id or ""


def prepare(world: World, run_id: str) -> list[ObjectName]:
    """tasks/rotation.start_rotation: plan a rotation run; the tables still to switch."""
    return _runs.prepare_rotation(
        run_id=run_id,
        runs=world.runs,
        secrets=world.secrets,
        admin=world.admin,
        bindings=world.bindings,
        locks=world.locks,
        newest=world.intake,
        fences=world.fences,
    )


def batches(names: list[ObjectName], parallel: int) -> list[list[ObjectName]]:
    """worker/runtime/jobs.plan_rotation: the planned objects cut into batch messages, at least
    ``parallel`` of them (ROTATOR_PARALLEL)."""
    return _batch.split_batches(names=names, parallel=parallel)


@dataclass
class Batch:
    """What one delivery of a batch message did."""

    outcomes: list[tuple[ObjectName, str]]  # (object, status) recorded by this delivery, in order
    skipped: list[ObjectName]  # finished before: left alone
    closed: bool  # one of its writes closed the run
    stopped: str | None  # the run paused or ended mid-batch: the rest stays pending


def _object_hooks(
    world: World, object_seconds: Callable[[], float], crash_point: str
) -> tuple[Callable[[Any], AbstractContextManager[None]], Callable[[Any, float], None]]:
    """A batch's ``each`` (each admitted object takes ``object_seconds()`` of the world's clock)
    and ``on_outcome`` (the trace, then the task's crash point: the outcome not yet written)."""

    @contextmanager
    def takes_time(_planned: object) -> Iterator[None]:
        try:
            yield
        finally:
            world.clock.now += object_seconds()

    def done(outcome: Any, _seconds: float) -> None:
        world.env.faults.log(f"  {outcome.table}: {outcome.status}")
        world.env.faults.boundary(f"checkpoint {crash_point}")

    return takes_time, done


def _batch_of(result: Any) -> Batch:
    return Batch(
        outcomes=[(o.table, str(o.status)) for o in result.outcomes],
        skipped=list(result.finished_before),
        closed=result.closed,
        stopped=None if result.stopped is None else str(result.stopped),
    )


def switch_batch(
    world: World,
    run_id: str,
    names: list[ObjectName],
    *,
    object_seconds: Callable[[], float] = lambda: 0.0,
    flush_every: float = _batch.DEFAULT_FLUSH_SECONDS,
    step_attempts: int = 4,
) -> Batch | None:
    """tasks/rotation.switch_batch (worker/runtime/jobs.rotation_batch): switch a batch, writing
    outcomes at most ``flush_every`` seconds apart on the world's clock, each admitted object
    taking ``object_seconds()`` of it, each statement tried ``step_attempts`` times inside its
    step (fewer than the real 4: a transient fault then more often ends the batch, which the task
    retries and at last gives up). After each object, its outcome not yet written and the
    batch in flight, is the task's crash point (jobs.py's fault point ``rotation-after-table``).
    None when the run has ended."""
    each, on_outcome = _object_hooks(world, object_seconds, "rotation-after-table")
    result = _batch.switch_batch(
        run_id=run_id,
        names=list(names),
        runs=world.runs,
        admin=world.admin,
        fences=world.fences,
        locks=world.locks,
        retry=_no_sleep(step_attempts),
        each=each,
        on_outcome=on_outcome,
        flush_every=flush_every,
        clock=world.clock,
    )
    return None if result is None else _batch_of(result)


def switch(world: World, run_id: str, table: ObjectName) -> tuple[str, bool] | None:
    """A batch of one: (the object's status, whether this closed the run), or None when there
    was nothing to do."""
    result = switch_batch(world, run_id, [table])
    if result is None or not result.outcomes:
        return None
    return result.outcomes[0][1], result.closed


def give_up(world: World, run_id: str, names: list[ObjectName], reason: str) -> Batch:
    """A batch task out of retries, or stopped by a fatal error (worker/runtime/jobs.
    rotation_gave_up): its unfinished objects are recorded failed."""
    result = _batch.give_up_objects(
        run_id=run_id, names=list(names), reason=reason, runs=world.runs, locks=world.locks
    )
    return _batch_of(result)


def give_up_planning(world: World, run_id: str, reason: str) -> None:
    """tasks/rotation.start_rotation out of retries: the run is failed with the reason."""
    _runs.give_up(run_id=run_id, reason=reason, runs=world.runs, locks=world.locks)


def key_context(world: World) -> Any:
    return _key_rotation.KeyRotationContext(
        runs=world.runs,
        secrets=world.secrets,
        writer=world.writer,
        iam=world.iam,
        admin=world.admin,
        locks=world.locks,
        retry=_no_sleep(),
        clock=world.clock,
        checkpoint=lambda name: world.env.faults.done("", f"checkpoint {name}", False, name),
        fences=world.fences,
        bound_secrets=tuple(b.secret for b in world.bindings),
    )


Followup = tuple[str, str]  # (task kind, run id): what the caller enqueues next


def advance(world: World, run_id: str) -> tuple[str, list[Followup]]:
    """tasks/key_rotation.advance_key_rotation, one step: ('continue' | 'start_tables' | 'wait' |
    'stop', the tasks to enqueue)."""
    step = _key_rotation.advance(ctx=key_context(world), run_id=run_id)
    run = world.runs.peek(run_id)
    followups: list[Followup] = []
    if step is _key_rotation.Next.START_TABLES and run is not None:
        followups.append(("start", str(run.data["table_run"])))
    elif step is _key_rotation.Next.STOP and run is not None and run.phase == "retired":
        followups.append(("retire_due", ""))
    return str(step.value), followups


@dataclass(frozen=True)
class Refused:
    """A key rotation the core would not start, and why."""

    reason: str


def start_key_rotation(
    world: World,
    *,
    deactivate_after: float = 0.0,
    delete_after: float = 3600.0,
    alone: bool = True,
) -> str | Refused:
    """`rotator rotate --commit` (or, ``alone`` False, Secrets Manager's schedule, which does not
    look for an unfinished rotation): plan, then record the run. Returns its run id, or
    Refused."""
    info = world.secrets.describe(BINDING.secret)
    try:
        plan = _key_rotation.plan_key_rotation(
            binding=BINDING,
            info=info,
            secrets=world.secrets,
            iam=world.iam,
            admin=world.admin,
            bound_secrets=(BINDING.secret,),
        )
        if plan.refusal:
            return Refused(plan.refusal)
        return str(
            _key_rotation.new_key_rotation(
                runs=world.runs,
                plan=plan,
                deactivate_after=deactivate_after,
                delete_after=delete_after,
                alone=alone,
            )
        )
    except FatalError as exc:
        return Refused(str(exc))


def abort(world: World, run_id: str) -> list[str]:
    """`rotator abort` (worker/flow/lifecycle.py): the tables switched back. A change still in
    flight (a dead worker's lease) makes it refuse for now: asked again later, it goes on."""
    return [
        str(t)
        for t in _key_rotation.abort(
            ctx=key_context(world), run_id=run_id, binding=BINDING, wait_seconds=0
        )
    ]


_FOLLOWUPS = {
    _lifecycle.Followup.START_ROTATION: "start",
    _lifecycle.Followup.ADVANCE_KEY_ROTATION: "advance",
    _lifecycle.Followup.RETIRE_DUE: "retire_due",
    _lifecycle.Followup.RELEASE_WAVE: "release",
}


def _followups(followup: Any, run_id: str) -> list[Followup]:
    kind = _FOLLOWUPS.get(followup)
    if kind is None:
        return []
    return [(kind, "" if kind == "retire_due" else run_id)]


def resume(world: World, run_id: str) -> list[Followup]:
    """`rotator resume` (worker/flow/lifecycle.py): the tasks it enqueues."""
    resumed = _lifecycle.resume(ctx=key_context(world), run_id=run_id)
    return _followups(resumed.followup, resumed.run_id)


# --- migrations ------------------------------------------------------------------------------


def start_migration(
    world: World, *, source: str | None, options: dict[str, Any], target: str = OPS
) -> str | Refused:
    """`rotator migrate --to TARGET (--from SOURCE | --tables sales.*) --commit`: plan, then
    record the run (every object pending); the caller sends its release. Returns the run id, or
    Refused."""
    chosen = _migration.MigrationOptions(**options)
    try:
        plan = _migration.plan_migration(
            world.admin,
            target=target,
            from_connection=source,
            selectors=() if source else (Selector.parse("sales.*"),),
            options=chosen,
            connection_fingerprints=world.admin.connection_fingerprints(),
            behind=_stale.RotatedAway(secrets=world.secrets, bindings=world.bindings).reason,
        )
        _migration.refuse_unswitchable(plan)
        _migration.preflight(world.admin, plan)
        return _migration.new_migration(world.runs, plan, chosen, "chaos migration")
    except FatalError as exc:
        return Refused(str(exc))


def release_wave(world: World, run_id: str) -> Any:
    """tasks/migration.release_wave (worker/runtime/jobs.release_wave): the batches to send for
    the current wave (``.wave``, ``.batches``), and the waves judged on the way (``.judged``);
    None when the run is not switching."""
    return _waves.release_wave(runs=world.runs, run_id=run_id)


def judge(world: World, run_id: str, wave: int) -> Any:
    """worker/runtime/jobs.judge: the wave's verdict and decision, or None."""
    return _waves.judge(runs=world.runs, run_id=run_id, wave=wave)


def migrate_batch(
    world: World,
    run_id: str,
    wave: int,
    names: list[ObjectName],
    *,
    object_seconds: Callable[[], float] = lambda: 0.0,
    step_attempts: int = 4,
) -> tuple[Batch | None, bool]:
    """tasks/migration.migrate_batch (worker/runtime/jobs.migration_batch): a batch of ``wave``
    under the run's concurrency slot; (what it did, or None when the run was not switching;
    whether the wave is complete: then judge it). Crash point after each object, as for
    rotations. A target rotated away from raises MigrationRefused (the task's gave_up follows)."""
    each, on_outcome = _object_hooks(world, object_seconds, "migration-after-table")
    done = _waves.migration_batch(
        run_id=run_id,
        wave=wave,
        names=list(names),
        runs=world.runs,
        admin=world.admin,
        fences=world.fences,
        limits=world.limits,
        retry=_no_sleep(step_attempts),
        each=each,
        on_outcome=on_outcome,
        clock=world.clock,
        behind=_labels_for_batches(world),
    )
    if done.result is None:
        return None, False
    return _batch_of(done.result), done.wave_complete


def _labels_for_batches(world: World) -> Any:
    """The workers' RotatedAway (Services.rotated_away): labels reused LABELS_MAX_AGE seconds of
    the world's clock. One for the whole world, as if every worker shared it: staler than one
    per worker process, so no weaker a test."""
    checker = getattr(world, "_labels_for_batches", None)
    if checker is None:
        checker = _stale.RotatedAway(
            secrets=world.secrets,
            bindings=world.bindings,
            max_age=LABELS_MAX_AGE,
            clock=world.clock,
            epoch=world.fences.labels_epoch,
        )
        world._labels_for_batches = checker  # type: ignore[attr-defined]
    return checker


def give_up_migration(
    world: World, run_id: str, wave: int, names: list[ObjectName], reason: str
) -> tuple[Batch, bool]:
    """worker/runtime/jobs.migration_gave_up: the batch's unfinished objects recorded failed in
    the wave's current epoch; (what was recorded, whether the wave is complete)."""
    result = _waves.give_up_batch(
        runs=world.runs, run_id=run_id, wave=wave, names=list(names), reason=reason
    )
    return _batch_of(result), result.wave_complete


def pause(world: World, run_id: str) -> list[str]:
    """`rotator pause --timeout 0`: the run paused; what was still in flight."""
    return _lifecycle.pause(
        runs=world.runs,
        fences=world.fences,
        run_id=run_id,
        busy_slots=world.limits.busy_slots,
        timeout=0,
        sleep=lambda _s: None,
    )


def rollback(world: World, run_id: str) -> str:
    """`rotator rollback --timeout 0`: the objects the migration switched moved back; a line
    saying what happened."""
    result = _rollback.rollback(
        runs=world.runs,
        admin=world.admin,
        fences=world.fences,
        run_id=run_id,
        busy_slots=world.limits.busy_slots,
        concurrency=1,
        timeout=0,
        retry=_no_sleep(),
        behind=_stale.RotatedAway(
            secrets=world.secrets, bindings=world.bindings, epoch=world.fences.labels_epoch
        ),
    )
    parts = [f"moved back: {', '.join(map(str, result.moved)) or 'none'}"]
    parts += [f"left (behind): {', '.join(str(t) for t, _ in result.behind)}"] * bool(result.behind)
    parts += [f"failed: {', '.join(str(t) for t, _ in result.failed)}"] * bool(result.failed)
    parts += [f"unknown: {', '.join(map(str, result.unknown))}"] * bool(result.unknown)
    parts += [f"unreachable: {', '.join(str(t) for t, _ in result.unreachable)}"] * bool(
        result.unreachable
    )
    return "; ".join(parts)


def retire_due(world: World) -> list[str]:
    """tasks/key_rotation.retire_due (the beat): deactivate / delete old keys that are due, one
    sweep per run at a time (its slot in the shared limits)."""
    ctx, lines = key_context(world), []
    for run_id in world.runs.retiring():
        done = _retire.retire_due(ctx, world.limits, run_id, world.clock())
        if done is None:
            lines.append(f"{world.env.label(run_id)}: left to the sweep already on it")
        for action, result in done or []:
            lines.append(f"{world.env.label(run_id)}: {action} the old key: {result}")
    return lines


def reap(world: World) -> list[Followup]:
    """tasks/runs.reap_stuck_runs (the beat): re-enqueue quiet runs, or flag them stuck."""
    followups: list[Followup] = []
    for reaped in _reaper.reap(
        runs=world.runs, fences=world.fences, now=world.clock(), stuck_after=STUCK_AFTER
    ):
        followups += _followups(reaped.followup, reaped.run_id)
    return followups


def is_final(run: Any) -> bool:
    try:
        return RunStatus(run.status).final
    except ValueError:
        return False


def is_flagged(run: Any) -> bool:
    """Marked for a human by the reaper (issue 10: `stuck`, with the reason), or held by one
    (a migration `rotator pause` paused: `rotator resume` goes on)."""
    return str(run.status) in ("stuck", "paused")


def run_started(fields: dict[str, Any]) -> bool:
    """Does this run-store write mark a run (re)starting? prepare_rotation sets started_at each
    time it begins to plan, advance when a key rotation takes its first step."""
    return "started_at" in fields


def describe_run(run: Any) -> str:
    return f"{run.status}" + (f", phase {run.phase}" if run.phase else "")


def unfinished_key_rotation(world: World) -> str | None:
    """What `rotate --commit` looks for in the run store before it starts (worker/cli/main.py)."""
    for run_id, run in sorted(world.runs.runs.items()):
        if run.kind == "key-rotation" and not is_final(run):
            return run_id
    return None


@contextmanager
def seeded_uuids(seed: int) -> Iterator[None]:
    """The core names runs and versions with uuid4: seed it, so a scenario replays exactly."""
    rng, original = random.Random(seed ^ 0x5EED), uuid.uuid4
    uuid.uuid4 = lambda: uuid.UUID(int=rng.getrandbits(128), version=4)
    try:
        yield
    finally:
        uuid.uuid4 = original


def drive_key_rotation(world: World, run_id: str, limit: int = 50) -> str:
    """What the tasks do for a key rotation, inline and in order: advance, switching the table
    run (as one batch) when asked. Returns the last step ('stop' or 'wait')."""
    for _ in range(limit):
        step, followups = advance(world, run_id)
        for kind, table_run in followups:
            if kind == "start":
                for names in batches(prepare(world, table_run), 1):
                    switch_batch(world, table_run, names)
        if step in ("stop", "wait"):
            return step
    raise AssertionError(f"key rotation {run_id} did not stop in {limit} steps")


# =================================================================================================
# 2. The world a scenario starts from
# =================================================================================================


@dataclass(frozen=True)
class Shape:
    """The lake a scenario starts with: every table on the secret's key K0 (version v0)."""

    sales: int = 3  # sales.t0, …: named by the binding's selector "sales.*"
    discovered: int = 0  # misc.d0, …: same key, bucket "lake": found by discovery
    blind: int = 0  # misc.b0, …: bucket "lake", but storage_param shows no readable key
    uncovered: int = 0  # ops.u0, …: same key, bucket "elsewhere": no rule of the binding selects it
    stages: int = 0  # landing0, …: external stages on K0 in bucket "lake": found by discovery
    databases: int = 0  # lakehouse0, …: default connection "seed" (K0), path in "lake": discovered

    def __str__(self) -> str:
        parts = [f"{self.sales} sales"] + [
            f"{n} {name}"
            for name, n in (
                ("discovered", self.discovered),
                ("blind", self.blind),
                ("uncovered", self.uncovered),
            )
            if n
        ]
        others = [
            f"{n} {what}"
            for what, n in (("stage(s)", self.stages), ("database default(s)", self.databases))
            if n
        ]
        return ", ".join(parts) + " table(s)" + "".join(f", {o}" for o in others) + " on K0"


def build_world(
    shape: Shape = Shape(),
    *,
    rng: random.Random | None = None,
    faults: Faults | None = None,
    mask: str = "legacy",
    log: Callable[[str], None] = lambda _line: None,
    on_current: Callable[[str], None] = lambda _version: None,
    ops: bool = False,
) -> World:
    """One secret (databend/lake, version v0 holding key K0 of IAM user svc) and a lake of external
    tables on K0. No faults unless ``faults`` says so; ``on_current`` hears of every AWSCURRENT
    move (the scenario turns it into an EventBridge event). ``ops``: also the operator's own
    connections, for migrations: ``origin`` (K0, the one the tables were created from) and
    ``ops_role`` (key Kops of IAM user ops, in no secret: the migrations' target)."""
    rng = rng or random.Random(0)
    env = Env(faults=faults or Faults(rng=rng, log=log), clock=Clock(), rng=rng)
    env.faults.log, env.faults.clock = log, env.clock
    iam = ChaosIam(env)
    k0 = iam.add_key(USERS[0])
    secrets = FakeSecrets(values={"v0": secret_value(k0, "s" * 40)}, stages={"v0": ("AWSCURRENT",)})
    env.labels["v0"] = "v0"
    admin = ChaosAdmin(env, iam, render_storage(mask))
    admin.form = MaskForm(mask)
    for prefix, db, bucket, count, blind in (
        ("t", "sales", "lake", shape.sales, False),
        ("d", "misc", "lake", shape.discovered, False),
        ("b", "misc", "lake", shape.blind, True),
        ("u", "ops", "elsewhere", shape.uncovered, False),
    ):
        for i in range(count):
            admin.put_table(TableName(db, f"{prefix}{i}"), k0, bucket, blind=blind)
    for i in range(shape.stages):
        admin.put_stage(StageName(f"landing{i}"), k0, "lake")
    if shape.databases:
        admin.connections["seed"] = AccessKeyCredentials(k0, "s" * 40)  # the user's own
    for i in range(shape.databases):
        admin.put_database(DatabaseName(f"lakehouse{i}"), "seed", "lake")
    if ops:  # (later keys are drawn unlike every key so far: this one too)
        ops_key = next(k for k in OPS_KEYS if k[-2:] != k0[-2:] and k[-3:] != k0[-3:])
        env.labels[ops_key] = "Kops"
        iam.add_key("ops", ops_key)
        admin.connections["origin"] = AccessKeyCredentials(k0, "s" * 40)
        admin.connections[OPS] = AccessKeyCredentials(ops_key, "o" * 40)
    runs = ChaosRuns(env)
    return World(
        env=env,
        secrets=secrets,
        writer=ChaosWriter(env, secrets, on_current),
        iam=iam,
        admin=admin,
        runs=runs,
        fences=ChaosFences(env, runs),
        locks=ChaosLocks(env, LOCK_TTL),
        intake=ChaosIntake(env),
        bindings=[BINDING],
        value_of=secret_value,
        limits=ChaosLimits(env),
    )
