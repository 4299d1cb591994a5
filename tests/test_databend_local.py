"""databend-local through the real databend-driver: DDL, typed rows, paging, errors, concurrency.

Given a ``rotator databend-local`` subprocess, every test talks to it only through databend-driver
(or raw HTTP for the bad-input cases), exactly as production code talks to a Databend server.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from databend_driver import BlockingDatabendClient

from tests.stack import user_allowed
from worker.adapters.databend_client import DatabendClient
from worker.domain.errors import DatabendQueryError, StoragePermissionDenied
from worker.domain.sql import TableName, connection_name, quote_identifier, quote_string
from worker.local.embedded import DatabendLocalProcess, LocalAws, start_databend_local


def _http(dsn: str) -> http.client.HTTPConnection:
    parts = urlsplit(dsn)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)


def test_typed_rows_round_trip(databend: DatabendClient, unique: str) -> None:
    db = f"types_{unique}"
    databend.execute(f"CREATE DATABASE {quote_identifier(db)}")
    table = TableName(db, "typed")
    databend.execute(
        f"CREATE TABLE {table.sql} (i INT, big BIGINT UNSIGNED, s STRING NULL, ts TIMESTAMP,"
        " d DECIMAL(12, 3), f DOUBLE, b BOOLEAN, day DATE)"
    )
    written = databend.execute(
        f"INSERT INTO {table.sql} VALUES"
        " (1, 18446744073709551615, 'it''s', '2024-01-02 03:04:05.123456', 12.345, 2.5, true,"
        " '2024-02-29'),"
        " (-2, 0, NULL, '1970-01-01 00:00:00', -0.001, -1e-3, false, '1999-12-31')"
    )
    assert written == 2
    rows = databend.query(f"SELECT * FROM {table.sql} ORDER BY i DESC")
    utc = dt.UTC
    assert rows == [
        (
            1,
            18446744073709551615,
            "it's",
            dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=utc),
            Decimal("12.345"),
            2.5,
            True,
            dt.date(2024, 2, 29),
        ),
        (
            -2,
            0,
            None,
            dt.datetime(1970, 1, 1, tzinfo=utc),
            Decimal("-0.001"),
            -0.001,
            False,
            dt.date(1999, 12, 31),
        ),
    ]


def test_variant_values_come_back_as_json_text(databend: DatabendClient) -> None:
    document = {"a": [1, -2.5, True, None, 'x"y'], "b": {"c": "ü"}, "big": 12345678901234567890}
    literal = quote_string(json.dumps(document, ensure_ascii=False) + " ")
    row = databend.query_one(
        f"SELECT parse_json({literal}), parse_json({literal})::String, parse_json('1e-7'),"
        " parse_json('[]'), parse_json('\"s\"')"
    )
    assert row is not None
    value, engine_text, small, empty, scalar = row
    assert value == engine_text, "the same text the engine's own cast gives"
    assert json.loads(value) == document
    assert (small, empty, scalar) == ("1e-7", "[]", '"s"')


def test_large_result_pages_through_next_uri(databend: DatabendClient) -> None:
    rows = databend.query("SELECT number FROM numbers(200000) ORDER BY number")
    assert len(rows) == 200_000
    assert sum(r[0] for r in rows) == 200_000 * 199_999 // 2
    assert [r[0] for r in rows] == list(range(200_000)), "pages arrive complete and in order"


def test_bad_sql_raises_with_databend_code(databend: DatabendClient) -> None:
    with pytest.raises(DatabendQueryError) as bad_syntax:
        databend.execute("SELEC 1")
    assert bad_syntax.value.code == 1005
    with pytest.raises(DatabendQueryError) as unknown_table:
        databend.query("SELECT * FROM default.no_such_table_here")
    assert unknown_table.value.code == 1025


def test_current_database_is_carried_across_queries(
    databend_local: DatabendLocalProcess, unique: str
) -> None:
    conn = BlockingDatabendClient(databend_local.dsn).get_conn()
    db = f"session_{unique}"
    conn.exec(f"CREATE DATABASE {quote_identifier(db)}")
    conn.exec(f"USE {quote_identifier(db)}")
    conn.exec("CREATE TABLE here (x INT)")
    assert conn.query_row("SELECT current_database()").values() == (db,)
    # another connection on its own session still sits in `default`
    other = BlockingDatabendClient(databend_local.dsn).get_conn()
    assert other.query_row("SELECT current_database()").values() == ("default",)
    assert other.query_row(
        f"SELECT count(*) FROM system.tables WHERE database = {quote_string(db)} AND name = 'here'"
    ).values() == (1,)


def test_hostile_names_are_inert_once_quoted(databend: DatabendClient, unique: str) -> None:
    db = f"we`ird db {unique}"
    table = TableName(db, 'x\'); DROP DATABASE default; -- ünï "t"')
    databend.execute(f"CREATE DATABASE {quote_identifier(db)}")
    databend.execute(f"CREATE TABLE {table.sql} (v STRING)")
    databend.execute(f"INSERT INTO {table.sql} VALUES ({quote_string(table.table)})")
    assert databend.query(f"SELECT v FROM {table.sql}") == [(table.table,)]
    names = databend.query(f"SELECT name FROM system.tables WHERE database = {quote_string(db)}")
    assert names == [(table.table,)]
    assert databend.query_one("SELECT count(*) FROM system.databases WHERE name = 'default'") == (
        1,
    )


def test_external_tables_on_s3_with_connections(
    databend: DatabendClient, aws: LocalAws, unique: str
) -> None:
    bucket = f"lake-{unique}"
    aws.client("s3").create_bucket(Bucket=bucket)
    conn_name = f"c_{unique}"
    databend.execute(
        f"CREATE CONNECTION {connection_name(conn_name)} STORAGE_TYPE='s3'"
        f" ACCESS_KEY_ID={quote_string(aws.access_key_id)}"
        f" SECRET_ACCESS_KEY={quote_string(aws.secret_access_key)}"
        f" ENDPOINT_URL={quote_string(aws.endpoint_url)} REGION='us-east-1'"
    )
    db = f"ext_{unique}"
    databend.execute(f"CREATE DATABASE {quote_identifier(db)}")
    table = TableName(db, "events")
    databend.execute(
        f"CREATE TABLE {table.sql} (id INT, name STRING) 's3://{bucket}/events/'"
        f" CONNECTION=(connection_name={quote_string(conn_name)})"
    )
    databend.execute(f"INSERT INTO {table.sql} VALUES (1, 'a'), (2, 'b')")
    assert databend.query(f"SELECT * FROM {table.sql} ORDER BY id") == [(1, "a"), (2, "b")]
    (param,) = databend.query_one(
        "SELECT storage_param FROM system.tables"
        f" WHERE database = {quote_string(db)} AND name = 'events'"
    ) or (None,)
    assert f"bucket={bucket}" in param and f"ak=******{aws.access_key_id[-3:]}" in param
    objects = aws.client("s3").list_objects_v2(Bucket=bucket, Prefix="events/")
    assert objects["KeyCount"] > 0, "the rows must really be in the moto bucket"


def test_storage_permission_denied_is_classified(
    databend: DatabendClient, aws: LocalAws, unique: str
) -> None:
    user = f"u-{unique}"
    key = user_allowed(aws, user, "s3:*")
    bucket = f"deny-{unique}"
    aws.client("s3").create_bucket(Bucket=bucket)
    conn_name = f"d_{unique}"
    databend.execute(
        f"CREATE CONNECTION {connection_name(conn_name)} STORAGE_TYPE='s3'"
        f" ACCESS_KEY_ID={quote_string(key['AccessKeyId'])}"
        f" SECRET_ACCESS_KEY={quote_string(key['SecretAccessKey'])}"
        f" ENDPOINT_URL={quote_string(aws.endpoint_url)} REGION='us-east-1'"
    )
    table = TableName("default", f"deny_{unique}")
    databend.execute(
        f"CREATE TABLE {table.sql} (x INT) 's3://{bucket}/x/'"
        f" CONNECTION=(connection_name={quote_string(conn_name)})"
    )
    databend.execute(f"INSERT INTO {table.sql} VALUES (1)")
    aws.client("iam").delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
    with pytest.raises(StoragePermissionDenied) as denied:
        databend.query(f"SELECT * FROM {table.sql}")
    assert denied.value.code == 3002
    assert key["SecretAccessKey"] not in str(denied.value)


def test_two_processes_eight_clients_fifty_queries_each(
    databend_local: DatabendLocalProcess,
) -> None:
    cmd = [sys.executable, "-m", "tests.load_clients", databend_local.dsn, "8", "50"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=240)[0]) for p in procs]
    assert [r["errors"] for r in results] == [[], []]
    assert [r["ok"] for r in results] == [400, 400]


def test_state_written_by_one_process_is_seen_by_another(
    databend_local: DatabendLocalProcess, databend: DatabendClient, unique: str
) -> None:
    table = TableName("default", f"shared_{unique}")
    script = (
        "import sys; from worker.adapters.databend_client import DatabendClient as C;"
        "c = C(sys.argv[1]);"
        f"c.execute({f'CREATE TABLE {table.sql} (v INT)'!r});"
        f"c.execute({f'INSERT INTO {table.sql} VALUES (7), (8)'!r})"
    )
    subprocess.run([sys.executable, "-c", script, databend_local.dsn], check=True, timeout=60)
    assert databend.query(f"SELECT v FROM {table.sql} ORDER BY v") == [(7,), (8,)]


# --- bad input never crashes the server -----------------------------------------------------------


def _post(
    dsn: str, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    conn = _http(dsn)
    conn.request(
        "POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    resp = conn.getresponse()
    payload = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, payload


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"sql": 42}', 400, "'sql'"),
        (b'{"sql": "SELECT 1", "session": "x"}', 400, "session"),
        (b"\xff\xfe\x00", 400, "not valid JSON"),
    ],
)
def test_malformed_query_bodies_get_clear_errors(
    databend_local: DatabendLocalProcess, body: bytes, status: int, fragment: str
) -> None:
    code, payload = _post(databend_local.dsn, "/v1/query", body)
    assert code == status
    assert fragment in str(payload["error"])


def test_unknown_paths_and_oversized_bodies(
    databend_local: DatabendLocalProcess, databend: DatabendClient
) -> None:
    code, payload = _post(databend_local.dsn, "/v1/nothing/here", b"{}")
    assert code == 404 and "no such endpoint" in str(payload["error"])
    code, payload = _post(databend_local.dsn, "/v1/query/abc/page/9", b"")
    assert code == 404
    huge = json.dumps({"sql": "SELECT '" + "x" * (2 << 20) + "'"}).encode()
    code, payload = _post(databend_local.dsn, "/v1/query", huge)
    assert code == 413 and "over the limit" in str(payload["error"])
    assert databend.query_one("SELECT 1") == (1,), "the server still answers"


@pytest.fixture(scope="module")
def guarded_server() -> DatabendLocalProcess:
    server = start_databend_local(user="rotator", password="s3cr3t pass/word")
    yield server
    server.stop()


def test_credentials_are_checked_when_configured(guarded_server: DatabendLocalProcess) -> None:
    assert DatabendClient(guarded_server.dsn).query_one("SELECT 1") == (1,)
    wrong = guarded_server.dsn.replace("s3cr3t%20pass%2Fword", "nope")
    assert wrong != guarded_server.dsn
    with pytest.raises(DatabendQueryError) as denied:
        DatabendClient(wrong).query_one("SELECT 1")
    assert "wrong user name or password" in str(denied.value)
    code, payload = _post(guarded_server.dsn, "/v1/query", b'{"sql": "SELECT 1"}')
    assert code == 401 and "AuthenticateFailure" in str(payload["error"])
    assert DatabendClient(guarded_server.dsn).query_one("SELECT 2") == (2,)


# --- guards: JSON bodies only, this server's Host only, a warning when exposed ------------------


def _raw(
    dsn: str, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, object]]:
    """A request with exactly these headers (Host included: http.client adds none)."""
    conn = _http(dsn)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in {**headers, "Content-Length": str(len(body))}.items():
        conn.putheader(name, value)
    conn.endheaders(body)
    resp = conn.getresponse()
    payload = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, payload


def _port(dsn: str) -> int:
    return urlsplit(dsn).port or 0


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_post_bodies_must_be_declared_json(
    databend_local: DatabendLocalProcess, content_type: str | None
) -> None:
    headers = {"Host": f"127.0.0.1:{_port(databend_local.dsn)}"}
    if content_type:
        headers["Content-Type"] = content_type
    code, payload = _raw(databend_local.dsn, "POST", "/v1/query", b'{"sql": "SELECT 1"}', headers)
    assert code == 415
    assert "Content-Type: application/json" in str(payload["error"])
    headers["Content-Type"] = "Application/JSON; charset=utf-8"
    code, payload = _raw(databend_local.dsn, "POST", "/v1/query", b'{"sql": "SELECT 1"}', headers)
    assert code == 200 and payload["data"] == [["1"]]


def test_requests_naming_another_host_are_refused(databend_local: DatabendLocalProcess) -> None:
    port = _port(databend_local.dsn)
    body = b'{"sql": "SELECT 1"}'
    json_body = {"Content-Type": "application/json"}
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "localhost.evil", ""):
        code, payload = _raw(
            databend_local.dsn, "POST", "/v1/query", body, {**json_body, "Host": host}
        )
        assert code == 403, host
        assert "Host header" in str(payload["error"])
        code, _ = _raw(databend_local.dsn, "GET", "/health", b"", {"Host": host})
        assert code == 403, host
    for host in ("localhost", f"LOCALHOST:{port}", "127.0.0.1", f"127.0.0.1:{port}", "[::1]"):
        code, payload = _raw(
            databend_local.dsn, "POST", "/v1/query", body, {**json_body, "Host": host}
        )
        assert code == 200 and payload["data"] == [["1"]], host


def test_an_unusable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for data_dir in (a_file, a_file / "below"):
        result = subprocess.run(
            [sys.executable, "-m", "worker.cli", "databend-local", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        assert f"error: cannot use --data-dir {data_dir}" in result.stderr
        assert "Traceback" not in result.stderr and "DSN" not in result.stdout


def test_listening_beyond_loopback_without_a_user_warns_loudly(
    databend_local: DatabendLocalProcess,
) -> None:
    from worker.local.databend_local import exposure_warning

    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the warning comes, then the server
    # fails to listen, so nothing is ever exposed by this test.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "databend-local",
            "--host",
            "192.0.2.1",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, "an address it cannot listen on is bad input"
    assert "WARNING: databend-local listens on 192.0.2.1 with no --user" in result.stderr
    assert "cannot listen on 192.0.2.1:0" in result.stderr, "a clear error, not a traceback"
    assert "Traceback" not in result.stderr
    assert exposure_warning("0.0.0.0", None)
    assert exposure_warning("0.0.0.0", "u") is None
    for loopback in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert exposure_warning(loopback, None) is None
    assert databend_local.log_path is not None
    assert "WARNING" not in Path(databend_local.log_path).read_text()


def test_host_guard_rules() -> None:
    from worker.local.databend_local.guards import HostGuard

    loopback = HostGuard("127.0.0.1", ("rotator.internal",))
    assert all(loopback.accepts(h) for h in ("127.0.0.1:80", "[::1]", "Rotator.Internal:8000"))
    assert not any(loopback.accepts(h) for h in ("10.0.0.5", "evil.example", "[::1", "a:b", ""))
    everywhere = HostGuard("0.0.0.0")
    assert all(everywhere.accepts(h) for h in ("10.0.0.5:8000", "[fe80::1]:8000", "localhost"))
    assert not everywhere.accepts("evil.example:8000"), "a name could be DNS rebinding"
    one_address = HostGuard("10.0.0.5")
    assert one_address.accepts("10.0.0.5:8000") and not one_address.accepts("localhost")
