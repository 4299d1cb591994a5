"""Rotation steps: plan the affected objects and create the connection (worker/flow/switch.py
switches and validates each object).

Each step checks before acting and may run twice: the second run changes nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import tenacity

from worker.domain import masking
from worker.domain.bindings import Binding
from worker.domain.errors import (
    ConnectionConflict,
    RetryableError,
)
from worker.domain.model import (
    AccessKeyCredentials,
    Credentials,
    DatabaseDefault,
    PlannedTable,
    RotationPlan,
    StoredObject,
    short_version_id,
)
from worker.domain.ports import DatabendAdmin
from worker.domain.retries import STEP_ATTEMPTS, STEP_INITIAL_WAIT, STEP_MAX_WAIT
from worker.domain.sql import ObjectName, object_label
from worker.flow import objects as objects_

log = logging.getLogger("rotator.core")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries inside one step (tenacity): transient errors only, then give up.

    Budget: ``attempts`` tries per statement, waits growing from ``initial_wait`` up to
    ``max_wait`` seconds with jitter (worker/domain/retries.py holds every layer's budget).
    """

    attempts: int = STEP_ATTEMPTS
    initial_wait: float = STEP_INITIAL_WAIT
    max_wait: float = STEP_MAX_WAIT
    sleep: Callable[[float], None] = field(default=tenacity.nap.sleep)

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` under the policy. The first attempt runs outside tenacity: almost every
        statement succeeds at once, and tenacity's per-call bookkeeping was 14 % of the
        rotator's own CPU per object (benchmarks/bookkeeping.py). A failed first attempt is
        handed to tenacity as its own attempt 1 (re-raised, not re-run), so the waits, the log
        line and the budget are tenacity's, exactly as when every attempt went through it."""
        try:
            return fn()
        except RetryableError as exc:
            first: RetryableError | None = exc

        def attempt() -> Any:
            nonlocal first
            if first is not None:
                error, first = first, None
                raise error
            return fn()

        return self._retrying(attempt)

    @functools.cached_property
    def _retrying(self) -> tenacity.Retrying:
        """Built once per policy (half of a call's cost was building it); tenacity keeps each
        call's state per thread, so threads share it."""
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryableError),
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential_jitter(
                multiplier=self.initial_wait, jitter=self.initial_wait, max=self.max_wait
            ),
            sleep=self.sleep,
            before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
            reraise=True,
        )


def connection_name_for(binding: Binding, version_id: str) -> str:
    """Deterministic: the same (binding, version) always names the same connection."""
    return f"{binding.connection_prefix}_{short_version_id(version_id)}"


def ensure_connection(admin: DatabendAdmin, name: str, credentials: Credentials) -> bool:
    """Create the connection unless it exists; True when this call created it.

    An existing connection of that name must carry the same credentials (as far as Databend
    shows them), otherwise the name was taken by someone else and nothing is changed. The create
    comes first (a new version's connection does not exist yet: one statement); only when the
    name is taken are its credentials looked at.
    """
    for _ in range(2):  # (once more if the existing one was dropped before it was looked at)
        if admin.create_connection(name, credentials):
            return True
        existing = admin.connection_fingerprint(name)
        if existing is not None:
            if not objects_.may_show(existing, credentials.fingerprint):
                raise ConnectionConflict(
                    f"connection {name} already exists with other credentials "
                    f"({masking.display(existing)})"
                )
            return False
    raise ConnectionConflict(f"connection {name} exists but cannot be looked at")


def plan_rotation(
    binding: Binding,
    objects: Iterable[StoredObject],
    *,
    connection: str,
    target: str,
    old_fingerprints: set[str],
    secret_keys: Mapping[str, str] | None = None,
) -> RotationPlan:
    """Which objects (tables, stages, database defaults) this rotation switches, and the rule that
    selected each.

    - An object named by a selector of its kind is always affected.
    - With ``discover``, an object whose credentials look like the secret's previous (or new)
      version AND whose bucket is one the binding serves is affected too. The buckets a binding
      serves are its ``buckets`` list plus the buckets of its selector-matched objects; with no
      bucket known, discovery matches nothing (a few shown characters of a key are too weak to
      move someone else's object). A database default that names one of the binding's own
      connections (``<prefix>_<version>``) on old credentials is affected wherever its path is.
    - An object the binding selects whose storage kind Databend cannot switch (oss, cos, obs,
      hdfs, …) is refused by name (``refusals``): the run must not start.
    - ``secret_keys``: the secret access key of each credentials looked for, by fingerprint. An
      object that shows its secret key too (a stage; a database default, through its connection)
      as none of theirs holds another key, however alike its key id looks (Databend >= 1.2.919
      shows four characters of each): discovery leaves it alone.
    """
    objects = list(objects)
    planned: dict[ObjectName, PlannedTable] = {}
    notes: list[str] = []
    for obj in objects:
        selector = binding.selector_for(obj.name)
        if selector is not None:
            planned[obj.name] = _planned(obj, f"selector {selector.text}")
    for text, name in binding.exact_names():
        if name not in planned:
            planned[name] = PlannedTable(
                name, f"selector {text}", None, problem=objects_.missing(name)
            )
    if binding.discover:
        _discover(binding, objects, planned, notes, old_fingerprints | {target}, secret_keys or {})
    if not all(masking.distinguishable(target, old) for old in old_fingerprints):
        notes.append(
            "the new credentials look like an old version's to Databend; every object "
            "is switched even if it seems switched already"
        )
    by_name = {obj.name: obj for obj in objects}
    refusals = tuple(
        f"{object_label(p.table)} ({by_name[p.table].storage.kind}, {p.rule})"
        for p in planned.values()
        if p.table in by_name and not by_name[p.table].storage.switchable
    )
    ordered = tuple(sorted(planned.values(), key=lambda p: p.table))
    return RotationPlan(
        connection=connection,
        target=target,
        tables=ordered,
        notes=tuple(notes),
        refusals=refusals,
    )


def secret_keys_of(credentials: Iterable[Credentials]) -> dict[str, str]:
    """``plan_rotation``'s ``secret_keys``: the secret access key of each access key, by its
    fingerprint (a role has none)."""
    return {
        c.fingerprint: c.secret_access_key
        for c in credentials
        if isinstance(c, AccessKeyCredentials)
    }


def _planned(obj: StoredObject, rule: str) -> PlannedTable:
    return PlannedTable(obj.name, rule, obj.storage.fingerprint, bucket=obj.storage.bucket)


def _discover(
    binding: Binding,
    objects: list[StoredObject],
    planned: dict[ObjectName, PlannedTable],
    notes: list[str],
    wanted: set[str],
    secret_keys: Mapping[str, str],
) -> None:
    """Discovery by fingerprint + a served bucket (see plan_rotation)."""
    by_name = {obj.name: obj for obj in objects}
    buckets = set(binding.buckets) | {
        by_name[name].storage.bucket
        for name in planned
        if name in by_name and by_name[name].storage.bucket
    }
    if not buckets:
        notes.append(
            "discover: no bucket known for this binding (set 'buckets' or name an "
            "object); discovery matched nothing but the binding's own connections"
        )
    unreadable, others = [], []
    for obj in objects:
        if obj.name in planned:
            continue
        fp = obj.storage.fingerprint
        own = isinstance(obj, DatabaseDefault) and binding.owns_connection(obj.connection)
        if own and obj.storage.unreadable is None and any(objects_.may_show(fp, w) for w in wanted):
            assert isinstance(obj, DatabaseDefault)
            planned[obj.name] = _planned(
                obj, f"discovered: names {obj.connection}, a connection of this binding"
            )
            continue
        if obj.storage.bucket not in buckets or obj.storage.kind != "s3":
            continue  # (only S3 objects hold AWS credentials: an oss key that looks alike is not)
        if obj.storage.unreadable is not None:
            unreadable.append(f"{object_label(obj.name)} ({obj.storage.unreadable})")
            continue
        alike = [w for w in wanted if objects_.may_show(fp, w)]
        if not alike:
            continue
        if all(
            w in secret_keys and obj.storage.shows_another_secret(secret_keys[w]) for w in alike
        ):
            others.append(object_label(obj.name))
            continue
        planned[obj.name] = _planned(
            obj, f"discovered: {masking.display(fp)} in bucket {obj.storage.bucket}"
        )
    if others:
        notes.append(
            f"discover: {len(others)} object(s) show a key id like the secret's but another "
            f"secret key, so another key: left alone: {', '.join(others[:5])}"
        )
    if unreadable:
        notes.append(
            f"discover: {len(unreadable)} object(s) show credentials that cannot be read and "
            f"were not discovered (no key is retired while they exist): "
            f"{', '.join(unreadable[:5])}"
        )
