"""Query results in Databend's HTTP query protocol: the JSON of one page (or of a failure), and the
rows of large results a client has not fetched yet (paged through ``next_uri``)."""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from worker.local.databend_local.engine import EngineError, QueryResult

_DML_COLUMNS = ("number of rows inserted", "number of rows deleted", "number of rows updated")


@dataclass
class _PendingResult:
    result: QueryResult
    expires_at: float
    pages_sent: int = 1
    offset: int = 0


@dataclass
class PendingResults:
    """Rows of large results that the client has not fetched yet, by query id."""

    ttl_seconds: float
    _items: dict[str, _PendingResult] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, query_id: str, result: QueryResult, offset: int) -> None:
        now = time.monotonic()
        with self._lock:
            for key in [k for k, v in self._items.items() if v.expires_at < now]:
                del self._items[key]
            self._items[query_id] = _PendingResult(result, now + self.ttl_seconds, 1, offset)

    def take_page(
        self, query_id: str, page: int, page_rows: int
    ) -> tuple[QueryResult, list[list[str | None]], bool] | None:
        """Rows of page ``page``; the last flag tells whether more pages follow."""
        with self._lock:
            pending = self._items.get(query_id)
            if pending is None or pending.expires_at < time.monotonic():
                return None
            if page == pending.pages_sent - 1:
                # the client asks again for the page it was just sent: step back one page
                pending.offset = max(0, pending.offset - page_rows)
                pending.pages_sent -= 1
            if page != pending.pages_sent:
                return None
            rows = pending.result.rows[pending.offset : pending.offset + page_rows]
            pending.offset += len(rows)
            pending.pages_sent += 1
            more = pending.offset < len(pending.result.rows)
            if not more:
                pending.expires_at = time.monotonic() + 30  # allow one retry of the last page
            return pending.result, rows, more

    def drop(self, query_id: str) -> None:
        with self._lock:
            self._items.pop(query_id, None)


def query_id_from(header: str | None) -> str:
    """The client's query id when it is a safe one, else a new one."""
    if header and re.fullmatch(r"[0-9A-Za-z_-]{1,64}", header):
        return header
    return uuid.uuid4().hex


def rows_written(result: QueryResult) -> int:
    if result.schema and all(col["name"] in _DML_COLUMNS for col in result.schema):
        total = sum(int(v) for row in result.rows for v in row if v is not None)
        result.schema, result.rows = [], []
        return total
    return 0


def _stats(rows: int, written: int, elapsed_ms: float) -> dict[str, Any]:
    def progress(n: int) -> dict[str, int]:
        return {"rows": n, "bytes": 0}

    return {
        "scan_progress": progress(rows),
        "write_progress": progress(written),
        "result_progress": progress(rows),
        "total_scan": progress(rows),
        "spill_progress": {"file_nums": 0, "bytes": 0},
        "running_time_ms": elapsed_ms,
    }


def page_response(
    query_id: str,
    result: QueryResult,
    rows: list[list[str | None]],
    more: bool,
    next_page: int,
    elapsed_ms: float,
    written: int,
) -> dict[str, Any]:
    base = f"/v1/query/{query_id}"
    return {
        "id": query_id,
        "session_id": None,
        "node_id": "databend-local",
        "session": {"database": result.database},
        "schema": result.schema,
        "data": rows,
        "state": "Running" if more else "Succeeded",
        "error": None,
        "warnings": [],
        "stats": _stats(len(result.rows), written, elapsed_ms),
        "affect": None,
        "stats_uri": f"{base}/page/{next_page - 1}",
        "final_uri": f"{base}/final",
        "next_uri": f"{base}/page/{next_page}" if more else None,
        "kill_uri": f"{base}/kill",
    }


def failed_response(query_id: str, session: dict[str, Any], exc: EngineError) -> dict[str, Any]:
    base = f"/v1/query/{query_id}"
    database = session.get("database") if isinstance(session.get("database"), str) else None
    return {
        "id": query_id,
        "session_id": None,
        "node_id": "databend-local",
        "session": {"database": database or "default"},
        "schema": [],
        "data": [],
        "state": "Failed",
        "error": {"code": exc.code, "message": f"{exc.name}: {exc.message}"},
        "warnings": [],
        "stats": _stats(0, 0, 0.0),
        "affect": None,
        "stats_uri": None,
        "final_uri": f"{base}/final",
        "next_uri": None,
        "kill_uri": f"{base}/kill",
    }
