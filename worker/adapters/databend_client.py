"""The project's one way to talk to Databend: ``databend-driver`` over a DSN. Production points the
DSN at a Databend server or Databend Cloud; the embedded default points it at ``rotator
databend-local``. Errors come out classified into ``worker.domain.errors`` by
``worker.adapters.databend_errors``. Build every statement with ``worker.domain.sql`` quoting
helpers; SQL text is never logged here (it may carry secret keys).

Bounded work: Celery's threads pool ignores task time limits, so a statement that never ends would
hold its thread until the broker redelivers the task. Every statement therefore has a wall-clock
bound, ``statement_timeout`` (``ROTATOR_STATEMENT_TIMEOUT``), shortened by the deadline of the
unit of work around it (``deadline()``: one table's switch and read-back gets
``ROTATOR_TABLE_TIME_LIMIT``). The driver's own timeouts are per HTTP request (its login waits up
to ``connect_timeout`` + 10 s, a result paged through ``next_uri`` can take any number of requests,
and it retries a timed-out request ``retry_count`` times), so they cannot give that bound alone: the
statement runs on a helper thread (one per calling thread, reused) and the caller stops waiting
when its time is up, with a ``DatabendUnavailable`` (retryable). The abandoned connection and
helper are never used again; the driver's per-request timeouts, set to the statement timeout
unless the DSN says otherwise, end the helper's statement. A statement given up on may still
complete on the server: every statement this project sends is idempotent, and the retry checks
before acting.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from worker.adapters.databend_errors import classify_driver_error
from worker.domain.errors import DatabendUnavailable

T = TypeVar("T")

DEFAULT_STATEMENT_TIMEOUT = 60.0
_deadline: contextvars.ContextVar[tuple[float, str] | None] = contextvars.ContextVar(
    "databend_deadline", default=None
)


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Every statement inside the block ends by ``seconds`` from now (a nested, later deadline
    does not extend an outer one). ``what`` names the limit in the error, e.g.
    ``"the table time limit (ROTATOR_TABLE_TIME_LIMIT=300s)"``."""
    ends = time.monotonic() + seconds
    outer = _deadline.get()
    token = _deadline.set(outer if outer is not None and outer[0] <= ends else (ends, what))
    try:
        yield
    finally:
        _deadline.reset(token)


def table_time_limit(seconds: float) -> contextlib.AbstractContextManager[None]:
    """The deadline of one table's switch and read-back (``ROTATOR_TABLE_TIME_LIMIT``)."""
    return deadline(seconds, f"the table time limit (ROTATOR_TABLE_TIME_LIMIT={seconds:g}s)")


