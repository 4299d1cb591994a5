"""Pure tests of the quoting helpers every SQL statement goes through."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.domain.sql import (
    TableName,
    UnsafeNameError,
    connection_name,
    quote_identifier,
    quote_string,
    split_qualified_name,
)


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("orders", "`orders`"),
        ("order items", "`order items`"),
        ("we`ird", '"we`ird"'),
        ('b`o"th', '"b`o""th"'),
        ("Ops Data", "`Ops Data`"),
        ("données", "`données`"),
        ("x'; DROP TABLE y; --", "`x'; DROP TABLE y; --`"),
    ],
)
def test_quote_identifier(name: str, quoted: str) -> None:
    assert quote_identifier(name) == quoted


@pytest.mark.parametrize("bad", ["", "a\x00b", "line\nbreak", "x" * 256])
def test_unsafe_identifiers_are_refused(bad: str) -> None:
    with pytest.raises(UnsafeNameError):
        quote_identifier(bad)


@pytest.mark.parametrize("good", ["lake_main_1a2b3c", "C1", "_x"])
def test_plain_connection_names_pass(good: str) -> None:
    assert connection_name(good) == good


@pytest.mark.parametrize("bad", ["1abc", "with space", "x`y", "a-b", "ünï", "", "x'--"])
def test_connection_names_must_be_plain(bad: str) -> None:
    with pytest.raises(UnsafeNameError):
        connection_name(bad)


def test_quote_string_escapes_quotes_and_backslashes() -> None:
    assert quote_string("it's") == "'it''s'"
    assert quote_string("a\\'b") == "'a\\\\''b'"


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("sales.orders", ["sales", "orders"]),
        ("sales.`order items`", ["sales", "order items"]),
        ("`Ops Data`.*", ["Ops Data", "*"]),
        ('"my db"."t""x"', ["my db", 't"x']),
        ("`a.b`.`c``d`", ["a.b", "c`d"]),
        ("db.tab_*", ["db", "tab_*"]),
    ],
)
def test_split_qualified_name(text: str, parts: list[str]) -> None:
    assert split_qualified_name(text) == parts


@pytest.mark.parametrize("text", ["sales.", ".orders", "`unclosed.x", "a b.c", "`x`y.z", ""])
def test_split_qualified_name_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        split_qualified_name(text)


@given(
    st.text(min_size=1, max_size=40).filter(
        lambda s: all(ord(c) >= 0x20 and c != "\x7f" for c in s)
    )
)
def test_quoted_identifiers_round_trip_through_the_parser(name: str) -> None:
    quoted = quote_identifier(name)
    assert split_qualified_name(f"{quoted}.{quoted}") == [name, name]
    assert TableName(name, name).sql == f"{quoted}.{quoted}"
