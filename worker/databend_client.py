"""The project's one way to talk to Databend: ``databend-driver`` over a DSN.

Production points the DSN at a Databend server or Databend Cloud; the embedded default points it at
``rotator databend-local``. Errors come out classified into ``worker.errors``. Build every statement
with ``worker.sql`` quoting helpers; SQL text is never logged here (it may carry secret keys).
"""

from __future__ import annotations

import threading
from typing import Any

from worker.errors import classify_driver_error


class DatabendClient:
    """A thread-safe client: one driver connection per thread, created on first use."""

    def __init__(self, dsn: str) -> None:
        from databend_driver import BlockingDatabendClient

        self.dsn = dsn
        self._client = BlockingDatabendClient(dsn)
        self._local = threading.local()

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._client.get_conn()
            except Exception as exc:
                raise classify_driver_error(exc) from None
            self._local.conn = conn
        return conn

    def execute(self, sql: str) -> int:
        """Run a statement; returns the rows it wrote (0 for DDL)."""
        try:
            return int(self._connection().exec(sql))
        except Exception as exc:
            self._forget_broken_connection(exc)
            raise classify_driver_error(exc) from None

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a query and return every row as a tuple."""
        try:
            return [tuple(row.values()) for row in self._connection().query_iter(sql)]
        except Exception as exc:
            self._forget_broken_connection(exc)
            raise classify_driver_error(exc) from None

    def query_one(self, sql: str) -> tuple[Any, ...] | None:
        rows = self.query(sql)
        return rows[0] if rows else None

    def _forget_broken_connection(self, exc: BaseException) -> None:
        if type(exc).__name__ in ("OperationalError", "InterfaceError"):
            self._local.conn = None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                conn.close()
            finally:
                self._local.conn = None
