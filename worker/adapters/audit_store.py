"""Where audit rows wait and where they end up: the spool files on local disk and the append-only
table in Databend (see worker/adapters/audit_trail.py for how rows move from one to the other,
and why)."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from worker.domain.audit import AuditEvent, listed_once
from worker.domain.sql import quote_identifier, quote_string

TABLE = "audit_events"
COLUMNS = (
    "event_id",
    "at",
    "run_id",
    "binding",
    "secret",
    "action",
    "object",
    "before",
    "after",
    "actor",
)
BATCH = 200
ROTATE_BYTES = 1_000_000


def table_sql(database: str) -> str:
    return f"{quote_identifier(database)}.{quote_identifier(TABLE)}"


def create_statements(database: str) -> list[str]:
    columns = (
        ", ".join(
            f"{quote_identifier(c)} {'TIMESTAMP' if c == 'at' else 'STRING NULL'}" for c in COLUMNS
        )
        .replace("`event_id` STRING NULL", "`event_id` STRING")
        .replace("`action` STRING NULL", "`action` STRING")
    )
    return [
        f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}",
        f"CREATE TABLE IF NOT EXISTS {table_sql(database)} ({columns})",
    ]


def _ts_text(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _literal(value: Any) -> str:
    return "NULL" if value is None else quote_string(str(value))


def row_of(event: AuditEvent) -> dict[str, Any]:
    """The event's columns (every field is a plain value: no deep copy as ``asdict`` makes)."""
    row = {c: getattr(event, c) for c in COLUMNS}
    row["action"] = str(event.action)
    return row


