"""SQL text to the statements of statements.py: anything else is ``None`` (not understood means
not tracked, never guessed).

Names follow Databend: unquoted database and table names are lower-cased, quoted ones (backticks
or double quotes) are kept as written; connection and stage names are stored verbatim (for a
connection, quotes included), so they are kept as the raw token text. Parameter values can be
secrets: never log them.
"""

from __future__ import annotations

import re

from worker.local.databend_local.sqltokens import Token, tokenize
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
    SelectSystemTables,
    ShowConnections,
    ShowCreateTable,
    Statement,
    TableRef,
)

_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*([A-Za-z]+)", re.DOTALL)
_VERBS = frozenset({"CREATE", "DROP", "ALTER", "RENAME", "SHOW", "DESC", "DESCRIBE", "SELECT"})


def parse_statement(sql: str, database: str) -> Statement | None:
    """What ``sql``, run with ``database`` as the current database, does to tracked objects."""
    first = _FIRST_WORD.match(sql)
    verb = first.group(1).upper() if first else ""
    if verb not in _VERBS or (verb == "SELECT" and "system" not in sql.lower()):
        return None  # cheap way out for INSERTs and ordinary queries: nothing to tokenize
    tokens = tokenize(sql)
    if not tokens:
        return None
    try:
        return _Parser(tokens, database).statement()
    except _NoMatch:
        return None


class _NoMatch(Exception):
    pass


