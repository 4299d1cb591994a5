"""Quoting helpers: every SQL statement the project emits builds names and values through these.

Databend quotes identifiers with backticks (or double quotes) and strings with single quotes, and it
understands backslash escapes inside string literals. Hostile names (quotes, backticks, spaces,
unicode, SQL fragments) therefore become inert text once quoted here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

MAX_IDENTIFIER_LENGTH = 255

_PLAIN_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


class UnsafeNameError(ValueError):
    """A name cannot be used in SQL at all (empty, too long, control characters)."""


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` when it can be quoted safely, else raise UnsafeNameError."""
    if not isinstance(name, str) or name == "":
        raise UnsafeNameError(f"{what} must be a non-empty string")
    if len(name) > MAX_IDENTIFIER_LENGTH:
        raise UnsafeNameError(f"{what} is longer than {MAX_IDENTIFIER_LENGTH} characters")
    if _CONTROL_CHARACTER.search(name):
        raise UnsafeNameError(f"{what} contains control characters")
    return name


def quote_identifier(name: str) -> str:
    """Quote one identifier: ``order items`` -> ```order items```.

    Databend's parser cannot escape a backtick inside backticks, so a name that contains one is
    written in double quotes instead, where a double quote is escaped by doubling it. Backslashes
    are literal inside quoted identifiers.
    """
    check_name(name, "identifier")
    if "`" in name:
        return '"' + name.replace('"', '""') + '"'
    return "`" + name + "`"


def connection_name(name: str) -> str:
    """Validate a connection name and return it bare.

    Databend stores a connection's name verbatim: ``CREATE CONNECTION `c1``` names it with the
    backticks included, and names are case-sensitive. Connection names are therefore restricted to
    plain identifiers (letters, digits, underscore; not starting with a digit) and never quoted.
    """
    check_name(name, "connection name")
    if not _PLAIN_IDENTIFIER.match(name):
        raise UnsafeNameError(
            f"connection name {name!r} must be letters, digits and underscores, "
            "not starting with a digit"
        )
    return name


def quote_string(value: str) -> str:
    """Quote a string literal; backslashes and single quotes are escaped."""
    if not isinstance(value, str):
        raise TypeError("quote_string takes a str")
    if "\x00" in value:
        raise UnsafeNameError("string literal contains a NUL character")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class _ObjectOrder:
    """Objects of every kind sort together: tables first (by database, table), then stages, then
    databases, each by name. Run records and plans hold them side by side."""

    __slots__ = ()

    def sort_key(self) -> tuple[int, str, str]:
        raise NotImplementedError

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, _ObjectOrder):
            return NotImplemented
        return self.sort_key() < other.sort_key()

    def __le__(self, other: object) -> bool:
        if not isinstance(other, _ObjectOrder):
            return NotImplemented
        return self.sort_key() <= other.sort_key()

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, _ObjectOrder):
            return NotImplemented
        return self.sort_key() > other.sort_key()

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, _ObjectOrder):
            return NotImplemented
        return self.sort_key() >= other.sort_key()


@dataclass(frozen=True)
class TableName(_ObjectOrder):
    """A fully qualified table name, held unquoted."""

    database: str
    table: str
    kind: ClassVar[str] = "table"

    def __post_init__(self) -> None:
        check_name(self.database, "database name")
        check_name(self.table, "table name")

    def sort_key(self) -> tuple[int, str, str]:
        return (0, self.database, self.table)

    @property
    def sql(self) -> str:
        """The quoted ``db.table`` to splice into a statement."""
        return f"{quote_identifier(self.database)}.{quote_identifier(self.table)}"

    def __str__(self) -> str:
        return f"{display_identifier(self.database)}.{display_identifier(self.table)}"


@dataclass(frozen=True)
class StageName(_ObjectOrder):
    """A stage. Databend's grammar takes a stage's name as a plain identifier only (``CREATE STAGE
    `my stage``` and ``LIST @`my stage``` are syntax errors), so the name is never quoted; a name
    that is not plain cannot appear in a statement and is refused by ``sql``."""

    name: str
    kind: ClassVar[str] = "stage"

    def __post_init__(self) -> None:
        check_name(self.name, "stage name")

    def sort_key(self) -> tuple[int, str, str]:
        return (1, self.name, "")

    @property
    def sql(self) -> str:
        if not _PLAIN_IDENTIFIER.match(self.name):
            raise UnsafeNameError(f"stage name {self.name!r} is not a plain identifier")
        return self.name

    def __str__(self) -> str:
        return display_identifier(self.name)


