"""The durable audit trail's recorder: every change, appended to a table in Databend that
outlives Redis.

Where a row goes, in order:

1. ``Recorder.record`` fills in the run id (from the task's log context), the run's binding,
   secret and actor (from its record, cached per run), masks what could be sensitive, and appends
   the row to this process's **spool**: a JSON-lines file on local disk, written and fsync'ed
   before ``record`` returns (about a tenth of a millisecond; threads recording at once share
   one fsync; no network).
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

Every change goes through an adapter method, so the adapters record it
(worker/adapters/audited.py, through ``worker.observe.audit.audit``); the spool and the table are
in worker/adapters/audit_store.py; worker/runtime/services.py makes this process's recorder.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from worker.adapters.audit_store import (
    AuditTable,
    Spool,
    _offset,
    _remove,
    _sweep_stale_locks,
    pending_rows,
    row_of,
    ship_file,
    spool_dir,
)
from worker.adapters.databend_client import DatabendClient
from worker.domain.audit import AuditEvent
from worker.domain.errors import RotatorError
from worker.domain.events import secret_name_in_arn
from worker.domain.ports import RunStore
from worker.observe import actor
from worker.observe.redaction import redact

log = structlog.get_logger("rotator.audit")

MAX_BACKOFF = 60.0  # seconds between shipping attempts while Databend is unreachable


class Recorder:
    """The process's ``Audit``: spool, flusher thread, and what it knows of runs."""

    def __init__(
        self, *, base: Path, dsn: str, database: str, interval: float, runs: RunStore
    ) -> None:
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
        self._shipping = threading.Lock()  # one shipper at a time (the flusher, a drain, a test)
        self._shipped_cleanly: set[Path] = set()  # own spool files whose last shipment succeeded
        self._run_cache: dict[str, tuple[str | None, str | None, str | None]] = {}

    # the port ---------------------------------------------------------------------------------

    def record(self, event: AuditEvent) -> None:
        try:
            row = self._complete(event)
        except Exception as exc:  # never let the trail fail a change that already happened
            log.error("audit event incomplete", error=str(exc), action=str(event.action))
            row = row_of(event)
        row = {k: (redact(v) if isinstance(v, str) else v) for k, v in row.items()}
        try:
            self.spool().append(row)
        except OSError as exc:
            self._write_through(row, exc)
            return
        # without a lock once all is running: eight threads recording at once queued on them
        flusher = self._flusher
        if flusher is None or not flusher.is_alive():
            self.start()
        if not self._wake.is_set():
            self._wake.set()

    def _complete(self, event: AuditEvent) -> dict[str, Any]:
        """The event's row, with what it left out filled in: the run id, the run's binding,
        secret and actor (the row is built once: no copy of the event)."""
        row = row_of(event)
        context = structlog.contextvars.get_contextvars()
        run_id = event.run_id or context.get("run_id")
        if run_id:
            run_binding, run_secret, run_actor = self._run_facts(str(run_id))
            row["run_id"] = run_id
            row["binding"] = event.binding or run_binding
            row["secret"] = _secret_name(event.secret) or run_secret
            row["actor"] = event.actor or run_actor
        else:  # a change outside any run (connections prune): the binding the caller is on
            row["binding"] = event.binding or context.get("audit_binding")
            row["secret"] = _secret_name(event.secret or context.get("audit_secret"))
        acting = actor.current()
        if actor.is_operator(acting) and not event.actor:
            row["actor"] = acting  # an operator's command acts for them, whoever began the run
        row["actor"] = row["actor"] or acting
        return row

    def _run_facts(self, run_id: str) -> tuple[str | None, str | None, str | None]:
        cached = self._run_cache.get(run_id)
        if cached is None:
            try:
                run = self.runs.get(run_id)
                cached = (run.binding, _secret_name(run.secret), run.data.get("actor"))
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
        made = self._spool
        if made is not None and made.pid == os.getpid():
            return made
        with self._lock:
            if self._spool is None or self._spool.pid != os.getpid():  # new, or after a fork
                self._spool = Spool(spool_dir(self.base, self.dsn, self.database))
                self._flusher = None
            return self._spool

    def table(self) -> AuditTable:
        if self._table is None:
            self._table = AuditTable(DatabendClient(self.dsn, statement_timeout=30), self.database)
        return self._table

    def flush(self) -> int:
        """Ship every spooled row this process may ship now; raises when Databend fails. Two
        threads shipping at once would both read a row past the shipped offset and both find it
        not yet in the table: one ships at a time."""
        with self._shipping:
            spool = self.spool()
            shipped = 0
            for path, own in list(spool.files()):
                # rows past the offset may be in the table already only if a shipment of this
                # file failed (an INSERT may still have landed) or another process shipped it:
                # only then is each row looked up before it is inserted
                sure = own and path in self._shipped_cleanly
                self._shipped_cleanly.discard(path)
                shipped += ship_file(path, self.table(), own=own, sent_past_offset=not sure)
                if own:
                    self._shipped_cleanly.add(path)
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
        shipped_at = float("-inf")
        while True:
            self._wake.wait(delay)
            # let rows gather: one shipment per interval at most, so a busy run sends one INSERT
            # (and one check for rows already there) per interval, not one per few rows
            gather = max(min(0.2, self.interval), self.interval - (time.monotonic() - shipped_at))
            if self._stop.wait(gather):
                return  # the process is exiting: its main thread ships the rest
            self._wake.clear()
            try:
                self.flush()
                shipped_at = time.monotonic()
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

    def close(self, drain_timeout: float = 10.0) -> None:
        """At exit. The flusher must be out of the Databend driver before the interpreter goes
        down (a daemon thread killed inside the driver's native code aborts the process): stop
        it, then ship the rest from this thread within ``drain_timeout``; a spool shipped to its
        end is removed."""
        self._stop.set()
        self._wake.set()
        flusher = self._flusher
        if flusher is not None and flusher.is_alive():
            flusher.join(timeout=30)
        spool = self._spool
        if spool is not None and spool.pid == os.getpid():
            spool.close()
        if self.drain(drain_timeout) and spool is not None and spool.pid == os.getpid():
            size = spool.path.stat().st_size if spool.path.exists() else 0
            if _offset(spool.path) >= size:  # everything shipped: leave nothing behind
                _remove(spool.path)


def _secret_name(secret: str | None) -> str | None:
    """The secret's name, as people call it (a run holds its ARN); anything else as given."""
    return (secret_name_in_arn(secret) or secret) if secret else secret