class _Parser:
    def __init__(self, tokens: list[Token], database: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.database = database

    # --- token helpers ---

    def peek(self, offset: int = 0) -> Token | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise _NoMatch
        self.pos += 1
        return token

    def kw(self, *words: str) -> bool:
        """Consume the keywords ``words`` in order if they come next."""
        for offset, word in enumerate(words):
            token = self.peek(offset)
            if token is None or token.kind != "word" or token.value.upper() != word:
                return False
        self.pos += len(words)
        return True

    def punct(self, char: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "punct" and token.value == char:
            self.pos += 1
            return True
        return False

    def raw_name(self) -> str:
        token = self.take()
        if token.kind not in ("word", "quoted"):
            raise _NoMatch
        return token.text

    def ident(self) -> str:
        token = self.take()
        if token.kind == "word":
            return token.value.lower()
        if token.kind == "quoted":
            return token.value
        raise _NoMatch

    def table_ref(self) -> TableRef:
        parts = [self.ident()]
        while self.punct("."):
            parts.append(self.ident())
        if len(parts) > 3:
            raise _NoMatch
        return (parts[-2] if len(parts) > 1 else self.database, parts[-1])

    def params(self) -> dict[str, str]:
        """``name = value`` pairs, commas optional, up to a closing parenthesis or the end."""
        found: dict[str, str] = {}
        while (token := self.peek()) is not None and token.text != ")":
            if self.punct(","):
                continue
            name = self.take()
            if name.kind not in ("word", "quoted") or not self.punct("="):
                raise _NoMatch
            value = self.take()
            if value.kind not in ("string", "word", "number"):
                raise _NoMatch
            found[name.value.lower()] = value.value
        return found

    def find_top_level(self, *words: str) -> int | None:
        """Index of the first top-level (outside parentheses) occurrence of ``words``."""
        depth = 0
        for i in range(self.pos, len(self.tokens)):
            token = self.tokens[i]
            if token.kind == "punct" and token.value in "()":
                depth += 1 if token.value == "(" else -1
            elif depth == 0 and all(
                i + k < len(self.tokens)
                and self.tokens[i + k].kind == "word"
                and self.tokens[i + k].value.upper() == w
                for k, w in enumerate(words)
            ):
                return i
        return None

    def attachment(self) -> Attachment | None:
        """The top-level ``CONNECTION = ( … )`` clause, if any."""
        start = self.find_top_level("CONNECTION")
        if start is None:
            return None
        self.pos = start + 1
        if not (self.punct("=") and self.punct("(")):
            raise _NoMatch
        params = self.params()
        connection = params.pop("connection_name", None)
        return Attachment(connection=connection, params=params)

    def options(self) -> dict[str, str]:
        start = self.find_top_level("OPTIONS")
        if start is None:
            return {}
        self.pos = start + 1
        if not self.punct("("):
            raise _NoMatch
        return self.params()

    # --- statements ---

    def statement(self) -> Statement | None:
        if self.kw("CREATE"):
            replace = self.kw("OR", "REPLACE")
            return self.create(replace)
        if self.kw("DROP"):
            return self.drop()
        if self.kw("ALTER"):
            return self.alter()
        if self.kw("RENAME", "TABLE"):
            table = self.table_ref()
            if not self.kw("TO"):
                raise _NoMatch
            return RenameTable(table, self.table_ref())
        if self.kw("SHOW", "CREATE", "TABLE"):
            return ShowCreateTable(self.table_ref())
        if self.kw("SHOW", "CONNECTIONS"):
            return ShowConnections()
        if self.kw("DESC", "CONNECTION") or self.kw("DESCRIBE", "CONNECTION"):
            return ShowConnections()
        if self.kw("SELECT"):
            return self.select()
        return None

    def if_exists(self) -> bool:
        return self.kw("IF", "EXISTS")

    def create(self, replace: bool) -> Statement | None:
        if self.kw("CONNECTION"):
            if_not_exists = self.kw("IF", "NOT", "EXISTS")
            name = self.raw_name()
            return CreateConnection(name, self.params(), replace, if_not_exists)
        if self.kw("DATABASE") or self.kw("SCHEMA"):
            if_not_exists = self.kw("IF", "NOT", "EXISTS")
            name = self.ident()
            default = self.options().get("default_storage_connection")
            return CreateDatabase(name, default, replace, if_not_exists)
        if self.kw("STAGE"):
            if_not_exists = self.kw("IF", "NOT", "EXISTS")
            name = self.raw_name()
            return CreateStage(name, self.attachment(), replace, if_not_exists)
        self.kw("TRANSIENT")
        if self.kw("TABLE"):
            if_not_exists = self.kw("IF", "NOT", "EXISTS")
            table = self.table_ref()
            has_location = self._has_location()
            return CreateTable(table, self.attachment(), has_location, replace, if_not_exists)
        return None

    def _has_location(self) -> bool:
        """A top-level string literal that is no option's value, before any AS: a location."""
        depth = 0
        previous: Token | None = None
        for token in self.tokens[self.pos :]:
            if token.kind == "punct" and token.value in "()":
                depth += 1 if token.value == "(" else -1
            elif depth == 0 and token.kind == "word" and token.value.upper() in ("AS", "LIKE"):
                return False
            elif depth == 0 and token.kind == "string" and previous and previous.text != "=":
                return True
            previous = token
        return False

    def drop(self) -> Statement | None:
        if self.kw("CONNECTION"):
            self.if_exists()
            return DropConnection(self.raw_name())
        if self.kw("TABLE"):
            self.if_exists()
            return DropTable(self.table_ref())
        if self.kw("DATABASE") or self.kw("SCHEMA"):
            self.if_exists()
            return DropDatabase(self.ident())
        if self.kw("STAGE"):
            self.if_exists()
            return DropStage(self.raw_name())
        return None

    def alter(self) -> Statement | None:
        if self.kw("TABLE"):
            self.if_exists()
            table = self.table_ref()
            if self.kw("RENAME", "TO"):
                return RenameTable(table, self.table_ref())
            following = self.peek()
            if following is not None and following.value.upper() == "CONNECTION":
                attachment = self.attachment()
                return AlterTableConnection(table, attachment) if attachment else None
            return None
        if self.kw("DATABASE") or self.kw("SCHEMA"):
            self.if_exists()
            name = self.ident()
            if self.kw("RENAME", "TO"):
                return RenameDatabase(name, self.ident())
            if self.kw("SET"):
                options = self.options()
                if "default_storage_connection" in options:
                    return AlterDatabaseConnection(name, options["default_storage_connection"])
            return None
        if self.kw("STAGE"):
            self.if_exists()
            name = self.raw_name()
            if not self.kw("SET"):
                return None
            sets_url = self.find_top_level("URL") is not None
            return AlterStage(name, self.attachment(), sets_url)
        return None

    def select(self) -> Statement | None:
        words = {t.value.upper() for t in self.tokens if t.kind == "word"}
        reads_tables = any(
            a.kind == "word"
            and a.value.lower() == "system"
            and b.value == "."
            and c.value.lower() in ("tables", "tables_with_history")
            for a, b, c in zip(self.tokens, self.tokens[1:], self.tokens[2:], strict=False)
        )
        if not reads_tables:
            return None
        if words & {"OR", "UNION", "JOIN", "EXCEPT", "INTERSECT", "NOT"}:
            return SelectSystemTables(pinned=None)
        database = self._equals_literal("database")
        name = self._equals_literal("name")
        pinned = (database, name) if database is not None and name is not None else None
        return SelectSystemTables(pinned=pinned)

    def _equals_literal(self, column: str) -> str | None:
        """The literal of the one ``column = '…'`` comparison after the top-level WHERE (None
        unless there is exactly one)."""
        where = self.find_top_level("WHERE")
        if where is None:
            return None
        rest = self.tokens[where + 1 :]
        found = [
            c.value
            for a, b, c in zip(rest, rest[1:], rest[2:], strict=False)
            if a.kind == "word"
            and a.value.lower() == column
            and b.kind == "punct"
            and b.value == "="
            and c.kind == "string"
        ]
        return found[0] if len(found) == 1 else None
