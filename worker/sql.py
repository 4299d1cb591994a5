"""Quoting helpers: every SQL statement the project emits builds names and values through these.

Databend quotes identifiers with backticks (or double quotes) and strings with single quotes, and it
understands backslash escapes inside string literals. Hostile names (quotes, backticks, spaces,
unicode, SQL fragments) therefore become inert text once quoted here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_IDENTIFIER_LENGTH = 255

_PLAIN_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class UnsafeNameError(ValueError):
    """A name cannot be used in SQL at all (empty, too long, control characters)."""


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` when it can be quoted safely, else raise UnsafeNameError."""
    if not isinstance(name, str) or name == "":
        raise UnsafeNameError(f"{what} must be a non-empty string")
    if len(name) > MAX_IDENTIFIER_LENGTH:
        raise UnsafeNameError(f"{what} is longer than {MAX_IDENTIFIER_LENGTH} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
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


@dataclass(frozen=True, order=True)
class TableName:
    """A fully qualified table name, held unquoted."""

    database: str
    table: str

    def __post_init__(self) -> None:
        check_name(self.database, "database name")
        check_name(self.table, "table name")

    @property
    def sql(self) -> str:
        """The quoted ``db.table`` to splice into a statement."""
        return f"{quote_identifier(self.database)}.{quote_identifier(self.table)}"

    def __str__(self) -> str:
        return f"{display_identifier(self.database)}.{display_identifier(self.table)}"


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
            quote = ch
            i += 1
            while True:
                if i >= n:
                    raise ValueError(f"unclosed {quote} in {text!r}")
                if text[i] == quote:
                    if i + 1 < n and text[i + 1] == quote:
                        current.append(quote)
                        i += 2
                        continue
                    i += 1
                    break
                current.append(text[i])
                i += 1
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
