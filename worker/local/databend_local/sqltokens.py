"""Databend SQL as tokens: enough lexing to find names, literals and clauses safely.

Quoted names (backticks, or double quotes with "" for one quote) and string literals ('' or a
backslash escaping a quote) become single tokens, so hostile names and values never split a
statement. Comments and whitespace are dropped. Token values can be secrets: never log them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|--[^\n]*|/\*.*?\*/)
    | (?P<string>'(?:[^'\\]|\\.|'')*')
    | (?P<backtick>`[^`]*`)
    | (?P<dquote>"(?:[^"]|"")*")
    | (?P<word>[^\W\d]\w*)
    | (?P<number>\d[\w.]*)
    | (?P<punct>[^\s\w'"`])
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "f": "\f", "Z": "\x1a"}


@dataclass(frozen=True)
class Token:
    kind: str  # string | quoted | word | number | punct
    text: str  # as written
    value: str  # a string's or quoted name's content; a word or punct as written


def tokenize(sql: str) -> list[Token] | None:
    """The statement's tokens without whitespace and comments; None when it does not lex."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(sql):
        match = _TOKEN.match(sql, pos)
        if match is None:
            return None  # an unterminated quote or comment
        kind, text = match.lastgroup or "", match.group()
        pos = match.end()
        if kind == "space":
            continue
        if kind == "string":
            tokens.append(Token("string", text, _unescape(text[1:-1])))
        elif kind == "backtick":
            tokens.append(Token("quoted", text, text[1:-1]))
        elif kind == "dquote":
            tokens.append(Token("quoted", text, text[1:-1].replace('""', '"')))
        else:
            tokens.append(Token(kind, text, text))
    return tokens


def _unescape(body: str) -> str:
    """A string literal's content: '' is one quote, a backslash escapes the next character."""

    def one(match: re.Match[str]) -> str:
        escaped = match.group(1)
        return "'" if escaped is None else _ESCAPES.get(escaped, escaped)

    return re.sub(r"''|\\(.)", one, body, flags=re.S)


_CREDENTIAL_HINT = re.compile(r"key|secret|token|external_id|role_arn|endpoint|region", re.I)


def assigned_literals(sql: str) -> list[str]:
    """Every string literal assigned by ``name = '…'`` anywhere in a statement that mentions a
    credential parameter: how masking learns each value that could be shown masked, whatever the
    statement's form (the values may be secrets: never log them)."""
    if not _CREDENTIAL_HINT.search(sql):
        return []
    tokens = tokenize(sql) or []
    return [
        value.value
        for name, equals, value in zip(tokens, tokens[1:], tokens[2:], strict=False)
        if name.kind in ("word", "quoted") and equals.text == "=" and value.kind == "string"
    ]
