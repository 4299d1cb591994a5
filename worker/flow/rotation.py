"""Rotation steps: plan the affected objects, create the connection, switch and validate an object.

Each step checks before acting and may run twice: the second run changes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import tenacity

from worker.domain import masking
from worker.domain.bindings import Binding
from worker.domain.errors import (
    ConnectionConflict,
    FatalError,
    RetryableError,
    StoragePermissionDenied,
)
from worker.domain.model import (
    Credentials,
    DatabaseDefault,
    PlannedTable,
    RotationPlan,
    StoredObject,
    TableOutcome,
    TableStatus,
    short_version_id,
)
from worker.domain.ports import DatabendAdmin
from worker.domain.retries import STEP_ATTEMPTS, STEP_INITIAL_WAIT, STEP_MAX_WAIT
from worker.domain.sql import DatabaseName, ObjectName, StageName, TableName, object_label
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
            if not _may_show(existing, credentials.fingerprint):
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
        _discover(binding, objects, planned, notes, old_fingerprints | {target})
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


def _planned(obj: StoredObject, rule: str) -> PlannedTable:
    return PlannedTable(obj.name, rule, obj.storage.fingerprint, bucket=obj.storage.bucket)


def _discover(
    binding: Binding,
    objects: list[StoredObject],
    planned: dict[ObjectName, PlannedTable],
    notes: list[str],
    wanted: set[str],
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
    unreadable = []
    for obj in objects:
        if obj.name in planned:
            continue
        fp = obj.storage.fingerprint
        own = isinstance(obj, DatabaseDefault) and binding.owns_connection(obj.connection)
        if own and obj.storage.unreadable is None and any(_may_show(fp, w) for w in wanted):
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
        if not any(_may_show(fp, w) for w in wanted):
            continue
        planned[obj.name] = _planned(
            obj, f"discovered: {masking.display(fp)} in bucket {obj.storage.bucket}"
        )
    if unreadable:
        notes.append(
            f"discover: {len(unreadable)} object(s) show credentials that cannot be read and "
            f"were not discovered (no key is retired while they exist): "
            f"{', '.join(unreadable[:5])}"
        )


def rotate_object(
    admin: DatabendAdmin,
    table: ObjectName,
    *,
    connection: str,
    target: str,
    may_skip_switched: bool = True,
    retry: RetryPolicy | None = None,
    clock: Callable[[], float] = time.time,
    known_current: str | None = None,
    revert_to: tuple[str, str] | None = None,
) -> TableOutcome:
    """Switch one object (a table, a stage or a database default) to ``connection`` and validate
    it: a table is read back, a stage listed, a database's new connection lists its path's bucket.
    Never raises a FatalError: a permanent failure becomes a FAILED outcome with Databend's
    message. A RetryableError that outlives the step's retries propagates, so the task layer can
    retry later.

    ``known_current``: a table's credentials as the plan saw them, for a first attempt; the
    lookup in system.tables (a scan of every table) is then skipped. (A stage or a database is
    always looked at first: its switch restates what it shows.) A retry passes None and checks
    before acting. ``revert_to`` = (connection, its credentials' fingerprint): when validation
    fails after a switch and the object was on those credentials, it is switched back (and
    validated) and recorded REVERTED instead of being left on credentials that fail."""
    retry = retry or RetryPolicy()
    outcome = TableOutcome(table=table)
    name = table
    try:
        current: StoredObject | None = None
        if known_current is None or not isinstance(name, TableName):
            current = retry.call(lambda: objects_.describe(admin, name))
            if current is None:
                table_name = isinstance(name, TableName)
                return _failed(outcome, "table not found" if table_name else objects_.missing(name))
            if not current.storage.kind:
                return _failed(outcome, "not an external table")
            known_current = current.storage.fingerprint
        outcome.previous = known_current
        on = connection
        if may_skip_switched and _may_show(known_current, target):
            outcome.status = TableStatus.ALREADY_SWITCHED
            on = objects_.connection_of(current) or connection
        else:
            try:
                retry.call(lambda: objects_.switch(admin, name, current, connection))
            except StoragePermissionDenied as exc:
                if _old_credentials_dead(admin, name, retry):
                    outcome.status, outcome.reason = (
                        TableStatus.STRANDED,
                        (
                            f"its current credentials no longer work, so Databend cannot write the "
                            f"switch ({exc}); see the stranded-table runbook"
                        ),
                    )
                    return outcome
                raise
            outcome.status = TableStatus.SWITCHED
            outcome.switched_at = clock()
        try:
            outcome.rows_read = retry.call(lambda: _validate_on(admin, name, current, on))
        except FatalError as exc:
            if outcome.status is TableStatus.SWITCHED and revert_to is not None:
                return _revert(admin, outcome, revert_to, retry, f"{exc}")
            return _failed(outcome, f"switched, but {_validation(name)} failed: {exc}")
        if outcome.status is TableStatus.SWITCHED:
            outcome.status = TableStatus.VALIDATED
        return outcome
    except FatalError as exc:
        return _failed(outcome, str(exc))


def _validate_on(
    admin: DatabendAdmin, name: ObjectName, current: StoredObject | None, connection: str
) -> int:
    """Validate the object as it is after switching to ``connection`` (a database default is
    validated through the connection it now names)."""
    if isinstance(current, DatabaseDefault):
        current = dataclasses.replace(current, connection=connection)
    return objects_.validate(admin, name, current)


def _validation(name: ObjectName) -> str:
    if isinstance(name, TableName):
        return "reading it back"
    if isinstance(name, StageName):
        return "listing it"
    return "listing its path's bucket through the new connection"


def _revert(
    admin: DatabendAdmin,
    outcome: TableOutcome,
    revert_to: tuple[str, str],
    retry: RetryPolicy,
    failure: str,
) -> TableOutcome:
    """The new credentials cannot be validated: put the object back on the previous ones, if it
    was on them, while they still work."""
    back, previous = revert_to
    name = outcome.table
    what = _validation(name)
    if not _may_show(outcome.previous, previous):
        return _failed(outcome, f"switched, but {what} failed: {failure}")
    try:
        current = retry.call(lambda: objects_.describe(admin, name))
        retry.call(lambda: objects_.switch(admin, name, current, back))
        outcome.rows_read = retry.call(lambda: _validate_on(admin, name, current, back))
    except FatalError as exc:
        return _failed(
            outcome,
            f"switched, but {what} failed: {failure}; switching it back to {back} "
            f"failed too: {exc}",
        )
    outcome.status = TableStatus.REVERTED
    outcome.reason = (
        f"{what} on the new credentials failed ({failure}); switched back to {back} and validated"
    )
    return outcome


def _may_show(seen: str | None, target: str) -> bool:
    """May an object showing ``seen`` hold ``target``? An unreadable view says no: the object is
    switched (again) rather than trusted."""
    try:
        return masking.may_hold(seen, target)
    except FatalError:
        return False


def _old_credentials_dead(admin: DatabendAdmin, name: ObjectName, retry: RetryPolicy) -> bool:
    """Can the object still be used with the credentials it has now? No: it is stranded. (Only
    a table's switch writes to storage; a stage's or a database's never needs the old key.)"""
    if isinstance(name, DatabaseName):
        return False
    try:
        retry.call(lambda: objects_.validate(admin, name, None))
    except StoragePermissionDenied:
        return True
    except FatalError:
        return False
    return False


STRANDED_RUNBOOK = """\
Stranded tables: their current key was revoked before they were switched, and Databend writes the
switch with the current key, so ALTER TABLE ... CONNECTION cannot succeed. Never DROP such a table:
DROP + CREATE at the same location shows an empty table (the data is orphaned), and ATTACH TABLE
needs an enterprise licence.
1. If the old key was only deactivated, reactivate it (aws iam update-access-key --status Active),
   re-run the rotation (rotator rotate-version SECRET --version-id NEW), then deactivate it again.
2. If it was deleted, grant a key that can write the tables' location the same access and put it
   in a connection; ask Databend support to repoint the tables, or keep them read-only elsewhere.
3. Keep the data files in the bucket untouched until the tables read again.
"""


def _failed(outcome: TableOutcome, reason: str) -> TableOutcome:
    outcome.status = TableStatus.FAILED
    outcome.reason = reason
    return outcome
