"""The durable audit trail: every change, appended to a table in Databend that outlives Redis.

Where a row goes, in order:

1. ``Recorder.record`` fills in the run id (from the task's log context), the run's binding,
   secret and actor (from its record, cached per run), masks what could be sensitive, and appends
   the row to this process's **spool**: a JSON-lines file on local disk, written and fsync'ed
   before ``record`` returns (about a millisecond; no network).
2. A **flusher** thread in the same process ships spooled rows to ``<ROTATOR_AUDIT_DATABASE>.
   audit_events`` (created on first use) every ``ROTATOR_AUDIT_FLUSH_INTERVAL`` seconds, skipping
   rows already there (by event id, so a row shipped twice after a crash is stored once), and
   backs off while Databend is unreachable. A CLI process ships what it spooled before it exits
   (up to 10 s); a spool whose process died is adopted by the next process on the host with the
   same target (its file lock is free).

Why a local spool and not an outbox in Redis: the trail exists to outlive Redis (its TTLs, a
FLUSHALL, a failover without persistence), so it must not wait in Redis either; and writing it
must not depend on anything remote, so an audit write can never block or fail a safety step. A
row is lost only if the host's disk is lost before the row is shipped — mount the spool on a
volume (``ROTATOR_AUDIT_SPOOL``; docker-compose.yml does). If the spool cannot be written at all,
the row is inserted directly, and if that fails too it is logged at ERROR with every field: never
dropped silently.

Every change goes through an adapter method, so the adapters below record it: connections
created (and dropped), tables switched or switched back, IAM keys created, deactivated,
reactivated and deleted, AWSPENDING stored or removed, AWSCURRENT moved, runs aborted.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
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
from typing import Any

import structlog

from worker import actor
from worker.aws_iam import BotoIamKeys
from worker.aws_secrets import SecretsManagerStore
from worker.core import masking
from worker.core.audit import AuditAction, AuditEvent
from worker.core.model import Credentials
from worker.databend_admin import DriverDatabendAdmin
from worker.errors import RotatorError
from worker.redaction import redact
from worker.run_store import RedisRunStore
from worker.sql import TableName, quote_identifier, quote_string

log = structlog.get_logger("rotator.audit")

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
MAX_BACKOFF = 60.0


def table_sql(database: str) -> str:
    return f"{quote_identifier(database)}.{quote_identifier(TABLE)}"


def create_statements(database: str) -> list[str]:
    columns = ", ".join(
        f"{quote_identifier(c)} {'TIMESTAMP' if c == 'at' else 'STRING NULL'}" for c in COLUMNS
    ).replace("`event_id` STRING NULL", "`event_id` STRING").replace(
        "`action` STRING NULL", "`action` STRING"
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
    data = dataclasses.asdict(event)
    data["action"] = str(event.action)
    return {c: data[c] for c in COLUMNS}


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

    def insert(self, rows: list[dict[str, Any]]) -> int:
        """Insert rows not yet stored; returns how many were new."""
        if not rows:
            return 0
        self.ensure()
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
        self.ensure()
        where = []
        if since is not None:
            where.append(f"at >= {quote_string(_ts_text(since))}")
        if binding is not None:
            where.append(f"binding = {quote_string(binding)}")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        columns = ", ".join(quote_identifier(c) for c in COLUMNS)
        rows = self.client.query(
            f"SELECT {columns} FROM {table_sql(self.database)}{clause}"
            f" ORDER BY at, event_id LIMIT {int(limit)}"
        )
        events = []
        for row in rows:
            event = dict(zip(COLUMNS, row, strict=True))
            event["at"] = _iso(event["at"])
            events.append(event)
        return events


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
    """This process's append-only file of rows not yet known to be in Databend."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.pid = os.getpid()
        name = f"{socket.gethostname()}-{self.pid}-{uuid.uuid4().hex[:8]}"
        self.path = directory / f"{name}.jsonl"
        self._lock_file = open(directory / f"{name}.lock", "w")  # noqa: SIM115 (held for life)
        fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._write = threading.Lock()

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._write, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def rotate_if_large(self) -> None:
        """Start a new file once this one is large and fully shipped (called by the flusher)."""
        with self._write:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size <= ROTATE_BYTES or _offset(self.path) < size:
                return
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


