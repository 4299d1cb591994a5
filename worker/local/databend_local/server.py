"""databend-local: Databend's HTTP query protocol in front of the embedded engine.

Speaks enough of the protocol used by ``databend-driver`` (see databendlabs/bendsql, core/src) that
the real driver works unchanged: login, ``POST /v1/query``, paging through ``next_uri``,
``final_uri``/``kill_uri``, errors with Databend's codes, and the session's current database carried
across queries (the JSON of each page: pages.py). Not for production data: the engine's catalog
lives only as long as this process.

SQL text is never logged: CREATE CONNECTION statements carry secret keys.

Guards for a server that runs any SQL it is sent: a request whose Host header names another host
gets 403 (a web page cannot reach it through DNS rebinding), a POST body that is not declared
``application/json`` gets 415 (a web page cannot send one without a CORS preflight, which this
server never grants); see guards.py.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlsplit

from worker.local.databend_local.engine import ENGINE_VERSION, EngineError, EnginePool
from worker.local.databend_local.guards import HostGuard
from worker.local.databend_local.masking import CURRENT_MASKING_VERSION, MaskFormat, MaskTracker
from worker.local.databend_local.pages import (
    PendingResults,
    failed_response,
    page_response,
    query_id_from,
    rows_written,
)

log = logging.getLogger("rotator.databend_local")

_PAGE_PATH = re.compile(r"/v1/query/(?P<id>[0-9A-Za-z_-]{1,64})/page/(?P<page>\d{1,9})\Z")
_END_PATH = re.compile(r"/v1/query/(?P<id>[0-9A-Za-z_-]{1,64})/(?P<verb>final|kill)\Z")
_DRAIN_LIMIT_BYTES = 64 << 20  # oversized bodies up to this size are read and dropped


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = ""  # empty: a scratch directory removed at exit
    user: str | None = None
    password: str | None = None
    pool_size: int = 8
    page_rows: int = 10_000
    max_body_bytes: int = 1 << 20
    result_ttl_seconds: float = 300.0
    borrow_timeout_seconds: float = 120.0
    mask_format: MaskFormat = MaskFormat.LEGACY
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides the bind address

    @property
    def reported_version(self) -> str:
        """The Databend version clients are told (the current mask format's in that mode)."""
        if self.mask_format is MaskFormat.CURRENT:
            return CURRENT_MASKING_VERSION
        return ENGINE_VERSION

    def dsn(self, port: int | None = None, *, show_password: bool = False) -> str:
        user = quote(self.user or "root", safe="")
        password = ""
        if self.password:
            password = quote(self.password, safe="") if show_password else "***"
        return (
            f"databend://{user}:{password}@{self.host}:{port or self.port}/default?sslmode=disable"
        )


class ProtocolError(Exception):
    """A request this server refuses, answered with an HTTP status and a Databend-style error."""

    def __init__(self, status: HTTPStatus, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class DatabendLocalServer(ThreadingHTTPServer):
    """One thread per client connection; engine work is bounded by the engine pool's size."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, config: ServerConfig, pool: EnginePool) -> None:
        self.config = config
        self.pool = pool
        self.pending = PendingResults(config.result_ttl_seconds)
        self.masking = (
            MaskTracker(pool.version_text) if config.mask_format is MaskFormat.CURRENT else None
        )
        self.host_guard = HostGuard(config.host, config.allowed_hosts)
        super().__init__((config.host, config.port), DatabendLocalHandler)

    @property
    def bound_port(self) -> int:
        return int(self.server_address[1])


class DatabendLocalHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes; no 40 ms stalls
    server_version = f"databend-local/{ENGINE_VERSION}"
    timeout = 300  # a client that stops sending mid-request frees its thread eventually
    server: DatabendLocalServer

    # --- routing --------------------------------------------------------------------------------

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        try:
            self._check_host()
            if method in ("POST", "PUT"):
                self._check_content_type()
            if method == "GET" and path in ("/", "/health", "/v1/health"):
                self._send_json(HTTPStatus.OK, self._health())
                return
            self._check_auth()
            if method == "POST" and path == "/v1/query":
                self._send_json(HTTPStatus.OK, self._start_query(self._read_json_body()))
            elif method == "GET" and (m := _PAGE_PATH.match(path)):
                self._send_json(HTTPStatus.OK, self._next_page(m["id"], int(m["page"])))
            elif method in ("GET", "POST") and (m := _END_PATH.match(path)):
                self._read_body()
                self.server.pending.drop(m["id"])
                self._send_json(HTTPStatus.OK, {"id": m["id"], "state": "Succeeded", "error": None})
            elif method == "POST" and path == "/v1/session/login":
                self._read_json_body(allow_empty=True)
                self._send_json(HTTPStatus.OK, self._login_response())
            elif method == "POST" and path in ("/v1/session/logout", "/v1/session/heartbeat"):
                self._read_body()
                self._send_json(HTTPStatus.OK, {"queries_to_remove": []})
            else:
                self._read_body()
                raise ProtocolError(HTTPStatus.NOT_FOUND, 404, f"no such endpoint: {method} {path}")
        except ProtocolError as exc:
            self._send_json(exc.status, {"error": {"code": exc.code, "message": exc.message}})
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # never let one request take the server down
            log.exception("databend-local request failed")
            self.close_connection = True
            self._send_json(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"error": {"code": 1001, "message": "internal error in databend-local"}},
            )

    # --- requests -------------------------------------------------------------------------------

    def _check_host(self) -> None:
        if not self.server.host_guard.accepts(self.headers.get("Host", "")):
            self._read_body()
            raise ProtocolError(
                HTTPStatus.FORBIDDEN,
                403,
                "Host header does not name this server; databend-local answers only requests for"
                f" {self.server.config.host} (add other names with --allow-host)",
            )

    def _check_content_type(self) -> None:
        has_body = self.headers.get("Content-Length", "0").strip() not in ("", "0") or (
            "Transfer-Encoding" in self.headers
        )
        media_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if has_body and media_type != "application/json":
            self._read_body()
            raise ProtocolError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                415,
                f"request bodies must be sent as Content-Type: application/json, not "
                f"{media_type[:80] or 'no Content-Type'}",
            )

    def _health(self) -> dict[str, Any]:
        config = self.server.config
        return {
            "status": "ok",
            "version": config.reported_version,
            "engine_version": ENGINE_VERSION,
            "mask_format": str(config.mask_format),
        }

    def _check_auth(self) -> None:
        config = self.server.config
        if config.user is None:
            return
        header = self.headers.get("Authorization", "")
        user = password = ""
        if header.startswith("Basic "):
            try:
                decoded = base64.b64decode(header[6:], validate=True).decode("utf-8")
                user, _, password = decoded.partition(":")
            except (ValueError, UnicodeDecodeError):
                user = password = ""
        user_ok = hmac.compare_digest(user.encode(), config.user.encode())
        password_ok = hmac.compare_digest(password.encode(), (config.password or "").encode())
        if not (user_ok and password_ok):
            self._read_body()
            raise ProtocolError(
                HTTPStatus.UNAUTHORIZED, 2201, "AuthenticateFailure: wrong user name or password"
            )

    def _read_body(self) -> bytes:
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise ProtocolError(
                HTTPStatus.LENGTH_REQUIRED, 400, "chunked bodies are not supported; send a length"
            )
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            self.close_connection = True
            raise ProtocolError(HTTPStatus.BAD_REQUEST, 400, "bad Content-Length") from None
        if length < 0:
            self.close_connection = True
            raise ProtocolError(HTTPStatus.BAD_REQUEST, 400, "bad Content-Length")
        if length > self.server.config.max_body_bytes:
            self.close_connection = True
            if length <= _DRAIN_LIMIT_BYTES:
                self._discard(length)  # so the client reads our answer instead of a broken pipe
            raise ProtocolError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                400,
                f"request body of {length} bytes is over the limit of "
                f"{self.server.config.max_body_bytes} bytes",
            )
        return self.rfile.read(length)

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                return
            length -= len(chunk)

    def _read_json_body(self, *, allow_empty: bool = False) -> dict[str, Any]:
        body = self._read_body()
        if not body and allow_empty:
            return {}
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError(
                HTTPStatus.BAD_REQUEST, 400, "request body is not valid JSON"
            ) from None
        if not isinstance(parsed, dict):
            raise ProtocolError(HTTPStatus.BAD_REQUEST, 400, "request body must be a JSON object")
        return parsed

    def _login_response(self) -> dict[str, Any]:
        return {
            "version": self.server.config.reported_version,
            "session_id": str(uuid.uuid4()),
            "tokens": None,
        }

    def _start_query(self, body: dict[str, Any]) -> dict[str, Any]:
        sql = body.get("sql")
        if not isinstance(sql, str) or not sql.strip():
            raise ProtocolError(
                HTTPStatus.BAD_REQUEST, 400, "field 'sql' must be a non-empty string"
            )
        session = body.get("session") or {}
        if not isinstance(session, dict):
            raise ProtocolError(HTTPStatus.BAD_REQUEST, 400, "field 'session' must be an object")
        database = session.get("database")
        if database is not None and not isinstance(database, str):
            raise ProtocolError(HTTPStatus.BAD_REQUEST, 400, "session.database must be a string")
        page_rows = self._page_rows(body.get("pagination"))
        query_id = query_id_from(self.headers.get("X-DATABEND-QUERY-ID"))
        started = time.perf_counter()
        masking = self.server.masking
        sequence = masking.sequence if masking else 0
        try:
            with self.server.pool.borrow(timeout=self.server.config.borrow_timeout_seconds) as es:
                statement_database = database or es.database
                result = es.run(sql, database or None)
        except EngineError as exc:
            return failed_response(query_id, session, exc)
        except TimeoutError:
            busy = EngineError(1001, "Busy", "databend-local has no free engine session")
            return failed_response(query_id, session, busy)
        if masking:
            masking.after_success(sql, statement_database, result, sequence)
        elapsed_ms = (time.perf_counter() - started) * 1000
        written = rows_written(result)
        first = result.rows[:page_rows]
        more = len(result.rows) > page_rows
        if more:
            self.server.pending.put(query_id, result, offset=len(first))
        return page_response(query_id, result, first, more, 1, elapsed_ms, written)

    def _next_page(self, query_id: str, page: int) -> dict[str, Any]:
        taken = self.server.pending.take_page(query_id, page, self.server.config.page_rows)
        if taken is None:
            raise ProtocolError(
                HTTPStatus.NOT_FOUND, 404, f"query {query_id} page {page} not found or expired"
            )
        result, rows, more = taken
        if not more:
            self.server.pending.drop(query_id)
        return page_response(query_id, result, rows, more, page + 1, 0.0, 0)

    def _page_rows(self, pagination: Any) -> int:
        configured = self.server.config.page_rows
        if isinstance(pagination, dict):
            asked = pagination.get("max_rows_per_page")
            if isinstance(asked, int) and asked > 0:
                return min(asked, configured)
        return configured

    # --- responses ------------------------------------------------------------------------------

    def _send_json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)