def bounded_dsn(dsn: str, statement_timeout: float) -> str:
    """The DSN with the driver's per-request timeouts no longer than the statement timeout,
    unless the DSN sets them itself (its own values win)."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    present = {k for k, _ in query}
    seconds = str(max(1, math.ceil(statement_timeout)))
    for key, value in (
        ("connect_timeout", str(max(1, min(10, math.ceil(statement_timeout))))),
        ("page_request_timeout_secs", seconds),
    ):
        if key not in present:
            query.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(query)))


class DatabendClient:
    """A thread-safe client: one driver connection per thread, created on first use."""

    def __init__(self, dsn: str, *, statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT) -> None:
        # the driver logs its retries (env_logger) on stdout, which would corrupt `--json`
        # output and the worker's JSON logs: off unless RUST_LOG asks (its errors reach us)
        os.environ.setdefault("RUST_LOG", "off")
        from databend_driver import BlockingDatabendClient

        if not statement_timeout > 0:
            raise ValueError("statement_timeout must be positive")
        self.dsn = dsn
        self.statement_timeout = statement_timeout
        try:
            self._client = BlockingDatabendClient(bounded_dsn(dsn, statement_timeout))
        except Exception as exc:
            raise classify_driver_error(exc) from None
        self._local = threading.local()

    def execute(self, sql: str) -> int:
        """Run a statement; returns the rows it wrote (0 for DDL)."""
        return self._bounded(lambda conn: int(conn.exec(sql)))

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a query and return every row as a tuple (every page fetched within the bound)."""
        return self._bounded(lambda conn: [tuple(row.values()) for row in conn.query_iter(sql)])

    def query_one(self, sql: str) -> tuple[Any, ...] | None:
        rows = self.query(sql)
        return rows[0] if rows else None

    def _timeout(self) -> tuple[float, str | None]:
        """Seconds this statement may take, and the deadline's name when that is what limits it."""
        limit = _deadline.get()
        if limit is None:
            return self.statement_timeout, None
        remaining = limit[0] - time.monotonic()
        if remaining <= 0:
            raise DatabendUnavailable(f"{limit[1]} ran out before the statement was sent")
        if remaining < self.statement_timeout:
            return remaining, limit[1]
        return self.statement_timeout, None

    def _bounded(self, work: Callable[[Any], T]) -> T:
        timeout, limited_by = self._timeout()
        conn = getattr(self._local, "conn", None)

        def run() -> tuple[Any, Any, BaseException | None]:
            used = conn if conn is not None else self._client.get_conn()  # may raise: no conn
            try:
                return used, work(used), None
            except BaseException as exc:
                return used, None, exc

        helper = self._helper()
        try:
            used, result, error = helper.run(run, timeout)
        except TimeoutError:
            # the helper still holds the connection: never use either again
            self._local.conn = None
            self._local.helper = None
            if limited_by is not None:
                raise DatabendUnavailable(f"{limited_by} ran out during a statement") from None
            raise DatabendUnavailable(
                f"Databend did not answer within {timeout:g}s (ROTATOR_STATEMENT_TIMEOUT);"
                " the statement may still complete on the server"
            ) from None
        except Exception as no_connection:
            self._local.conn = None
            raise classify_driver_error(no_connection) from None
        if error is not None:
            broken = type(error).__name__ in ("OperationalError", "InterfaceError")
            self._local.conn = None if broken else used
            raise classify_driver_error(error) from None
        self._local.conn = used
        return result  # type: ignore[no-any-return]

    def _helper(self) -> _Helper:
        helper: _Helper | None = getattr(self._local, "helper", None)
        if helper is None:
            helper = self._local.helper = _Helper()
        return helper

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                conn.close()
            finally:
                self._local.conn = None


class _Helper:
    """The helper thread of one calling thread, reused statement after statement (starting a
    thread per statement cost more CPU than the rotator's own bookkeeping of a table). A daemon:
    one left behind by a statement that never answered does not hold its process up at exit.

    Jobs and replies pass through two ``SimpleQueue``s (C code: a put and a get with a timeout
    each, where a ``threading.Event`` per statement took a Python-level condition and its locks
    on both sides). A helper whose caller stopped waiting is never given another job, so a late
    reply can never be mistaken for the next statement's.

    The thread ends once nothing refers to its ``_Helper`` any more: when the calling thread
    ends (its thread-local state goes with it: a short-lived pool thread, such as those that
    read every database's options, left a thread and a driver session behind for good before)
    or when the caller gives up on it (after the statement it is stuck in, if it ever returns).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._replies: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        # the thread holds the queues, never this object, so this object can go away first
        weakref.finalize(self, self._jobs.put, None)
        threading.Thread(
            target=_serve, args=(self._jobs, self._replies), name="databend-statement", daemon=True
        ).start()

    def run(self, job: Callable[[], T], timeout: float) -> T:
        """``job()`` on the helper; TimeoutError when it has not returned within ``timeout``."""
        self._jobs.put(job)
        try:
            ok, value = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]


def _serve(
    jobs: queue.SimpleQueue[Callable[[], Any] | None], replies: queue.SimpleQueue[tuple[bool, Any]]
) -> None:
    """A helper thread: each job run and its reply handed back, until ``None`` (no caller)."""
    while (job := jobs.get()) is not None:
        try:
            reply: tuple[bool, Any] = (True, job())
        except BaseException as exc:  # handed to the caller, who is waiting for it
            reply = (False, exc)
        replies.put(reply)
        del job, reply  # an idle helper keeps no connection (nor anything else) alive
