"""Bounded work: no Databend statement and no AWS call can hold a thread for ever.

A hung server is played by a dead peer: a real TCP socket on 127.0.0.1 that accepts connections and
never answers (not a mock of any API: what a hung Databend or AWS endpoint looks like on the wire).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from worker.adapters.aws_clients import aws_client, boto_config
from worker.adapters.aws_iam import BotoIamKeys
from worker.adapters.aws_secrets import SecretsManagerStore
from worker.adapters.databend_admin import DriverDatabendAdmin
from worker.adapters.databend_client import DatabendClient, bounded_dsn, deadline, table_time_limit
from worker.domain.errors import AwsTransientError, DatabendUnavailable
from worker.domain.sql import TableName
from worker.flow.intake import IntakeResult
from worker.flow.rotation import RetryPolicy
from worker.flow.switch import rotate_object
from worker.local.embedded import DatabendLocalProcess
from worker.runtime.intake_runner import SqsIntake
from worker.runtime.settings import Settings

PASSWORD = "pw-that-never-shows"


@pytest.fixture
def dead_peer() -> Iterator[int]:
    """A port whose server accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield server.getsockname()[1]
    stop.set()
    acceptor.join()
    for conn in held:
        conn.close()
    server.close()


def dead_dsn(port: int) -> str:
    return f"databend://rotator:{PASSWORD}@127.0.0.1:{port}/default?sslmode=disable"


# --- Databend -----------------------------------------------------------------------------------


def test_a_hung_statement_ends_with_a_retryable_error_in_bounded_time(dead_peer: int) -> None:
    client = DatabendClient(dead_dsn(dead_peer), statement_timeout=1.0)
    for sql in ("SELECT 1", "ALTER TABLE a.b CONNECTION=(connection_name='c')"):
        started = time.monotonic()
        with pytest.raises(DatabendUnavailable) as raised:
            client.query(sql) if sql.startswith("SELECT") else client.execute(sql)
        elapsed = time.monotonic() - started
        assert 0.9 < elapsed < 3.0, elapsed  # the driver alone would wait 11 s to log in
        assert "ROTATOR_STATEMENT_TIMEOUT" in str(raised.value)
        assert PASSWORD not in str(raised.value)


def test_the_deadline_shortens_statements_and_refuses_new_ones_once_over(dead_peer: int) -> None:
    client = DatabendClient(dead_dsn(dead_peer), statement_timeout=60.0)
    started = time.monotonic()
    with table_time_limit(1.0):
        with pytest.raises(DatabendUnavailable, match="ROTATOR_TABLE_TIME_LIMIT=1s"):
            client.query("SELECT 1")
        assert time.monotonic() - started < 3.0
        with pytest.raises(DatabendUnavailable, match="ran out before the statement was sent"):
            client.query("SELECT 1")
    assert time.monotonic() - started < 3.0


def test_a_nested_deadline_never_extends_the_outer_one(dead_peer: int) -> None:
    client = DatabendClient(dead_dsn(dead_peer), statement_timeout=60.0)
    started = time.monotonic()
    with (
        deadline(1.0, "the outer limit"),
        deadline(30.0, "the inner limit"),
        pytest.raises(DatabendUnavailable, match="the outer limit"),
    ):
        client.query("SELECT 1")
    assert time.monotonic() - started < 3.0


def test_one_tables_switch_and_read_back_stay_within_the_table_time_limit(
    dead_peer: int,
) -> None:
    """The core's retries (4 attempts per statement) cannot stretch a table beyond its limit by
    more than their short waits: once the limit is over, each attempt fails at once."""
    admin = DriverDatabendAdmin(DatabendClient(dead_dsn(dead_peer), statement_timeout=60.0))
    started = time.monotonic()
    with table_time_limit(2.0), pytest.raises(DatabendUnavailable):
        rotate_object(
            admin, TableName("db", "t"), connection="c_new", target="ak:NEW", retry=RetryPolicy()
        )
    assert time.monotonic() - started < 2.0 + 3.0


def test_after_giving_up_the_client_goes_on_with_a_fresh_connection(
    databend_local: DatabendLocalProcess,
) -> None:
    client = DatabendClient(databend_local.dsn)
    assert client.query_one("SELECT 1") == (1,)
    with deadline(0.2, "a short test limit"), pytest.raises(DatabendUnavailable):
        client.query("SELECT sum(number) FROM numbers(3000000000)")  # ~1.5 s on the engine
    assert client.query_one("SELECT 2") == (2,)