@dataclass(frozen=True)
class DatabaseName(_ObjectOrder):
    """A database, as the holder of a default storage connection."""

    name: str
    kind: ClassVar[str] = "database"

    def __post_init__(self) -> None:
        check_name(self.name, "database name")

    def sort_key(self) -> tuple[int, str, str]:
        return (2, self.name, "")

    @property
    def sql(self) -> str:
        return quote_identifier(self.name)

    def __str__(self) -> str:
        return display_identifier(self.name)


ObjectName = TableName | StageName | DatabaseName
OBJECT_KINDS = ("table", "stage", "database")


def object_name(kind: str, name: str) -> ObjectName:
    """A stage or database by kind and bare name; a table from its ``db.table`` text."""
    if kind == "stage":
        return StageName(name)
    if kind == "database":
        return DatabaseName(name)
    if kind == "table":
        parts = split_qualified_name(name)
        if len(parts) != 2:
            raise ValueError(f"table {name!r} must be database.table")
        return TableName(parts[0], parts[1])
    raise ValueError(f"unknown object kind {kind!r} (known: {', '.join(OBJECT_KINDS)})")


def object_ref(name: ObjectName) -> list[str]:
    """An object as a task message carries it: ``["table", db, table]``, ``["stage", s]``,
    ``["database", d]`` (JSON, no quoting to undo)."""
    if isinstance(name, TableName):
        return ["table", name.database, name.table]
    return [name.kind, name.name]


def object_from_ref(ref: list[str] | tuple[str, ...]) -> ObjectName:
    """The object of an ``object_ref``; ValueError for anything else."""
    if len(ref) == 3 and ref[0] == "table":
        return TableName(ref[1], ref[2])
    if len(ref) == 2 and ref[0] in ("stage", "database"):
        return object_name(ref[0], ref[1])
    raise ValueError(f"not an object reference: {ref!r}")


def object_label(name: ObjectName) -> str:
    """``db.table`` for a table; ``stage s`` / ``database d`` for the others (for messages)."""
    return str(name) if isinstance(name, TableName) else f"{name.kind} {name}"


def display_identifier(name: str) -> str:
    """Human form: plain names stay bare, anything else is backtick-quoted."""
    return name if _PLAIN_IDENTIFIER.match(name) else quote_identifier(name)


def split_qualified_name(text: str) -> list[str]:
    """Split ``db.table`` written with Databend quoting into its unquoted parts."""
    return [part for part, _quoted in split_qualified_name_parts(text)]


def split_qualified_name_parts(text: str) -> list[tuple[str, bool]]:
    """Like split_qualified_name, with a flag per part telling whether it was quoted.

    Backticks and double quotes both quote; a doubled quote character inside quotes is one
    literal quote. Unquoted parts are taken verbatim (globs like ``*`` included). Raises
    ValueError with the position at fault for unbalanced quotes or empty parts.
    """
    parts: list[tuple[str, bool]] = []
    current: list[str] = []
    quoted_part = False
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in '`"':
            if current:
                raise ValueError(f"quote in the middle of a name at position {i + 1} of {text!r}")
            name, i = _read_quoted(text, i)
            current.extend(name)
            quoted_part = True
            if i < n and text[i] != ".":
                raise ValueError(
                    f"expected '.' after a quoted name at position {i + 1} of {text!r}"
                )
            continue
        if ch == ".":
            if not current and not quoted_part:
                raise ValueError(f"empty name part at position {i + 1} of {text!r}")
            parts.append(("".join(current), quoted_part))
            current, quoted_part = [], False
            i += 1
            continue
        if ch.isspace():
            raise ValueError(
                f"unquoted space at position {i + 1} of {text!r}: quote the name with backticks"
            )
        current.append(ch)
        i += 1
    if not current and not quoted_part:
        raise ValueError(f"empty name part at the end of {text!r}")
    parts.append(("".join(current), quoted_part))
    return parts


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    """The name quoted by the quote character at ``text[i]`` (a doubled quote is one literal
    quote), and the position just after its closing quote."""
    quote = text[i]
    name: list[str] = []
    i += 1
    n = len(text)
    while True:
        if i >= n:
            raise ValueError(f"unclosed {quote} in {text!r}")
        if text[i] == quote:
            if i + 1 < n and text[i + 1] == quote:
                name.append(quote)
                i += 2
                continue
            return "".join(name), i + 1
        name.append(text[i])
        i += 1


def system_tables_rows_of(tables: Iterable[TableName]) -> str:
    """The condition on ``system.tables`` that selects exactly these tables:
    ``(database = 'a' AND name IN ('t1', 't2')) OR …``."""
    by_database: dict[str, list[str]] = {}
    for table in sorted(tables):
        by_database.setdefault(table.database, []).append(quote_string(table.table))
    return " OR ".join(
        f"(database = {quote_string(db)} AND name IN ({', '.join(names)}))"
        for db, names in by_database.items()
    )
