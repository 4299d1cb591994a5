"""Rotation steps: plan the affected tables, create the connection, switch and read back a table.

Each step checks before acting and may run twice: the second run changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import tenacity

from worker.core import masking
from worker.core.bindings import Binding
from worker.core.model import (
    Credentials,
    ExternalTable,
    PlannedTable,
    RotationPlan,
    TableOutcome,
    TableStatus,
    short_version_id,
)
from worker.core.ports import DatabendAdmin
from worker.errors import FatalError, RetryableError, StoragePermissionDenied
from worker.sql import TableName

log = logging.getLogger("rotator.core")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries inside one step (tenacity): transient errors only, then give up.

    Budget: ``attempts`` tries per statement, waits growing from ``initial_wait`` up to
    ``max_wait`` seconds with jitter. Celery retries the whole task on top only when a step
    gave up on a retryable error, so the two layers never multiply unboundedly.
    """

    attempts: int = 4
    initial_wait: float = 0.2
    max_wait: float = 5.0
    sleep: Callable[[float], None] = field(default=tenacity.nap.sleep)

    def call(self, fn: Callable[[], Any]) -> Any:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryableError),
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential_jitter(
                multiplier=self.initial_wait, jitter=self.initial_wait, max=self.max_wait
            ),
            sleep=self.sleep,
            before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
            reraise=True,
        )
        return retrying(fn)


def connection_name_for(binding: Binding, version_id: str) -> str:
    """Deterministic: the same (binding, version) always names the same connection."""
    return f"{binding.connection_prefix}_{short_version_id(version_id)}"


class ConnectionConflict(FatalError):
    pass


def ensure_connection(admin: DatabendAdmin, name: str, credentials: Credentials) -> bool:
    """Create the connection unless it exists; True when this call created it.

    An existing connection of that name must carry the same credentials (as far as Databend
    shows them), otherwise the name was taken by someone else and nothing is changed.
    """
    existing = admin.connection_fingerprint(name)
    if existing is not None:
        if not _may_show(existing, credentials.fingerprint):
            raise ConnectionConflict(
                f"connection {name} already exists with other credentials "
                f"({masking.display(existing)})"
            )
        return False
    admin.create_connection(name, credentials)
    return True


def plan_rotation(
    binding: Binding,
    tables: Iterable[ExternalTable],
    *,
    connection: str,
    target: str,
    old_fingerprints: set[str],
) -> RotationPlan:
    """Which tables this rotation switches, and the rule that selected each.

    - A table named by a selector is always affected.
    - With ``discover``, an external table whose credentials look like the secret's previous
      (or new) version AND whose bucket is one the binding serves is affected too. The buckets
      a binding serves are its ``buckets`` list plus the buckets of its selector-matched tables;
      with no bucket known, discovery matches nothing (a 3-character key suffix alone is too weak
      to move someone else's table).
    """
    tables = list(tables)
    planned: dict[TableName, PlannedTable] = {}
    notes: list[str] = []
    for table in tables:
        for selector in binding.selectors:
            if selector.matches(table.name):
                planned[table.name] = PlannedTable(
                    table.name,
                    f"selector {selector.text}",
                    table.storage.fingerprint,
                    bucket=table.storage.bucket,
                )
                break
    for selector in binding.selectors:
        if selector.is_exact and selector.exact_table not in planned:
            planned[selector.exact_table] = PlannedTable(
                selector.exact_table,
                f"selector {selector.text}",
                None,
                problem="no external table of that name",
            )
    if binding.discover:
        buckets = set(binding.buckets) | {
            t.storage.bucket for t in tables if t.name in planned and t.storage.bucket
        }
        wanted = old_fingerprints | {target}
        if not buckets:
            notes.append(
                "discover: no bucket known for this binding (set 'buckets' or name a "
                "table); discovery matched nothing"
            )
        unreadable = []
        for table in tables:
            if table.name in planned or table.storage.bucket not in buckets:
                continue
            if table.storage.unreadable is not None:
                unreadable.append(f"{table.name} ({table.storage.unreadable})")
                continue
            fp = table.storage.fingerprint
            if not any(_may_show(fp, w) for w in wanted):
                continue
            planned[table.name] = PlannedTable(
                table.name,
                f"discovered: {masking.display(fp)} in bucket {table.storage.bucket}",
                fp,
                bucket=table.storage.bucket,
            )
        if unreadable:
            notes.append(
                f"discover: {len(unreadable)} table(s) show credentials that cannot be read and "
                f"were not discovered (no key is retired while they exist): "
                f"{', '.join(unreadable[:5])}"
            )
    if not all(masking.distinguishable(target, old) for old in old_fingerprints):
        notes.append(
            "the new credentials look like an old version's to Databend; every table "
            "is switched even if it seems switched already"
        )
    ordered = tuple(sorted(planned.values(), key=lambda p: p.table))
    return RotationPlan(connection=connection, target=target, tables=ordered, notes=tuple(notes))


