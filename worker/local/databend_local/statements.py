"""Which objects a statement creates, changes or shows: just enough of Databend's SQL for masking.

databend-local's ``current`` mask format (see masking.py) needs to know which credentials each
connection, table, stage and database default holds. These are the statements that change that
(CREATE/DROP CONNECTION, CREATE/ALTER/RENAME/DROP TABLE, CREATE/ALTER/DROP STAGE and DATABASE) and
the ones whose output shows masked values for one named object (SHOW CREATE TABLE, SHOW
CONNECTIONS, DESC CONNECTION, a SELECT on system.tables pinned to one table);
statement_parser.py recognises them in SQL text. Parsed parameter values can be secrets: they are
held out of every repr and must never be logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TableRef = tuple[str, str]  # (database, table), as Databend stores them


# --- what a statement does ----------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    """Where an object's credentials come from: a named connection or inline parameters."""

    connection: str | None
    params: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class CreateConnection:
    name: str
    params: dict[str, str] = field(repr=False)
    replace: bool
    if_not_exists: bool


@dataclass(frozen=True)
class DropConnection:
    name: str


@dataclass(frozen=True)
class CreateTable:
    table: TableRef
    attachment: Attachment | None  # None: no CONNECTION clause
    has_location: bool
    replace: bool
    if_not_exists: bool


@dataclass(frozen=True)
class AlterTableConnection:
    table: TableRef
    attachment: Attachment


@dataclass(frozen=True)
class RenameTable:
    table: TableRef
    new: TableRef


@dataclass(frozen=True)
class DropTable:
    table: TableRef


@dataclass(frozen=True)
class CreateDatabase:
    name: str
    default_connection: str | None
    replace: bool
    if_not_exists: bool


@dataclass(frozen=True)
class AlterDatabaseConnection:
    name: str
    default_connection: str | None


@dataclass(frozen=True)
class RenameDatabase:
    name: str
    new: str


@dataclass(frozen=True)
class DropDatabase:
    name: str


@dataclass(frozen=True)
class CreateStage:
    name: str
    attachment: Attachment | None
    replace: bool
    if_not_exists: bool


@dataclass(frozen=True)
class AlterStage:
    name: str
    attachment: Attachment | None
    sets_url: bool


@dataclass(frozen=True)
class DropStage:
    name: str


@dataclass(frozen=True)
class ShowCreateTable:
    table: TableRef


@dataclass(frozen=True)
class ShowConnections:
    pass


@dataclass(frozen=True)
class SelectSystemTables:
    """A SELECT on system.tables; ``pinned`` when its WHERE names exactly one table."""

    pinned: TableRef | None


Statement = (
    CreateConnection
    | DropConnection
    | CreateTable
    | AlterTableConnection
    | RenameTable
    | DropTable
    | CreateDatabase
    | AlterDatabaseConnection
    | RenameDatabase
    | DropDatabase
    | CreateStage
    | AlterStage
    | DropStage
    | ShowCreateTable
    | ShowConnections
    | SelectSystemTables
)