def ship_file(path: Path, table: AuditTable, *, own: bool) -> int:
    """Ship one spool file's unshipped rows; returns how many rows were shipped. An orphan (its
    process gone: its lock is free) is taken over while shipped and removed when done."""
    lock = None
    if not own:
        try:
            lock = open(path.with_suffix(".lock"), "a")  # noqa: SIM115
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if lock is not None:
                lock.close()
            return 0  # its process is alive and ships it itself
    try:
        shipped = 0
        while True:
            offset = _offset(path)
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    lines = []
                    for raw in f:
                        if not raw.endswith(b"\n"):
                            break  # a line still being written
                        lines.append(raw)
                        if len(lines) >= BATCH:
                            break
            except FileNotFoundError:
                return shipped
            if not lines:
                break
            rows = []
            for raw in lines:
                with contextlib.suppress(ValueError):
                    rows.append(json.loads(raw))
            table.insert(rows)
            _set_offset(path, offset + sum(len(x) for x in lines))
            shipped += len(rows)
        if not own:
            _remove(path)
        return shipped
    finally:
        if lock is not None:
            lock.close()


# --- the recorder -----------------------------------------------------------------------------


class Recorder:
    """The process's ``Audit``: spool, flusher thread, and what it knows of runs."""

    def __init__(self, *, base: Path, dsn: str, database: str, interval: float, runs: Any) -> None:
        self.base = base
        self.dsn = dsn
        self.database = database
        self.interval = interval
        self.runs = runs
        self._spool: Spool | None = None
        self._table: AuditTable | None = None
        self._flusher: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._run_cache: dict[str, tuple[str | None, str | None, str | None]] = {}

    # the port ---------------------------------------------------------------------------------

    def record(self, event: AuditEvent) -> None:
        try:
            row = row_of(self._complete(event))
        except Exception as exc:  # never let the trail fail a change that already happened
            log.error("audit event incomplete", error=str(exc), action=str(event.action))
            row = row_of(event)
        row = {k: (redact(v) if isinstance(v, str) else v) for k, v in row.items()}
        try:
            self.spool().append(row)
        except OSError as exc:
            self._write_through(row, exc)
            return
        self.start()
        self._wake.set()

    def _complete(self, event: AuditEvent) -> AuditEvent:
        run_id = event.run_id or structlog.contextvars.get_contextvars().get("run_id")
        binding, secret, who = event.binding, event.secret, event.actor
        if run_id:
            run_binding, run_secret, run_actor = self._run_facts(str(run_id))
            binding, secret = binding or run_binding, secret or run_secret
            who = who or run_actor
        return dataclasses.replace(
            event,
            run_id=run_id,
            binding=binding,
            secret=secret,
            actor=who or actor.current(),
        )

    def _run_facts(self, run_id: str) -> tuple[str | None, str | None, str | None]:
        cached = self._run_cache.get(run_id)
        if cached is None:
            try:
                run = self.runs.get(run_id)
                cached = (run.binding, run.secret, run.data.get("actor"))
            except RotatorError:
                cached = (None, None, None)
            if len(self._run_cache) > 10_000:
                self._run_cache.clear()
            self._run_cache[run_id] = cached
        return cached

    def _write_through(self, row: dict[str, Any], why: Exception) -> None:
        try:
            self.table().insert([row])
            log.warning("audit spool unwritable; row inserted directly", error=str(why))
        except Exception as exc:
            log.error(
                "AUDIT ROW NOT STORED: spool unwritable and Databend unreachable",
                spool_error=str(why),
                error=str(exc),
                audit_row=row,
            )

    # spool and flushing -----------------------------------------------------------------------

    def spool(self) -> Spool:
        with self._lock:
            if self._spool is None or self._spool.pid != os.getpid():  # new, or after a fork
                self._spool = Spool(spool_dir(self.base, self.dsn, self.database))
                self._flusher = None
            return self._spool

    def table(self) -> AuditTable:
        if self._table is None:
            from worker.databend_client import DatabendClient

            self._table = AuditTable(DatabendClient(self.dsn, statement_timeout=30), self.database)
        return self._table

    def flush(self) -> int:
        """Ship every spooled row this process may ship now; raises when Databend fails."""
        spool = self.spool()
        shipped = 0
        for path, own in list(spool.files()):
            shipped += ship_file(path, self.table(), own=own)
        spool.rotate_if_large()
        _sweep_stale_locks(spool)
        return shipped

    def start(self) -> None:
        """The flusher thread of this process (started once; again after a fork)."""
        self.spool()
        with self._lock:
            if self._flusher is not None and self._flusher.is_alive():
                return
            self._flusher = threading.Thread(target=self._loop, name="audit-flusher", daemon=True)
            self._flusher.start()

    def _loop(self) -> None:
        delay = self.interval
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            time.sleep(min(0.2, self.interval))  # let a burst of rows gather
            try:
                self.flush()
                delay = self.interval
            except Exception as exc:
                delay = min(MAX_BACKOFF, max(delay * 2, self.interval))
                log.warning(
                    "audit rows not shipped yet; kept in the spool",
                    error=str(exc),
                    retry_in=round(delay, 1),
                    spooled=pending_rows(self.spool().directory),
                )

    def drain(self, timeout: float = 10.0) -> bool:
        """Ship what is spooled now, within ``timeout`` (a CLI process at exit). False when rows
        remain: they stay in the spool for the next process on this host."""
        if self._spool is None:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.flush()
                return True
            except Exception as exc:
                log.warning("audit rows not shipped before exit", error=str(exc))
                time.sleep(1.0)
        return False


