"""The rotation schedule on real parts: each binding's key age from IAM, its objects' states from
the catalog (tables, stages, database defaults), and the start of a due key rotation exactly as
``rotator rotate --commit`` does.

``rotator worker --beat`` runs ``tick`` every ``ROTATOR_SCHEDULE_INTERVAL`` seconds (task
``rotator.schedule.tick``). Each tick writes what it saw per binding to Redis
(``rotator:observed``), which the metrics collector serves, and starts at most one key rotation
per secret: only when the state is ``due``, only while no key rotation of the secret is
unfinished, and only under a claim (``SET NX``) that a second tick or beat cannot take in the same
interval.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from worker.domain import masking
from worker.domain.bindings import Binding
from worker.domain.errors import RotatorError
from worker.domain.model import Credentials, RunKind, StoredObject
from worker.domain.schedule import ScheduleState, decide
from worker.domain.sql import ObjectName
from worker.flow import objects as objects_
from worker.flow.key_context import left_behind, unfinished_key_rotation
from worker.flow.key_rotation import current_credentials, new_key_rotation
from worker.flow.rotation import plan_rotation, secret_keys_of
from worker.observe import actor

log = structlog.get_logger("rotator.schedule")

OBSERVED_KEY = "rotator:observed"
DEFAULT_DELETE_AFTER = 7 * 86400.0  # as `rotate --commit`: deactivate at once, delete after 7 days


@dataclass
class Observation:
    binding: str
    secret: str
    secret_arn: str | None = None
    key_created_at: float | None = None
    key_age_seconds: float | None = None
    rotate_every_seconds: float | None = None
    state: str = ScheduleState.NO_POLICY.value
    next_window_start: float | None = None
    objects: dict[str, int] = field(default_factory=dict)
    drift: int | None = None
    observed_at: float = 0.0
    problem: str | None = None  # why the key's age is unknown (never due then)
    # a key rotation that ended before moving AWSCURRENT and left its key: why none starts
    held_by: str | None = None


def observe(
    s: Any, binding: Binding, *, now: float, tables: list[StoredObject] | None
) -> Observation:
    """One binding now: key age (IAM CreateDate of the key AWSCURRENT holds), schedule state and,
    when ``tables`` is given, how many of its objects are on the current key."""
    policy = binding.schedule
    seen = Observation(
        binding=binding.name,
        secret=binding.secret,
        rotate_every_seconds=policy.rotate_every,
        observed_at=now,
    )
    current: Credentials | None = None
    try:
        info = s.secrets.describe(binding.secret)
        seen.secret, seen.secret_arn = info.name, info.arn
        _version, credentials, _value = current_credentials(s.secrets, info)
        current = credentials
        user = binding.iam_user or s.iam.owner_of(credentials.access_key_id)
        key = next(
            (k for k in s.iam.list_keys(user) if k.key_id == credentials.access_key_id), None
        )
        if key is None:
            seen.problem = (
                f"IAM user {user} has no key {masking.show_key(credentials.access_key_id)}"
            )
        else:
            seen.key_created_at = key.created_at
            seen.key_age_seconds = max(0.0, now - key.created_at)
    except RotatorError as exc:
        seen.problem = str(exc)
    if seen.secret_arn:
        seen.held_by = _left_behind(s.runs, seen.secret_arn)
    rotating = seen.held_by is not None or bool(
        seen.secret_arn and unfinished_key_rotation(s.runs, seen.secret_arn)
    )
    verdict = decide(policy, key_age=seen.key_age_seconds, now=now, rotating=rotating)
    seen.state, seen.next_window_start = verdict.state.value, verdict.next_window_start
    if tables is not None and current is not None:
        seen.objects = object_states(binding, tables, current)
        seen.drift = seen.objects.get("other", 0) + seen.objects.get("missing", 0)
    return seen


def object_states(
    binding: Binding, objects: list[StoredObject], credentials: Credentials
) -> dict[str, int]:
    """The binding's objects (tables, stages, database defaults) by state: ``current`` (may hold
    the key AWSCURRENT holds: a look-alike that shows another secret key does not), ``other``
    (shows other credentials), ``unreadable``, ``missing`` (a selector names no such object)."""
    current, secret_keys = credentials.fingerprint, secret_keys_of([credentials])
    plan = plan_rotation(
        binding,
        objects,
        connection="",
        target=current,
        old_fingerprints=set(),
        secret_keys=secret_keys,
    )
    shown: dict[ObjectName, StoredObject] = {t.name: t for t in objects}
    counts: dict[str, int] = {}
    for planned in plan.tables:
        table = shown.get(planned.table)
        if planned.problem or table is None:
            state = "missing"
        elif table.storage.unreadable is not None:
            state = "unreadable"
        elif table.storage.may_hold(current) and not (
            current in secret_keys and table.storage.shows_another_secret(secret_keys[current])
        ):
            state = "current"
        else:
            state = "other"
        counts[state] = counts.get(state, 0) + 1
    return counts


def tick(s: Any, *, now: float | None = None) -> list[Observation]:
    """Observe every binding, record what was seen, start what is due. Returns the observations."""
    now = time.time() if now is None else now
    try:
        tables: list[StoredObject] | None = objects_.list_all(s.admin)
    except RotatorError as exc:
        log.warning("schedule: cannot list objects; object metrics skipped", error=str(exc))
        tables = None
    seen = []
    for binding in s.bindings:
        observation = observe(s, binding, now=now, tables=tables)
        seen.append(observation)
        if observation.state == ScheduleState.DUE:
            start_scheduled(s, binding, observation, interval=s.settings.schedule_interval)
        elif observation.held_by and observation.secret_arn and binding.schedule.active:
            # (a binding on a schedule: said once a day, naming the run)
            _notify_refused(s, binding, observation.secret_arn, observation.held_by)
    record(s.redis, seen)
    return seen


def record(redis: Any, seen: list[Observation]) -> None:
    if seen:
        redis.hset(OBSERVED_KEY, mapping={o.binding: json.dumps(asdict(o)) for o in seen})


def observed(redis: Any) -> list[Observation]:
    """What the last tick saw per binding (for metrics)."""
    raw = redis.hgetall(OBSERVED_KEY)
    return [Observation(**json.loads(v)) for v in raw.values()]


def start_scheduled(s: Any, binding: Binding, seen: Observation, *, interval: float) -> str | None:
    """Start the binding's key rotation as ``rotate --commit`` does (same plan, same refusals);
    returns the run id, or None when it did not start."""
    from worker.observe.notify import notify

    arn = str(seen.secret_arn)
    claim = f"rotator:schedule:claim:{arn}"
    # held for most of an interval: a second beat's tick in it finds the claim, the next tick of
    # this one does not (held for the whole interval, a tick a moment early often still found
    # it, and a refused start was retried every other interval)
    held = max(1, int(interval * 0.8))
    if not s.redis.set(claim, str(now_ms()), nx=True, ex=held):
        return None  # another tick claimed this secret within the interval
    if unfinished_key_rotation(s.runs, arn) is not None:
        return None  # as `rotate --commit` refuses: that run is resumed or aborted, not doubled
    left = _left_behind(s.runs, arn)
    if left:  # (ended so since the tick's look) it waits for the operator, not a new rotation
        _notify_refused(s, binding, arn, left)
        return None
    try:
        info = s.secrets.describe(arn)
        plan = s.plan_key_rotation(binding, info)
        if plan.refusal:
            log.warning("scheduled rotation refused", binding=binding.name, reason=plan.refusal)
            _notify_refused(s, binding, arn, plan.refusal)
            return None
        with actor.acting_as("schedule"):
            run_id = new_key_rotation(
                s.runs, plan, deactivate_after=0.0, delete_after=DEFAULT_DELETE_AFTER
            )
    except RotatorError as exc:
        log.error("scheduled rotation could not start", binding=binding.name, error=str(exc))
        _notify_refused(s, binding, arn, str(exc))
        return None
    from tasks.key_rotation import advance_key_rotation

    advance_key_rotation.delay(run_id)
    log.info(
        "scheduled rotation started",
        binding=binding.name,
        run_id=run_id,
        key_age_seconds=round(seen.key_age_seconds or 0),
    )
    notify(
        s,
        "scheduled_start",
        binding=binding.name,
        secret=info.arn,
        run_id=run_id,
        kind=RunKind.KEY_ROTATION,
        status="queued",
    )
    return run_id


def _left_behind(runs: Any, arn: str) -> str | None:
    left = left_behind(runs, arn)
    return f"{left}, then the schedule starts the next one" if left else None


def _notify_refused(s: Any, binding: Binding, secret: str, reason: str) -> None:
    """A due rotation that did not start: said once per binding and reason (deduplicated)."""
    from worker.observe.notify import notify

    notify(
        s,
        "schedule_refused",
        binding=binding.name,
        secret=secret,
        reason=reason,
        dedupe=f"refused:{binding.name}:{reason}",
    )


def now_ms() -> int:
    return int(time.time() * 1000)
