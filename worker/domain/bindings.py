"""Bindings: which tables a secret serves, loaded from a TOML file (``ROTATOR_BINDINGS``).

    [[bindings]]
    name = "lake-main"                 # used by the CLI (--binding)
    secret = "databend/lake-main"      # secret name or ARN
    connection_prefix = "lake_main"    # new connections are named <prefix>_<short version id>
    tables = ["sales.orders", "sales.`order items`", "`Ops Data`.*"]   # db.table, globs allowed
    stages = ["landing", "raw_*"]      # external stages (names, globs allowed)
    databases = ["lakehouse"]          # databases whose DEFAULT_STORAGE_CONNECTION is switched
    discover = true                    # default true
    buckets = ["lake"]                 # optional: buckets discovery may match (see plan.py)
    iam_user = "svc-lake"              # optional: the IAM user owning the key (issue 5)
    rotate_every = "90d"               # optional: `worker --beat` rotates the key when older
    window = "0 2 * * SUN"             # optional: only inside windows (5-field cron, UTC) ...
    window_duration = "3h"             # ... this long (default 1h)

A bad file fails at load with the line at fault.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.domain.errors import ConfigError, UnknownSecretError
from worker.domain.schedule import (
    DEFAULT_WINDOW_DURATION,
    SchedulePolicy,
    check_window,
    parse_interval,
)
from worker.domain.sql import (
    DatabaseName,
    ObjectName,
    StageName,
    TableName,
    UnsafeNameError,
    connection_name,
    split_qualified_name_parts,
)

_GLOB_CHARS = re.compile(r"[*?\[]")
_KNOWN_KEYS = {
    "name",
    "secret",
    "connection_prefix",
    "tables",
    "stages",
    "databases",
    "discover",
    "buckets",
    "iam_user",
}
_SCHEDULE_KEYS = {"rotate_every", "window", "window_duration"}
MAX_PREFIX_LENGTH = 200
_OWN_SUFFIX = re.compile(r"[0-9a-z]{8}")  # short_version_id of a Secrets Manager version id


@dataclass(frozen=True)
class Selector:
    """``db.table`` with optional globs in unquoted parts; quoted parts match literally."""

    text: str
    database: str
    table: str
    database_is_glob: bool
    table_is_glob: bool

    @classmethod
    def parse(cls, text: str) -> Selector:
        parts = split_qualified_name_parts(text)
        if len(parts) != 2:
            raise ValueError(f"table selector {text!r} must be database.table")
        (db, db_quoted), (table, table_quoted) = parts
        return cls(
            text=text,
            database=db,
            table=table,
            database_is_glob=not db_quoted and bool(_GLOB_CHARS.search(db)),
            table_is_glob=not table_quoted and bool(_GLOB_CHARS.search(table)),
        )

    @property
    def is_exact(self) -> bool:
        return not (self.database_is_glob or self.table_is_glob)

    def matches(self, name: TableName) -> bool:
        return _part_matches(name.database, self.database, self.database_is_glob) and _part_matches(
            name.table, self.table, self.table_is_glob
        )

    @property
    def exact_table(self) -> TableName:
        return TableName(self.database, self.table)


@dataclass(frozen=True)
class NameSelector:
    """A stage or database name with Databend quoting; globs allowed unquoted."""

    text: str
    kind: str  # "stage" | "database"
    name: str
    is_glob: bool

    @classmethod
    def parse(cls, text: str, kind: str) -> NameSelector:
        parts = split_qualified_name_parts(text)
        if len(parts) != 1:
            raise ValueError(f"{kind} selector {text!r} must be a single name")
        ((name, quoted),) = parts
        return cls(text, kind, name, not quoted and bool(_GLOB_CHARS.search(name)))

    @property
    def is_exact(self) -> bool:
        return not self.is_glob

    def matches(self, name: ObjectName) -> bool:
        if name.kind != self.kind or isinstance(name, TableName):
            return False
        return _part_matches(name.name, self.name, self.is_glob)

    @property
    def exact(self) -> ObjectName:
        return StageName(self.name) if self.kind == "stage" else DatabaseName(self.name)


def _part_matches(value: str, pattern: str, is_glob: bool) -> bool:
    return fnmatch.fnmatchcase(value, pattern) if is_glob else value == pattern


@dataclass(frozen=True)
class Binding:
    name: str
    secret: str
    connection_prefix: str
    selectors: tuple[Selector, ...] = ()
    discover: bool = True
    buckets: tuple[str, ...] = ()
    iam_user: str | None = None
    stage_selectors: tuple[NameSelector, ...] = ()
    database_selectors: tuple[NameSelector, ...] = ()
    schedule: SchedulePolicy = field(default_factory=SchedulePolicy)

    def selector_for(self, name: ObjectName) -> Selector | NameSelector | None:
        """The first selector of this binding naming the object, if any."""
        if isinstance(name, TableName):
            return next((s for s in self.selectors if s.matches(name)), None)
        chosen = self.stage_selectors if name.kind == "stage" else self.database_selectors
        return next((s for s in chosen if s.matches(name)), None)

    def exact_names(self) -> list[tuple[str, ObjectName]]:
        """(selector text, object) for every selector naming one object exactly."""
        named: list[tuple[str, ObjectName]] = [
            (s.text, s.exact_table) for s in self.selectors if s.is_exact
        ]
        for selector in (*self.stage_selectors, *self.database_selectors):
            if selector.is_exact:
                named.append((selector.text, selector.exact))
        return named

    def owns_connection(self, name: str) -> bool:
        """Is ``name`` one the rotator makes for this binding (``<prefix>_<8 of [0-9a-z]>``)?"""
        head, sep, tail = name.rpartition("_")
        own = _OWN_SUFFIX.fullmatch(tail) is not None
        return bool(sep) and head == self.connection_prefix and own

    @property
    def lists_stages(self) -> bool:
        return self.discover or bool(self.stage_selectors)

    @property
    def lists_databases(self) -> bool:
        return self.discover or bool(self.database_selectors)

    def databases_to_scan(self) -> frozenset[str] | None:
        """Databases whose tables this binding can affect; None when that may be any of them."""
        if self.discover or any(s.database_is_glob for s in self.selectors):
            return None
        return frozenset(s.database for s in self.selectors)

    def tables_to_scan(self) -> frozenset[TableName] | None:
        """The only tables this binding can affect when every table selector names one exactly
        and nothing is discovered; None when it may be others (see ``databases_to_scan``)."""
        if self.discover or not all(s.is_exact for s in self.selectors):
            return None
        return frozenset(s.exact_table for s in self.selectors)

    def covers_secret(self, arn: str, name: str) -> bool:
        return self.secret in (arn, name)


def load_bindings(path: str | Path) -> list[Binding]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"bindings file {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (TOML must be)") from None
    return parse_bindings(text, source=str(path))


def parse_bindings(text: str, *, source: str = "<bindings>") -> list[Binding]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    unknown_top = set(document) - {"bindings"}
    if unknown_top:
        key = sorted(unknown_top)[0]
        raise ConfigError(f"{source}, line {_line_of(text, key)}: unknown top-level key {key!r}")
    entries = document.get("bindings", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: 'bindings' must be an array of tables ([[bindings]])")
    headers = [
        i + 1 for i, line in enumerate(text.splitlines()) if line.strip().startswith("[[bindings]]")
    ]
    bindings: list[Binding] = []
    for index, entry in enumerate(entries):
        start = headers[index] if index < len(headers) else 1
        end = headers[index + 1] - 1 if index + 1 < len(headers) else len(text.splitlines())
        bindings.append(_parse_entry(entry, text, (start, end), source))
    named: set[str] = set()
    for index, binding in enumerate(bindings):
        if binding.name in named:  # named where it is used the second time
            start = headers[index] if index < len(headers) else 1
            line = _line_of(text, binding.name, start)
            raise ConfigError(f"{source}, line {line}: binding name {binding.name!r} is used twice")
        named.add(binding.name)
    seen: dict[str, Binding] = {}
    for index, binding in enumerate(bindings):
        first = seen.setdefault(binding.secret, binding)
        if first is not binding:
            start = headers[index] if index < len(headers) else 1
            line = _line_of(text, binding.secret, start)
            raise ConfigError(f"{source}, line {line}: {_two_bindings(first, binding)}")
    return bindings


def _two_bindings(first: Binding, second: Binding) -> str:
    same = (
        f"secret {first.secret!r}"
        if first.secret == second.secret
        else f"one secret (as {first.secret!r} and {second.secret!r})"
    )
    return (
        f"bindings {first.name!r} and {second.name!r} both serve {same}; one secret needs "
        "exactly one binding (merge their tables into one)"
    )


def _parse_entry(entry: Any, text: str, lines: tuple[int, int], source: str) -> Binding:
    """One [[bindings]] entry, checked key by key; an error names its line (within ``lines``)."""
    start, end = lines

    def fail(message: str, needle: str | None = None) -> ConfigError:
        return ConfigError(f"{source}, line {_line_of(text, needle, start, end)}: {message}")

    if not isinstance(entry, dict):
        raise fail("each [[bindings]] entry must be a table")
    prefix = _check_keys(entry, fail)
    selectors = _selectors(entry, "tables", Selector.parse, fail)
    stages = _selectors(entry, "stages", lambda t: NameSelector.parse(t, "stage"), fail)
    databases = _selectors(entry, "databases", lambda t: NameSelector.parse(t, "database"), fail)
    discover = entry.get("discover", True)
    if not isinstance(discover, bool):
        raise fail("'discover' must be true or false", "discover")
    buckets = entry.get("buckets", [])
    if not isinstance(buckets, list) or not all(isinstance(b, str) and b for b in buckets):
        raise fail("'buckets' must be a list of bucket names", "buckets")
    iam_user = entry.get("iam_user")
    if iam_user is not None and (not isinstance(iam_user, str) or not iam_user):
        raise fail("'iam_user' must be a non-empty string", "iam_user")
    if not selectors and not discover and not stages and not databases:
        raise fail("a binding needs 'tables', 'stages', 'databases' or discover = true", "discover")
    try:
        schedule = _parse_schedule(entry)
    except ValueError as exc:
        key = next((k for k in ("window_duration", "window", "rotate_every") if k in entry), None)
        raise fail(str(exc), key) from None
    return Binding(
        schedule=schedule,
        name=entry["name"],
        secret=entry["secret"],
        connection_prefix=prefix,
        selectors=selectors,
        discover=discover,
        buckets=tuple(buckets),
        iam_user=iam_user,
        stage_selectors=stages,
        database_selectors=databases,
    )


def _check_keys(entry: dict[str, Any], fail: Any) -> str:
    """No unknown key, the three required strings, a usable connection_prefix (returned)."""
    for key in entry:
        if key not in _KNOWN_KEYS | _SCHEDULE_KEYS:
            known = ", ".join(sorted(_KNOWN_KEYS | _SCHEDULE_KEYS))
            raise fail(f"unknown key {key!r} (known: {known})", key)
    for key in ("name", "secret", "connection_prefix"):
        if key not in entry:
            raise fail(f"{key!r} is required in every [[bindings]] entry")
        if not isinstance(entry[key], str) or not entry[key].strip():
            raise fail(f"{key!r} must be a non-empty string", key)
    prefix: str = entry["connection_prefix"]
    try:
        connection_name(prefix)
    except UnsafeNameError as exc:
        raise fail(f"connection_prefix: {exc}", "connection_prefix") from None
    if len(prefix) > MAX_PREFIX_LENGTH:
        raise fail("connection_prefix is too long", "connection_prefix")
    return prefix


def _selectors[S: (Selector, NameSelector)](
    entry: dict[str, Any], key: str, parse: Callable[[str], S], fail: Any
) -> tuple[S, ...]:
    """The entry's ``key`` (tables, stages, databases), each selector parsed with ``parse``."""
    texts = entry.get(key, [])
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise fail(f"{key!r} must be a list of strings", key)
    selectors = []
    for text in texts:
        try:
            selectors.append(parse(text))
        except ValueError as exc:
            raise fail(f"bad {key.removesuffix('s')} selector: {exc}", text) from None
    return tuple(selectors)