_recorder: Recorder | None = None
_recorder_lock = threading.Lock()


def recorder() -> Recorder | None:
    """This process's recorder (None when no Databend DSN or Redis is configured)."""
    global _recorder
    with _recorder_lock:
        if _recorder is None:
            from worker.settings import settings

            current = settings()
            if not current.databend_dsn or not current.redis_url:
                return None
            _recorder = Recorder(
                base=current.audit_spool,
                dsn=current.databend_dsn,
                database=current.audit_database,
                interval=current.audit_flush_interval,
                runs=RedisRunStore.from_url(current.redis_url),
            )
            atexit.register(_drain_at_exit)
        return _recorder


def _drain_at_exit() -> None:
    if _recorder is None:
        return
    _recorder._stop.set()
    spool = _recorder._spool
    if _recorder.drain() and spool is not None and spool.pid == os.getpid():
        size = spool.path.stat().st_size if spool.path.exists() else 0
        if _offset(spool.path) >= size:  # everything shipped: leave nothing behind
            _remove(spool.path)


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


def audit(action: AuditAction, obj: str, **fields: Any) -> None:
    """Record one change (a one-line hook for any change point)."""
    current = recorder()
    if current is None:
        return
    current.record(AuditEvent(action=action, object=obj, **fields))


# --- adapters that record their changes -----------------------------------------------------