def _statement_helpers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "databend-statement"}


def _new_helpers_after(before: set[threading.Thread], seconds: float) -> set[threading.Thread]:
    """The helper threads started since ``before`` still alive once ``seconds`` have passed
    (or as soon as there are none). Helpers of earlier tests may end meanwhile: not counted."""
    ends = time.monotonic() + seconds
    while (new := _statement_helpers() - before) and time.monotonic() < ends:
        time.sleep(0.05)
    return new


def test_a_calling_thread_that_ends_takes_its_statement_helper_with_it(
    databend_local: DatabendLocalProcess,
) -> None:
    """Short-lived threads (a pool reading every database's options does this on each plan)
    leave no helper thread, and so no driver connection, behind."""
    client = DatabendClient(databend_local.dsn)
    before = _statement_helpers()
    for _ in range(3):
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: client.query_one("SELECT 1"), range(8)))
        assert answers == [(1,)] * 8
    assert not _new_helpers_after(before, 5.0)


def test_a_helper_given_up_on_ends_once_its_statement_returns(
    databend_local: DatabendLocalProcess,
) -> None:
    client = DatabendClient(databend_local.dsn)
    before = _statement_helpers()
    assert client.query_one("SELECT 1") == (1,)
    (first,) = _statement_helpers() - before
    with deadline(0.2, "a short test limit"), pytest.raises(DatabendUnavailable):
        client.query("SELECT sum(number) FROM numbers(3000000000)")  # ~1.5 s on the engine
    assert client.query_one("SELECT 2") == (2,)  # on a new helper: the old one is still busy
    (second,) = _statement_helpers() - before - {first}
    first.join(30.0)
    assert not first.is_alive()
    assert second.is_alive()  # the client's helper now, its thread still running


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "databend://u:p@h:8000/default?sslmode=disable",
            "sslmode=disable&connect_timeout=10&page_request_timeout_secs=60",
        ),
        (
            "databend://u:p@h:8000/default?connect_timeout=3&page_request_timeout_secs=600",
            "connect_timeout=3&page_request_timeout_secs=600",
        ),
    ],
)
def test_the_drivers_own_timeouts_follow_the_statement_timeout_unless_set(
    dsn: str, expected: str
) -> None:
    assert bounded_dsn(dsn, 60.0).split("?", 1)[1] == expected


# --- AWS ----------------------------------------------------------------------------------------


def fast_failing() -> Settings:
    return Settings(aws_connect_timeout=1, aws_read_timeout=1, aws_max_attempts=2)


def dead_client(service: str, port: int, **kwargs: object) -> object:
    return aws_client(
        service,
        bounds=fast_failing(),
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="AKIADEADPEER0000TEST",
        aws_secret_access_key=PASSWORD,
        **kwargs,
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda port: SecretsManagerStore(dead_client("secretsmanager", port)).describe("s"),
        lambda port: BotoIamKeys(dead_client("iam", port)).list_keys("someone"),
    ],
    ids=["secretsmanager", "iam"],
)
def test_a_hung_aws_endpoint_ends_with_a_transient_error(dead_peer: int, call: object) -> None:
    started = time.monotonic()
    with pytest.raises(AwsTransientError) as raised:
        call(dead_peer)  # type: ignore[operator]
    assert time.monotonic() - started < 8.0  # 2 attempts x 1 s read + botocore's backoff
    assert PASSWORD not in str(raised.value)


def test_a_hung_sqs_endpoint_does_not_stall_the_intake(dead_peer: int) -> None:
    def never_called(_body: str | bytes) -> IntakeResult:
        raise AssertionError("no message can arrive from a dead endpoint")

    sqs = dead_client("sqs", dead_peer, long_poll_seconds=1)
    intake = SqsIntake(sqs, f"http://127.0.0.1:{dead_peer}/q", never_called, wait_seconds=1)
    started = time.monotonic()
    assert intake.poll_once() == []
    assert time.monotonic() - started < 12.0


def test_long_polls_get_their_wait_on_top_of_the_read_timeout() -> None:
    config = boto_config(Settings(), long_poll_seconds=20)
    assert config.read_timeout == 40 and config.connect_timeout == 5
    assert config.retries == {"mode": "standard", "max_attempts": 3}
