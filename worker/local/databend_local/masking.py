"""How databend-local shows masked credentials: the engine's legacy form or today's current form.

Databend masks credential values wherever it shows them: storage_param in system.tables (and
``SHOW CREATE TABLE``), storage_params in system.stages (and ``DESC STAGE``), every parameter in
``SHOW CONNECTIONS`` / ``DESC CONNECTION``. Two forms exist:

- ``legacy`` (servers up to 1.2.918, the embedded engine 1.2.895): ``******`` + the last 3
  characters; a value of 3 characters or fewer is shown as it is.
- ``current`` (1.2.919 and later, databendlabs/databend PR #19889): the first 2 characters,
  ``***``, the last 2; a value of 4 characters or fewer is ``***``. Empty values stay empty where
  the server skips empty values (system.stages) and become ``***`` where it masks unconditionally
  (storage_param's ``ak=``, connection parameters).

``--mask-format current`` rewrites the engine's legacy text into the current form. The legacy text
lacks the first 2 characters, so MaskTracker learns them from the statements that pass through
databend-local (it sees every one: the engine's catalog lives only as long as the process). From
each successful statement it records, as masked renditions only (no full value is kept), which
parameters each connection holds, which credentials each table, stage and database default took
(CREATE [OR REPLACE] CONNECTION/TABLE/STAGE/DATABASE, ALTER TABLE … CONNECTION, ALTER STAGE … SET
URL … CONNECTION, ALTER DATABASE … SET OPTIONS, renames and drops), and every value it ever saw.

A masked value in a result is rewritten from, in order:
1. the object the row is about (the row's database and name, the table SHOW CREATE TABLE names, a
   system.tables query pinned to one table by its WHERE, a stage's or connection's name) when its
   recorded value has exactly this legacy text and it did not change while the query ran;
2. otherwise every value ever seen with this legacy text (any ``name = '…'`` literal of any
   successful statement that mentions a credential parameter), when they all have one current
   form.
When neither decides (two values share the last 3 characters but not the first 2, and the row's
object is unknown), the engine's legacy text is left as it is and a warning is logged: a client
then sees a form it must treat as unknown, never a key it could mistake for another.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from enum import StrEnum

from worker.domain import masking
from worker.local.databend_local.engine import ENGINE_VERSION, QueryResult
from worker.local.databend_local.rewrite import Rewriter, is_legacy_masked
from worker.local.databend_local.sqltokens import assigned_literals
from worker.local.databend_local.statement_parser import parse_statement
from worker.local.databend_local.statements import (
    AlterDatabaseConnection,
    AlterStage,
    AlterTableConnection,
    Attachment,
    CreateConnection,
    CreateDatabase,
    CreateStage,
    CreateTable,
    DropConnection,
    DropDatabase,
    DropStage,
    DropTable,
    RenameDatabase,
    RenameTable,
    Statement,
    TableRef,
)

log = logging.getLogger("rotator.databend_local")

CURRENT_MASKING_VERSION = "1.2.919"

# parameter names that mean the same credential
_ALIASES = {
    "aws_key_id": "access_key_id",
    "aws_secret_key": "secret_access_key",
    "aws_token": "security_token",
    "session_token": "security_token",
}


class MaskFormat(StrEnum):
    LEGACY = "legacy"
    CURRENT = "current"


def mask_legacy(value: str) -> str:
    """What Databend ≤ 1.2.918 (and the embedded engine) shows for ``value``."""
    return masking.mask(value, masking.MaskForm.LEGACY)


def mask_current(value: str) -> str:
    """What Databend ≥ 1.2.919 shows for ``value``."""
    return masking.mask(value, masking.MaskForm.CURRENT) or "***"


def current_version_text() -> str:
    """What ``SELECT version()`` answers in the current mask format."""
    return (
        f"Databend Query v{CURRENT_MASKING_VERSION}-databend-local"
        f" (current masking emulated on engine v{ENGINE_VERSION})"
    )


@dataclass(frozen=True)
class Masked:
    """One value's two renditions; the value itself is not kept."""

    legacy: str
    current: str

    @classmethod
    def of(cls, value: str) -> Masked:
        return cls(mask_legacy(value), mask_current(value))


Params = dict[str, Masked]  # parameter name (lower case, as written) -> renditions


@dataclass(frozen=True)
class _Tracked:
    params: Params
    since: int  # the change sequence number that set it


def _canonical(name: str) -> str:
    return _ALIASES.get(name, name)


def _find(params: Params, field: str) -> Masked | None:
    wanted = _canonical(field)
    for name, masked in params.items():
        if _canonical(name) == wanted:
            return masked
    return None


