"""The embedded Databend engine behind databend-local: a bounded pool of engine sessions.

The engine's catalog lives inside this process; every SessionContext created here shares it. One
SessionContext must never be used by two threads at once ("Already borrowed"), so each query borrows
a whole session from the pool for its duration. Session state that the HTTP protocol carries
(the current database) is re-applied to the borrowed session before each query.
"""

from __future__ import annotations

import datetime as dt
import decimal
import queue
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from worker.domain.sql import quote_identifier
from worker.local.databend_local.jsonb import JsonbError, jsonb_to_json

ENGINE_VERSION = "1.2.895"

# "Error: SyntaxException. Code: 1005, Text = error: ..." or "DataFrame collect error: UnknownTable.
# Code: 1025, Text = ..." is how the engine words its errors; the first coded error is the one a
# Databend server would report. Backtrace lines ("  12: <unknown>@e0ac329", "at :3150:19") are
# noise.
_ENGINE_ERROR = re.compile(r"(?P<name>[A-Z]\w*)\. Code: (?P<code>\d+), Text = (?P<text>.*)", re.S)
_BACKTRACE_LINE = re.compile(r"^\s*(\d+: .*|at .*)$")

_USE_STATEMENT = re.compile(r"\s*use\s", re.I)


class EngineError(Exception):
    """An error the engine raised, with Databend's numeric code."""

    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(code, name, message)
        self.code = code
        self.name = name
        self.message = message

    def __str__(self) -> str:
        return f"{self.name}. Code: {self.code}, Text = {self.message}"


def parse_engine_error(exc: BaseException) -> EngineError:
    text = str(exc)
    match = _ENGINE_ERROR.search(text)
    if match is None:
        return EngineError(code=1001, name="Internal", message=text)
    return EngineError(
        code=int(match["code"]), name=match["name"], message=_strip_backtrace(match["text"])
    )


def _strip_backtrace(text: str) -> str:
    lines = [line for line in text.splitlines() if not _BACKTRACE_LINE.match(line)]
    cleaned = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return cleaned.rstrip(".").rstrip()


@dataclass
class QueryResult:
    """A finished query: Databend type names per column and rows of wire values (str or None)."""

    schema: list[dict[str, str]]
    rows: list[list[str | None]]
    database: str


class EngineSession:
    """One engine SessionContext plus the database it currently has selected."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.database = "default"

    def run(self, sql: str, database: str | None) -> QueryResult:
        if database and database != self.database:
            self._execute(f"USE {quote_identifier(database)}")
            self.database = database
        table = self._execute(sql)
        if _USE_STATEMENT.match(sql):
            current = self._execute("SELECT current_database()").column(0).to_pylist()
            self.database = str(current[0])
        return QueryResult(
            schema=[{"name": f.name, "type": databend_type_name(f)} for f in table.schema],
            rows=table_to_wire_rows(table),
            database=self.database,
        )

    def _execute(self, sql: str) -> pa.Table:
        try:
            return self.context.sql(sql).arrow()
        except RuntimeError as exc:
            raise parse_engine_error(exc) from None


class EnginePool:
    """A fixed number of engine sessions; ``borrow()`` blocks until one is free."""

    def __init__(self, data_dir: str, size: int) -> None:
        import databend  # heavy import (the engine); only the server process pays for it

        if size < 1:
            raise ValueError("pool size must be at least 1")
        self.size = size
        self._free: queue.LifoQueue[EngineSession] = queue.LifoQueue()
        first = databend.SessionContext(data_path=data_dir)
        self.version_text = str(first.sql("SELECT version()").arrow().column(0).to_pylist()[0])
        self._free.put(EngineSession(first))
        for _ in range(size - 1):
            self._free.put(EngineSession(databend.SessionContext(data_path=data_dir)))

    @contextmanager
    def borrow(self, timeout: float | None = None) -> Iterator[EngineSession]:
        try:
            session = self._free.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no free engine session") from None
        try:
            yield session
        finally:
            self._free.put(session)


# --- Arrow -> Databend type names ---------------------------------------------------------------


def databend_type_name(field: pa.Field) -> str:
    name = _type_name(field.type, field.metadata)
    if field.nullable and name != "NULL":
        return f"Nullable({name})"
    return name


def _type_name(t: pa.DataType, metadata: dict[bytes, bytes] | None = None) -> str:
    if metadata and metadata.get(b"Extension") == b"Variant":
        return "Variant"
    if pa.types.is_null(t):
        return "NULL"
    if pa.types.is_boolean(t):
        return "Boolean"
    if pa.types.is_integer(t):
        signed = "Int" if pa.types.is_signed_integer(t) else "UInt"
        return f"{signed}{t.bit_width}"
    if pa.types.is_floating(t):
        return "Float32" if t.bit_width == 32 else "Float64"
    if pa.types.is_decimal(t):
        return f"Decimal({t.precision}, {t.scale})"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "String"
    if pa.types.is_timestamp(t):
        return "Timestamp"
    if pa.types.is_date(t):
        return "Date"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "Binary"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"Array({_nullable_inner(t.value_field)})"
    if pa.types.is_map(t):
        return f"Map({_nullable_inner(t.key_field)}, {_nullable_inner(t.item_field)})"
    if pa.types.is_struct(t):
        return "Tuple(" + ", ".join(_nullable_inner(t.field(i)) for i in range(t.num_fields)) + ")"
    return "String"


def _nullable_inner(field: pa.Field) -> str:
    return databend_type_name(field)


# --- Arrow values -> wire strings ---------------------------------------------------------------


def table_to_wire_rows(table: pa.Table) -> list[list[str | None]]:
    columns = [
        _column_to_wire(table.column(i).to_pylist(), table.schema.field(i))
        for i in range(table.num_columns)
    ]
    if not columns:
        return []
    return [list(row) for row in zip(*columns, strict=True)]


def _column_to_wire(values: list[Any], field: pa.Field) -> list[str | None]:
    is_variant = bool(field.metadata and field.metadata.get(b"Extension") == b"Variant")
    if pa.types.is_integer(field.type) or pa.types.is_string(field.type):
        return [None if v is None else str(v) for v in values]
    return [
        None if v is None else format_wire_value(v, nested=False, variant=is_variant)
        for v in values
    ]


def format_wire_value(value: Any, *, nested: bool, variant: bool = False) -> str:
    """Render one value as Databend's HTTP handler does (strings; nested values in SQL form)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        if variant:
            # Variant values arrive in Databend's binary JSON encoding; a server sends JSON text
            try:
                return jsonb_to_json(value)
            except JsonbError:
                pass  # an encoding this decoder does not know: shown as hex, like binary values
        return value.hex().upper()
    if isinstance(value, str):
        if nested:
            return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return value
    if isinstance(value, list):
        if value and isinstance(value[0], tuple) and len(value[0]) == 2 and not variant:
            # pyarrow returns Map values as a list of (key, value) pairs
            inner = ",".join(
                f"{format_wire_value(k, nested=True)}:{format_wire_value(v, nested=True)}"
                for k, v in value
            )
            return "{" + inner + "}"
        return "[" + ",".join(format_wire_value(v, nested=True) for v in value) + "]"
    if isinstance(value, dict):
        return "(" + ",".join(format_wire_value(v, nested=True) for v in value.values()) + ")"
    return str(value)