def _parse_schedule(entry: dict[str, Any]) -> SchedulePolicy:
    """rotate_every / window / window_duration (see worker/domain/schedule.py)."""
    every = entry.get("rotate_every")
    window = entry.get("window")
    duration = entry.get("window_duration")
    if (window is not None or duration is not None) and every is None:
        raise ValueError("'window' and 'window_duration' need 'rotate_every'")
    if duration is not None and window is None:
        raise ValueError("'window_duration' needs 'window'")
    return SchedulePolicy(
        rotate_every=None if every is None else parse_interval(every, "rotate_every"),
        window=None if window is None else check_window(window),
        window_duration=(
            DEFAULT_WINDOW_DURATION
            if duration is None
            else parse_interval(duration, "window_duration")
        ),
    )


def _line_of(text: str, needle: str | None, start: int = 1, end: int | None = None) -> int:
    """First line in ``start..end`` that mentions ``needle`` as a TOML string (a selector "a" is
    not found in ``name = "lake"``), else as it is (a key); else ``start``."""
    lines = text.splitlines()
    numbers = range(start, min(end or len(lines), len(lines)) + 1)
    for candidate in (f'"{needle}"', f"'{needle}'", needle) if needle is not None else ():
        found = next((n for n in numbers if candidate in lines[n - 1]), None)
        if found is not None:
            return found
    return start


def find_binding(
    bindings: list[Binding],
    *,
    name: str | None = None,
    secret_arn: str | None = None,
    secret_name: str | None = None,
) -> Binding | None:
    """The binding called ``name``, or the one serving the secret (resolved: its ARN and name).

    Two bindings serving one secret are a ConfigError naming both: loading catches two that spell
    it alike; one naming it by ARN and another by name only shows here, once the secret is known.
    """
    if name is not None:
        for binding in bindings:
            if binding.name == name:
                return binding
    if secret_arn is None:
        return None
    serving = [b for b in bindings if b.covers_secret(secret_arn, secret_name or "")]
    if len(serving) > 1:
        raise ConfigError(_two_bindings(serving[0], serving[1]))
    return serving[0] if serving else None


def binding_covering(bindings: list[Binding], arn: str, name: str) -> Binding:
    """The binding serving a secret (its ARN and name); UnknownSecretError when none does."""
    binding = find_binding(bindings, secret_arn=arn, secret_name=name)
    if binding is None:
        raise UnknownSecretError(f"no binding covers secret {name}")
    return binding
