"""Every object that holds a copy of a connection's credentials, and how each kind is switched.

Databend copies credentials into three kinds of objects and keeps no record of where a copy came
from (Databend issue #14714), so each is looked at, switched and validated on its own terms:

- table: ``ALTER TABLE t CONNECTION=(connection_name=…)``; validated by reading a row from
  storage;
- stage: ``ALTER STAGE s SET URL='<its url>' CONNECTION=(…)``; validated by a bounded LIST with
  its own credentials;
- database default: ``ALTER DATABASE d SET OPTIONS (DEFAULT_STORAGE_CONNECTION=…)``, its path
  kept; validated by the named connection listing the path's bucket.

A stage's or a database's switch never touches storage (only a table's ALTER writes a snapshot with
the old key), so those two can be switched even after their old key is gone.
"""

from __future__ import annotations

from worker.domain import masking
from worker.domain.errors import FatalError, NotSwitchable
from worker.domain.model import DatabaseDefault, ExternalStage, StoredObject
from worker.domain.ports import DatabendAdmin
from worker.domain.sql import ObjectName, StageName, TableName, object_label


def describe(admin: DatabendAdmin, name: ObjectName) -> StoredObject | None:
    """The object as Databend shows it now; None when it does not exist (a table: also when it is
    not external — its storage kind is then '')."""
    if isinstance(name, TableName):
        return admin.describe_table(name)
    if isinstance(name, StageName):
        return admin.describe_stage(name)
    return admin.describe_database(name)


# what messages say of each kind: why a named one cannot be planned (it is not there, as the
# kind it was named as), and how one is validated
_MISSING = {
    "table": "no external table of that name",
    "stage": "no external stage of that name",
    "database": "no database of that name with a DEFAULT_STORAGE_CONNECTION",
}
_VALIDATION = {
    "table": "reading it back",
    "stage": "listing it",
    "database": "listing its path's bucket through the new connection",
}


def missing(name: ObjectName) -> str:
    return _MISSING[name.kind]


def validation(name: ObjectName) -> str:
    return _VALIDATION[name.kind]


def switch(admin: DatabendAdmin, name: ObjectName, current: StoredObject | None, to: str) -> None:
    """Give the object the credentials of connection ``to``. ``current`` is the object as just
    described (a table may pass None: its switch needs only its name)."""
    if current is not None and not current.storage.switchable:
        raise NotSwitchable(
            f"{object_label(name)} is on {current.storage.kind} storage, which Databend cannot "
            "switch to other credentials (only s3, gcs and azblob)"
        )
    if isinstance(name, TableName):
        admin.switch_table(name, to)
    elif isinstance(current, ExternalStage):
        admin.switch_stage(current, to)
    elif isinstance(current, DatabaseDefault):
        admin.switch_database(current, to)
    else:
        raise FatalError(f"{object_label(name)}: {missing(name)}")


def validate(admin: DatabendAdmin, name: ObjectName, current: StoredObject | None) -> int:
    """Prove the object works on the credentials it has now: rows read from a table, files
    listed in a stage, or (a database default) its connection listing the path's bucket.
    Returns what was read (a database: 0)."""
    if isinstance(name, TableName):
        return admin.read_back(name)
    if isinstance(name, StageName):
        return admin.list_stage(name)
    if not isinstance(current, DatabaseDefault):
        raise FatalError(f"{object_label(name)}: {missing(name)}")
    if not current.storage.bucket:
        raise FatalError(f"database {name}: its default path {current.path!r} names no bucket")
    admin.probe_connection(current.connection, current.storage.bucket)
    return 0


def connection_of(current: StoredObject | None) -> str | None:
    """The connection a database default names (other kinds keep no name)."""
    return current.connection if isinstance(current, DatabaseDefault) else None


def list_for(
    admin: DatabendAdmin,
    *,
    databases: frozenset[str] | None = None,
    tables: frozenset[TableName] | None = None,
    stages: bool = True,
    defaults: bool = True,
) -> list[StoredObject]:
    """External tables (of ``databases`` only, and only ``tables``, when given), and unless
    turned off every external stage and every database default: what a plan, an inventory or
    the evidence looks at."""
    objects: list[StoredObject] = list(admin.list_external_tables(databases, tables))
    if stages:
        objects += admin.list_stages()
    if defaults:
        objects += admin.list_database_defaults()
    return objects


def list_all(admin: DatabendAdmin) -> list[StoredObject]:
    """Every object of every kind that holds (or names) credentials."""
    return list_for(admin)


def may_show(seen: str | None, target: str) -> bool:
    """May an object showing ``seen`` hold ``target``? An unreadable view says no: the object is
    switched (again) rather than trusted."""
    try:
        return masking.may_hold(seen, target)
    except FatalError:
        return False
