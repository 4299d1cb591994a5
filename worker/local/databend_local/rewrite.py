"""databend-local's current mask form, applied to one result (worker/local/databend_local/masking.py
says how the forms differ and how the tracker learns each value's current form).

Which cells hold masked values: ``storage_param`` (and SHOW CREATE TABLE's text), SHOW
CONNECTIONS' parameters, a stage's ``storage_params`` JSON, and a path into it
(``storage_params:access_key_id``, ``storage_params['secret_access_key']``): a cell that is
nothing but a masked value, bare or JSON-quoted. Other columns (table data read back) are left
alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from worker.local.databend_local.engine import QueryResult
from worker.local.databend_local.statements import (
    SelectSystemTables,
    ShowConnections,
    ShowCreateTable,
    Statement,
    TableRef,
)

LEGACY_PREFIX = "******"

# storage_param (and SHOW CREATE TABLE) show only the access key id: "...,ak=<masked>,iam_role=..."
_STORAGE_PARAM_AK = re.compile(r"(?<=,ak=)(.*?)(?=,iam_role=)", re.S)
# SHOW CONNECTIONS: "access_key_id=<masked> endpoint_url=<masked> ...", keys sorted
_CONNECTION_KEY = re.compile(r"(?:^| )([a-z][a-z0-9_]*)=")
# system.stages: a JSON object whose credential fields are masked
_JSON_STRING_FIELD = re.compile(r'"([a-z_]+)":("(?:[^"\\]|\\.)*")')
_STAGE_MASKED_FIELDS = frozenset(
    {"access_key_id", "secret_access_key", "security_token", "master_key", "external_id"}
)


def is_legacy_masked(shown: str) -> bool:
    return shown.startswith(LEGACY_PREFIX) and len(shown) > len(LEGACY_PREFIX)


class Tracker(Protocol):
    """What the rewriter asks the tracker (masking.MaskTracker): the object a row is about, and
    a masked value's current form (None when it cannot be told)."""

    def table(self, ref: TableRef | None) -> Any: ...

    def connection(self, name: str | None) -> Any: ...

    def stage(self, name: str | None) -> Any: ...

    def current_form(
        self, tracked: Any, field: str, shown: str, started: int, *, masks_empty: bool
    ) -> str | None: ...


class Rewriter:
    """Rewrites one result's masked cells; runs under the tracker's lock."""

    def __init__(
        self,
        tracker: Tracker,
        statement: Statement | None,
        result: QueryResult,
        started: int,
    ) -> None:
        self.tracker = tracker
        self.statement = statement
        self.result = result
        self.started = started
        self.columns = {c["name"]: i for i, c in enumerate(result.schema)}

    def run(self) -> None:
        for name, index in self.columns.items():
            if name == "storage_param" or (
                name == "Create Table" and isinstance(self.statement, ShowCreateTable)
            ):
                self._each(index, self._storage_param)
            elif name == "storage_params" and isinstance(self.statement, ShowConnections):
                self._each(index, self._connection_params)
            elif name == "storage_params":
                self._each(index, self._stage_params)
            elif name.startswith("storage_param"):  # a path into it: storage_params:access_key_id
                self._each(index, partial(self._masked_cell, name))

    def _each(self, index: int, rewrite: Callable[[list[str | None], str], str]) -> None:
        for row in self.result.rows:
            cell = row[index]
            if cell is not None:
                row[index] = rewrite(row, cell)

    def _cell(self, row: list[str | None], column: str) -> str | None:
        index = self.columns.get(column)
        return None if index is None else row[index]

    def _table_of(self, row: list[str | None]) -> TableRef | None:
        database, name = self._cell(row, "database"), self._cell(row, "name")
        if database is not None and name is not None:
            return (database, name)
        if isinstance(self.statement, ShowCreateTable):
            return self.statement.table
        if isinstance(self.statement, SelectSystemTables):
            return self.statement.pinned
        return None

    def _form(self, tracked: Any, field: str, shown: str, masks_empty: bool) -> str:
        current = self.tracker.current_form(
            tracked, field, shown, self.started, masks_empty=masks_empty
        )
        return shown if current is None else current

    def _storage_param(self, row: list[str | None], text: str) -> str:
        tracked = self.tracker.table(self._table_of(row))
        return _STORAGE_PARAM_AK.sub(
            lambda m: self._form(tracked, "access_key_id", m.group(1), True), text, count=1
        )

    def _connection_params(self, row: list[str | None], text: str) -> str:
        tracked = self.tracker.connection(self._cell(row, "name"))
        keys = list(_CONNECTION_KEY.finditer(text))
        parts = []
        for key, following in zip(keys, [*keys[1:], None], strict=True):
            end = following.start() if following else len(text)
            shown = text[key.end() : end]
            parts.append(f"{key.group(1)}={self._form(tracked, key.group(1), shown, True)}")
        return " ".join(parts) if keys else text

    def _stage_params(self, row: list[str | None], text: str) -> str:
        if not text.startswith("{"):
            return text
        tracked = self.tracker.stage(self._cell(row, "name"))

        def field(match: re.Match[str]) -> str:
            key, shown = match.group(1), json.loads(match.group(2))
            if key not in _STAGE_MASKED_FIELDS and not is_legacy_masked(shown):
                return match.group()
            current = self._form(tracked, key, shown, False)
            return f'"{key}":{json.dumps(current, ensure_ascii=False)}'

        return _JSON_STRING_FIELD.sub(field, text)

    def _masked_cell(self, column: str, row: list[str | None], text: str) -> str:
        """A cell of a path into a stage's storage_params (``storage_params:access_key_id``, its
        field the path's last part) that is only a masked value, bare or JSON-quoted."""
        quoted = len(text) > 2 and text[0] == text[-1] == '"'
        shown = text[1:-1] if quoted else text
        if not is_legacy_masked(shown):
            return text
        field = re.split(r"[:.\[\]'\"]+", column.strip("[]'\" "))[-1] or column
        tracked = self.tracker.stage(self._cell(row, "name")) if "name" in self.columns else None
        current = self._form(tracked, field, shown, False)
        return json.dumps(current, ensure_ascii=False) if quoted else current