def rotate_table(
    admin: DatabendAdmin,
    table: TableName,
    *,
    connection: str,
    target: str,
    may_skip_switched: bool = True,
    retry: RetryPolicy | None = None,
    clock: Callable[[], float] = time.time,
    known_current: str | None = None,
    revert_to: tuple[str, str] | None = None,
) -> TableOutcome:
    """Switch one table to ``connection`` and read it back. Never raises a FatalError: a
    permanent failure becomes a FAILED outcome with Databend's message. A RetryableError that
    outlives the step's retries propagates, so the task layer can retry later.

    ``known_current``: the table's credentials as the plan saw them, for a first attempt; the
    lookup in system.tables (a scan of every table) is then skipped. A retry passes None and
    checks before acting. ``revert_to`` = (connection, its credentials' fingerprint): when the
    read-back fails after a switch and the table was on those credentials, it is switched back
    (and read back) and recorded REVERTED instead of being left on credentials that fail."""
    retry = retry or RetryPolicy()
    outcome = TableOutcome(table=table)
    try:
        if known_current is None:
            current = retry.call(lambda: admin.describe_table(table))
            if current is None:
                return _failed(outcome, "table not found")
            if not current.storage.kind:
                return _failed(outcome, "not an external table")
            known_current = current.storage.fingerprint
        outcome.previous = known_current
        if may_skip_switched and _may_show(known_current, target):
            outcome.status = TableStatus.ALREADY_SWITCHED
        else:
            try:
                retry.call(lambda: admin.switch_table(table, connection))
            except StoragePermissionDenied as exc:
                if _old_credentials_dead(admin, table, retry):
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
            outcome.rows_read = retry.call(lambda: admin.read_back(table))
        except FatalError as exc:
            if outcome.status is TableStatus.SWITCHED and revert_to is not None:
                return _revert(admin, outcome, revert_to, retry, f"{exc}")
            return _failed(outcome, f"switched, but reading it back failed: {exc}")
        if outcome.status is TableStatus.SWITCHED:
            outcome.status = TableStatus.VALIDATED
        return outcome
    except FatalError as exc:
        return _failed(outcome, str(exc))


def _revert(
    admin: DatabendAdmin,
    outcome: TableOutcome,
    revert_to: tuple[str, str],
    retry: RetryPolicy,
    failure: str,
) -> TableOutcome:
    """The new credentials cannot read the table: put it back on the previous ones, if it was on
    them, while they still work."""
    back, previous = revert_to
    if not _may_show(outcome.previous, previous):
        return _failed(outcome, f"switched, but reading it back failed: {failure}")
    try:
        retry.call(lambda: admin.switch_table(outcome.table, back))
        outcome.rows_read = retry.call(lambda: admin.read_back(outcome.table))
    except FatalError as exc:
        return _failed(
            outcome,
            f"switched, but reading it back failed: {failure}; switching it back to {back} "
            f"failed too: {exc}",
        )
    outcome.status = TableStatus.REVERTED
    outcome.reason = (
        f"reading it back on the new credentials failed ({failure}); switched back to {back} "
        "and read back"
    )
    return outcome


def _may_show(seen: str | None, target: str) -> bool:
    """May an object showing ``seen`` hold ``target``? An unreadable view says no: the object is
    switched (again) rather than trusted."""
    try:
        return masking.may_hold(seen, target)
    except FatalError:
        return False


def _old_credentials_dead(admin: DatabendAdmin, table: TableName, retry: RetryPolicy) -> bool:
    """Can the table still be read with the credentials it has now? No: it is stranded."""
    try:
        retry.call(lambda: admin.read_back(table))
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