class AuditedAdmin(DriverDatabendAdmin):
    """DriverDatabendAdmin whose changes land in the audit trail."""

    def __init__(self, client: Any, runs: Any) -> None:
        super().__init__(client)
        self.runs = runs
        self._shown: dict[str, str] = {}

    def create_connection(self, name: str, credentials: Credentials) -> None:
        super().create_connection(name, credentials)
        shown = masking.display(credentials.fingerprint)
        self._shown[name] = shown
        audit(AuditAction.CONNECTION_CREATED, name, after=shown)

    def drop_connection(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = super().drop_connection(name, *args, **kwargs)  # type: ignore[misc]
        audit(AuditAction.CONNECTION_DROPPED, name, before=self._shown.pop(name, None))
        return result

    def switch_table(self, table: TableName, connection: str) -> None:
        super().switch_table(table, connection)
        try:
            action, before = self._switch_facts(table, connection)
            after = f"{connection} ({self._connection_shown(connection)})"
        except Exception:  # the ALTER is done: its row goes in with what is known
            action, before, after = AuditAction.OBJECT_SWITCHED, None, connection
        audit(action, str(table), before=before, after=after)

    def _switch_facts(self, table: TableName, connection: str) -> tuple[AuditAction, str | None]:
        run_id = structlog.contextvars.get_contextvars().get("run_id")
        if not run_id:
            return AuditAction.OBJECT_SWITCHED, None
        run = self.runs.get(str(run_id))
        planned = self.runs.outcome(str(run_id), table)
        before = masking.display(planned.previous) if planned and planned.previous else None
        revert = (run.data.get("revert") or {}).get("connection")
        going_back = connection == revert or run.status in ("aborted", "rolled_back")
        return (AuditAction.OBJECT_REVERTED if going_back else AuditAction.OBJECT_SWITCHED), before

    def _connection_shown(self, connection: str) -> str:
        if connection not in self._shown:
            fingerprint = self.connection_fingerprint(connection)
            self._shown[connection] = masking.display(fingerprint) if fingerprint else "?"
        return self._shown[connection]


class AuditedIam(BotoIamKeys):
    def create_key(self, user: str) -> tuple[str, str]:
        key_id, secret_key = super().create_key(user)
        audit(AuditAction.KEY_CREATED, _key_object(user, key_id), after="Active")
        return key_id, secret_key

    def set_active(self, user: str, key_id: str, active: bool) -> None:
        super().set_active(user, key_id, active)
        action = AuditAction.KEY_REACTIVATED if active else AuditAction.KEY_DEACTIVATED
        before, after = ("Inactive", "Active") if active else ("Active", "Inactive")
        audit(action, _key_object(user, key_id), before=before, after=after)

    def delete_key(self, user: str, key_id: str) -> None:
        super().delete_key(user, key_id)
        audit(AuditAction.KEY_DELETED, _key_object(user, key_id), after="deleted")


def _key_object(user: str, key_id: str) -> str:
    return f"iam user {user} key {masking.show_key(key_id)}"


class AuditedSecrets(SecretsManagerStore):
    def put_pending(self, arn: str, version_id: str, value: str) -> None:
        super().put_pending(arn, version_id, value)
        audit(AuditAction.PENDING_STORED, arn, after=f"version {version_id} AWSPENDING")

    def make_current(self, arn: str, version_id: str) -> None:
        before = self.describe(arn).version_with_stage("AWSCURRENT")
        super().make_current(arn, version_id)
        if before != version_id:
            audit(
                AuditAction.AWSCURRENT_MOVED,
                arn,
                before=f"version {before}",
                after=f"version {version_id}",
                secret=arn,
            )

    def drop_pending(self, arn: str, version_id: str) -> None:
        info = self.describe(arn)
        had = "AWSPENDING" in getattr(info.versions.get(version_id), "stages", ())
        super().drop_pending(arn, version_id)
        if had:
            audit(AuditAction.PENDING_REMOVED, arn, before=f"version {version_id} AWSPENDING")


class AuditedRunStore(RedisRunStore):
    """Records a run's abort (the only run status change that is itself a change to report)."""

    def update(self, run_id: str, **fields: Any) -> None:
        aborting = str(fields.get("status", "")) == "aborted"
        before = self.get(run_id).status if aborting else None
        super().update(run_id, **fields)
        if aborting and before != "aborted":
            audit(AuditAction.RUN_ABORTED, run_id, before=before, after="aborted", run_id=run_id)
