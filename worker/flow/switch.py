"""Switch one object (a table, a stage or a database default) to a connection and validate it;
a switch that cannot be validated is put back, and a table whose current key is dead is reported
stranded, never dropped.

Each step checks before acting and may run twice: the second run changes nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from worker.domain import masking
from worker.domain.errors import FatalError, StoragePermissionDenied
from worker.domain.model import DatabaseDefault, StoredObject, TableOutcome, TableStatus
from worker.domain.ports import DatabendAdmin
from worker.domain.sql import DatabaseName, ObjectName, TableName
from worker.flow import objects as objects_
from worker.flow.rotation import RetryPolicy


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
    unless_moved_from: str | None = None,
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
    validated) and recorded REVERTED instead of being left on credentials that fail.
    ``unless_moved_from``: what the plan saw the object on; if it is looked at (a first attempt
    passes no ``known_current`` then) and shows other credentials now, not the target either,
    another run moved it meanwhile (a migration): it is left there, SUPERSEDED."""
    retry = retry or RetryPolicy()
    outcome = TableOutcome(table=table)
    try:
        current: StoredObject | None = None
        if known_current is None or not isinstance(table, TableName):
            current = retry.call(lambda: objects_.describe(admin, table))
            if current is None or not current.storage.kind:
                return _failed(outcome, _not_switchable(table, current))
            known_current = current.storage.fingerprint
            if _moved_since(unless_moved_from, known_current, target):
                outcome.status, outcome.reason = TableStatus.SUPERSEDED, MOVED_MEANWHILE
                outcome.previous = unless_moved_from
                return outcome
        outcome.previous = known_current
        on = connection
        if may_skip_switched and objects_.may_show(known_current, target):
            outcome.status = TableStatus.ALREADY_SWITCHED
            on = objects_.connection_of(current) or connection
        elif not _switch(admin, outcome, current, connection, retry, clock):
            return outcome  # stranded: its current credentials are dead
        return _validate(admin, outcome, current, on, retry, revert_to)
    except FatalError as exc:
        return _failed(outcome, str(exc))


MOVED_MEANWHILE = (
    "moved onto other credentials after this run planned it (by another run, such as a "
    "migration); left where it is"
)


def _moved_since(planned: str | None, now: str | None, target: str) -> bool:
    """Does the object show other credentials than the plan saw (and not the target)? Only
    when the two views provably differ: the same key shown in another form (a server upgraded
    since the plan) is not a move."""
    return masking.shown_apart(planned, now) and not objects_.may_show(now, target)


def _not_switchable(name: ObjectName, current: StoredObject | None) -> str:
    """Why an object the switch looked at cannot be switched (missing, or not external)."""
    if current is None:
        return "table not found" if isinstance(name, TableName) else objects_.missing(name)
    return "not an external table"


def _switch(
    admin: DatabendAdmin,
    outcome: TableOutcome,
    current: StoredObject | None,
    connection: str,
    retry: RetryPolicy,
    clock: Callable[[], float],
) -> bool:
    """Switch the object to ``connection`` (SWITCHED); False when Databend cannot write the
    switch because the object's current credentials are dead (STRANDED, with the reason)."""
    name = outcome.table
    try:
        retry.call(lambda: objects_.switch(admin, name, current, connection))
    except StoragePermissionDenied as exc:
        if not _old_credentials_dead(admin, name, retry):
            raise
        outcome.status = TableStatus.STRANDED
        outcome.reason = (
            f"its current credentials no longer work, so Databend cannot write the switch "
            f"({exc}); see the stranded-table runbook"
        )
        return False
    outcome.status = TableStatus.SWITCHED
    outcome.switched_at = clock()
    return True


def _validate(
    admin: DatabendAdmin,
    outcome: TableOutcome,
    current: StoredObject | None,
    on: str,
    retry: RetryPolicy,
    revert_to: tuple[str, str] | None,
) -> TableOutcome:
    """Validate the object on connection ``on`` (VALIDATED once switched); when that fails
    after this switch, switch it back to ``revert_to`` (REVERTED) or record it FAILED."""
    name = outcome.table
    try:
        outcome.rows_read = retry.call(lambda: _validate_on(admin, name, current, on))
    except FatalError as exc:
        if outcome.status is TableStatus.SWITCHED and revert_to is not None:
            return _revert(admin, outcome, revert_to, retry, f"{exc}")
        return _failed(outcome, f"switched, but {objects_.validation(name)} failed: {exc}")
    if outcome.status is TableStatus.SWITCHED:
        outcome.status = TableStatus.VALIDATED
    return outcome


def _validate_on(
    admin: DatabendAdmin, name: ObjectName, current: StoredObject | None, connection: str
) -> int:
    """Validate the object as it is after switching to ``connection`` (a database default is
    validated through the connection it now names)."""
    if isinstance(current, DatabaseDefault):
        current = dataclasses.replace(current, connection=connection)
    return objects_.validate(admin, name, current)


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
    what = objects_.validation(name)
    if not objects_.may_show(outcome.previous, previous):
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