class MaskTracker:
    """Learns credentials from successful statements and rewrites results into the current form.

    Thread-safe. ``sequence`` is read before a query runs and handed back to ``after_success``, so
    that an object changed while the query ran is not trusted for that query's rows.
    """

    def __init__(self, engine_version_text: str | None = None) -> None:
        self.engine_version_text = engine_version_text
        self.version_text = current_version_text()
        self.unresolved = 0  # masked values left in the legacy form
        self._lock = threading.Lock()
        self._sequence = 0
        self._connections: dict[str, _Tracked] = {}
        self._tables: dict[TableRef, _Tracked] = {}
        self._stages: dict[str, _Tracked] = {}
        self._databases: dict[str, str | None] = {}  # name -> default connection
        self._by_legacy: dict[str, set[str]] = {}

    @property
    def sequence(self) -> int:
        with self._lock:
            return self._sequence

    def after_success(self, sql: str, database: str, result: QueryResult, started: int) -> None:
        """Record what the statement changed, then rewrite its result in place."""
        statement = parse_statement(sql, database)
        seen = assigned_literals(sql)
        with self._lock:
            for value in seen:
                self._learn({"": value})
            if statement is not None:
                self._observe(statement)
            if result.rows:
                Rewriter(self, statement, result, started).run()
        if result.rows and self.engine_version_text:
            self._rewrite_version(result)

    def _rewrite_version(self, result: QueryResult) -> None:
        columns = [i for i, c in enumerate(result.schema) if "String" in c["type"]]
        for row in result.rows:
            for i in columns:
                if row[i] == self.engine_version_text:
                    row[i] = self.version_text

    # --- learning ---

    def _learn(self, params: dict[str, str]) -> Params:
        masked = {name: Masked.of(value) for name, value in params.items()}
        for m in masked.values():
            self._by_legacy.setdefault(m.legacy, set()).add(m.current)
        return masked

    def _credentials(self, attachment: Attachment) -> Params | None:
        if attachment.connection is not None:
            tracked = self._connections.get(attachment.connection)
            return dict(tracked.params) if tracked else None
        return self._learn(attachment.params)

    def _set[K](self, registry: dict[K, _Tracked], key: K, params: Params | None) -> None:
        if params is None:
            registry.pop(key, None)
        else:
            registry[key] = _Tracked(params, self._sequence)

    def _observe(self, statement: Statement) -> None:
        self._sequence += 1
        s = statement
        if isinstance(s, CreateConnection):
            if not (s.if_not_exists and s.name in self._connections):
                self._set(self._connections, s.name, self._learn(s.params))
        elif isinstance(s, DropConnection):
            self._connections.pop(s.name, None)
        elif isinstance(s, CreateTable):
            if not (s.if_not_exists and s.table in self._tables):
                self._set(self._tables, s.table, self._table_credentials(s))
        elif isinstance(s, AlterTableConnection):
            self._set(self._tables, s.table, self._credentials(s.attachment))
        elif isinstance(s, RenameTable):
            moved = self._tables.pop(s.table, None)
            self._set(self._tables, s.new, moved.params if moved else None)
        elif isinstance(s, DropTable):
            self._tables.pop(s.table, None)
        elif isinstance(s, CreateStage):
            if not (s.if_not_exists and s.name in self._stages):
                params = self._credentials(s.attachment) if s.attachment else None
                self._set(self._stages, s.name, params)
        elif isinstance(s, AlterStage):
            if s.attachment is not None:
                self._set(self._stages, s.name, self._credentials(s.attachment))
            elif s.sets_url:
                self._stages.pop(s.name, None)
        elif isinstance(s, DropStage):
            self._stages.pop(s.name, None)
        else:
            self._observe_database(s)

    def _observe_database(self, s: Statement) -> None:
        if isinstance(s, CreateDatabase):
            if not (s.if_not_exists and s.name in self._databases):
                if s.replace:
                    self._drop_tables_of(s.name)
                self._databases[s.name] = s.default_connection
        elif isinstance(s, AlterDatabaseConnection):
            self._databases[s.name] = s.default_connection
        elif isinstance(s, RenameDatabase):
            self._databases[s.new] = self._databases.pop(s.name, None)
            for (database, table), tracked in list(self._tables.items()):
                if database == s.name:
                    del self._tables[(database, table)]
                    self._set(self._tables, (s.new, table), tracked.params)
        elif isinstance(s, DropDatabase):
            self._databases.pop(s.name, None)
            self._drop_tables_of(s.name)

    def _table_credentials(self, statement: CreateTable) -> Params | None:
        if statement.attachment is not None:
            return self._credentials(statement.attachment)
        default = self._databases.get(statement.table[0])
        if default is None or statement.has_location:
            return None  # not an external table this tracker can describe
        tracked = self._connections.get(default)
        return dict(tracked.params) if tracked else None

    def _drop_tables_of(self, database: str) -> None:
        for key in [k for k in self._tables if k[0] == database]:
            del self._tables[key]

    # --- looking up ---

    def table(self, ref: TableRef | None) -> _Tracked | None:
        return self._tables.get(ref) if ref is not None else None

    def connection(self, name: str | None) -> _Tracked | None:
        return self._connections.get(name) if name is not None else None

    def stage(self, name: str | None) -> _Tracked | None:
        return self._stages.get(name) if name is not None else None

    def current_form(
        self, tracked: _Tracked | None, field: str, shown: str, started: int, *, masks_empty: bool
    ) -> str | None:
        """The current form of a value the engine shows as ``shown``; None when unknown."""
        if not is_legacy_masked(shown):
            if len(shown) > 3:
                return shown  # not a masked value at all: nothing to rewrite
            # the legacy form shows values of 3 characters or fewer as they are
            return "" if shown == "" and not masks_empty else "***"
        if tracked is not None and tracked.since <= started:
            masked = _find(tracked.params, field)
            if masked is not None and masked.legacy == shown:
                return masked.current
        candidates = self._by_legacy.get(shown, set())
        if len(candidates) == 1:
            return next(iter(candidates))
        self.unresolved += 1
        log.warning(
            "databend-local cannot tell the current mask form of a %s value (%s): left as is",
            field,
            shown if _canonical(field) == "access_key_id" else "masked",
        )
        return None