class AuditTable:
    """The table in Databend: created on first use, rows inserted once (by event id)."""

    def __init__(self, client: Any, database: str) -> None:
        self.client = client
        self.database = database
        self._ready = False

    def ensure(self) -> None:
        if not self._ready:
            for statement in create_statements(self.database):
                self.client.execute(statement)
            self._ready = True

    def insert(self, rows: list[dict[str, Any]], *, check: bool = True) -> int:
        """Insert rows not yet stored; returns how many were new. ``check=False`` when the rows
        cannot be there yet (nothing past the shipped offset was ever sent): no lookup first."""
        if not rows:
            return 0
        self.ensure()
        stored: set[str] = set()
        if check:
            ids = ", ".join(quote_string(r["event_id"]) for r in rows)
            stored = {
                str(r[0])
                for r in self.client.query(
                    f"SELECT event_id FROM {table_sql(self.database)} WHERE event_id IN ({ids})"
                )
            }
        new = [r for r in rows if r["event_id"] not in stored]
        if not new:
            return 0
        values = ", ".join(
            "("
            + ", ".join(
                quote_string(_ts_text(float(r[c]))) if c == "at" else _literal(r[c])
                for c in COLUMNS
            )
            + ")"
            for r in new
        )
        columns = ", ".join(quote_identifier(c) for c in COLUMNS)
        self.client.execute(f"INSERT INTO {table_sql(self.database)} ({columns}) VALUES {values}")
        return len(new)

    def events(
        self, *, since: float | None = None, binding: str | None = None, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        exists = f"SELECT 1 FROM system.tables WHERE database = {quote_string(self.database)}"
        if not self._ready and not self.client.query(f"{exists} AND name = '{TABLE}'"):
            return []  # a read creates nothing: no rows before the first write
        where = []
        if since is not None:
            where.append(f"at >= {quote_string(_ts_text(since))}")
        if binding is not None:
            where.append(f"binding = {quote_string(binding)}")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        columns = ", ".join(quote_identifier(c) for c in COLUMNS)
        rows = self.client.query(  # the newest ``limit`` rows, shown oldest first
            f"SELECT {columns} FROM {table_sql(self.database)}{clause}"
            f" ORDER BY at DESC, event_id DESC LIMIT {int(limit)}"
        )
        events = [dict(zip(COLUMNS, row, strict=True)) for row in reversed(rows)]
        for event in events:
            event["at"] = _iso(event["at"])
        return listed_once(events)  # (a switch's row written again, once: domain/audit.py)


def _iso(value: Any) -> str:
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    else:
        moment = dt.datetime.fromisoformat(str(value)).replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the spool --------------------------------------------------------------------------------


def spool_dir(base: Path, dsn: str, database: str) -> Path:
    """One directory per target (Databend host, port, database; no credentials), so a process
    only ever adopts rows meant for the table it writes to."""
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    target = f"{parts.hostname}:{parts.port}/{database}"
    return base / hashlib.sha256(target.encode()).hexdigest()[:16]


class Spool:
    """This process's append-only file of rows not yet known to be in Databend.

    ``append`` returns once its row is on disk. The file stays open, and threads appending at
    once share one fsync (group commit): a row waits only for an fsync begun after it was
    written, so eight threads recording together cost about one fsync, not eight in a row. One
    thread at a time syncs (``_syncing``), outside every lock; when its fsync ends, every waiter
    wakes, those it covered return, and one of the others syncs next for all of them. (With the
    fsync held under a plain lock, a waiter already covered had to queue behind the next fsync
    too: eight threads needed about one fsync per two rows.)"""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.pid = os.getpid()
        name = f"{socket.gethostname()}-{self.pid}-{uuid.uuid4().hex[:8]}"
        self.path = directory / f"{name}.jsonl"
        self._lock_file = open(directory / f"{name}.lock", "w")  # noqa: SIM115 (held for life)
        fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._write = threading.Lock()  # the file, the counts below
        self._turn = threading.Condition(threading.Lock())  # guards _syncing and _synced
        self._syncing = False  # a thread is syncing (or closing / rotating the file)
        self._file: TextIO | None = None
        self._generation = 0  # which file (rotations and closes start a new one)
        self._appended = 0  # rows written to this file
        self._synced = 0  # rows of this file known on disk

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._write:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._file.write(line)
            self._file.flush()
            self._appended += 1
            generation, count = self._generation, self._appended
        with self._turn:
            while not self._on_disk(generation, count):
                if not self._syncing:
                    self._syncing = True
                    break
                self._turn.wait()
            else:
                return  # an fsync begun after the row was written covered it
        self._sync_written()

    def _sync_written(self) -> None:
        """(the syncing thread) fsync every row written so far, then wake the waiters."""
        synced = 0
        try:
            with self._write:
                upto, file = self._appended, self._file
            assert file is not None  # (closing the file waits for this fsync: it is this one)
            os.fsync(file.fileno())
            synced = upto
        finally:
            self._end_turn(synced)

    def _end_turn(self, synced: int = 0) -> None:
        with self._turn:
            self._synced = max(self._synced, synced)
            self._syncing = False
            self._turn.notify_all()

    def _on_disk(self, generation: int, count: int) -> bool:
        """(holding _turn) Row ``count`` of file ``generation``: an fsync begun after it was
        written has ended, or its file was closed (which syncs it)."""
        return generation != self._generation or self._synced >= count

    @contextlib.contextmanager
    def _alone(self) -> Iterator[None]:
        """No fsync in flight and none begins, and the file's lock: to close or rotate it."""
        with self._turn:
            while self._syncing:
                self._turn.wait()
            self._syncing = True
        try:
            with self._write:
                yield
        finally:
            self._end_turn()

    def close(self) -> None:
        """Put the file on disk and close it; a later ``append`` opens it again."""
        with self._alone():
            self._close_file()

    def _close_file(self) -> None:
        """(alone) The file on disk and closed."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        self._generation += 1
        self._appended = self._synced = 0

    def rotate_if_large(self) -> None:
        """Start a new file once this one is large and fully shipped (called by the flusher)."""
        with self._alone():
            size = self.path.stat().st_size if self.path.exists() else 0
            if size <= ROTATE_BYTES or _offset(self.path) < size:
                return
            self._close_file()
            old, old_lock = self.path, self._lock_file
            name = f"{socket.gethostname()}-{self.pid}-{uuid.uuid4().hex[:8]}"
            self.path = self.directory / f"{name}.jsonl"
            self._lock_file = open(self.directory / f"{name}.lock", "w")  # noqa: SIM115
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _remove(old)
            old_lock.close()

    def files(self) -> Iterator[tuple[Path, bool]]:
        """(spool file, is it this process's) — this process's first, then orphans."""
        yield self.path, True
        for path in sorted(self.directory.glob("*.jsonl")):
            if path != self.path:
                yield path, False


def _offset_path(path: Path) -> Path:
    return path.with_suffix(".offset")


def _offset(path: Path) -> int:
    try:
        return int(_offset_path(path).read_text() or 0)
    except (OSError, ValueError):
        return 0


def _set_offset(path: Path, offset: int) -> None:
    tmp = path.with_suffix(".offset.tmp")
    tmp.write_text(str(offset))
    os.replace(tmp, _offset_path(path))


def _remove(path: Path) -> None:
    for p in (path, _offset_path(path), path.with_suffix(".lock")):
        with contextlib.suppress(OSError):
            p.unlink()


def pending_rows(directory: Path) -> int:
    """Rows in the spool not yet shipped (for doctor)."""
    total = 0
    for path in directory.glob("*.jsonl"):
        with contextlib.suppress(OSError), open(path, "rb") as f:
            f.seek(_offset(path))
            total += sum(1 for _ in f)
    return total


def ship_file(path: Path, table: AuditTable, *, own: bool, sent_past_offset: bool = True) -> int:
    """Ship one spool file's unshipped rows; returns how many rows were shipped. An orphan (its
    process gone: its lock is free) is taken over while shipped and removed when done.

    Only the rows in the file when this call began are shipped (in INSERTs of up to BATCH rows):
    rows appended meanwhile wait for the next shipment. (Chasing them made a busy run send an
    INSERT of a few rows every few tens of milliseconds instead of one per flush interval.)"""
    lock = None
    if not own:
        lock = _take_over(path)
        if lock is None:
            return 0  # its process is alive and ships it itself
    try:
        shipped = 0
        try:
            end = path.stat().st_size
        except FileNotFoundError:
            return shipped
        while True:
            try:
                lines, position = _read_batch(path, _offset(path), end)
            except FileNotFoundError:
                return shipped
            if not lines:
                break
            rows = []
            for raw in lines:
                with contextlib.suppress(ValueError):
                    rows.append(json.loads(raw))
            table.insert(rows, check=sent_past_offset)
            sent_past_offset = False  # every row sent so far is now behind the offset
            _set_offset(path, position)
            shipped += len(rows)
        if not own:
            _remove(path)
        return shipped
    finally:
        if lock is not None:
            lock.close()


def _take_over(path: Path) -> TextIO | None:
    """An orphan's lock, held while it is shipped; None when its process is alive (holds it)."""
    lock = None
    try:
        lock = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 (the caller closes it)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        if lock is not None:
            lock.close()
        return None
    return lock


def _read_batch(path: Path, offset: int, end: int) -> tuple[list[bytes], int]:
    """Up to BATCH whole lines from ``offset``, none past ``end``, and the offset after them."""
    with open(path, "rb") as f:
        f.seek(offset)
        lines, position = [], offset
        for raw in f:
            if not raw.endswith(b"\n") or position + len(raw) > end:
                break  # a line still being written, or appended after the start
            lines.append(raw)
            position += len(raw)
            if len(lines) >= BATCH:
                break
    return lines, position


def _sweep_stale_locks(spool: Spool) -> None:
    """Lock files of processes that ended with nothing left to ship."""
    for lock in spool.directory.glob("*.lock"):
        if lock.with_suffix(".jsonl").exists() or lock == spool.path.with_suffix(".lock"):
            continue
        with contextlib.suppress(OSError):
            if time.time() - lock.stat().st_mtime < 60:
                continue  # just created: its process may not hold the lock yet
        try:
            with open(lock, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                lock.unlink()
        except OSError:
            continue  # its process is alive
