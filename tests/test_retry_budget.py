"""The retry budget, layer by layer, and its worst case (worker/domain/retries.py).

A statement is tried STEP_ATTEMPTS times inside a step (tenacity); a task whose step gave up is run
TASK_RETRIES more times by Celery (declared once, on the base task), then its ``gave_up`` hook
records the failure. Both layers are counted here as they really run: the step against the fake
Databend, the task on a real Celery worker over the test Valkey. Their product is the worst case
the README states.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.fakes import FakeAdmin
from worker.domain.errors import DatabendUnavailable, FatalError, LockBusy, RetryableError
from worker.domain.model import AccessKeyCredentials
from worker.domain.retries import (
    LOCK_WAIT_RETRIES,
    LOCK_WAIT_SECONDS,
    STEP_ATTEMPTS,
    STEP_MAX_WAIT,
    TASK_BACKOFF,
    TASK_BACKOFF_MAX,
    TASK_RETRIES,
    worst_case_statement_attempts,
)
from worker.domain.sql import TableName
from worker.flow.rotation import RetryPolicy
from worker.flow.switch import rotate_object
from worker.runtime.celery_app import RotatorTask, app

README = Path(__file__).resolve().parents[1] / "README.md"


def test_a_step_sends_a_failing_statement_at_most_step_attempts_times() -> None:
    # Given a table whose ALTER always meets a transient error
    admin = FakeAdmin()
    table = TableName("db", "t")
    admin.add(table, "OLD")
    admin.connections["c_new"] = AccessKeyCredentials("AKIANEWKEY00000000NEW", "s")
    admin.switch_failures[table] = [DatabendUnavailable("connection reset")] * 100
    waits: list[float] = []

    # When one step switches it
    with pytest.raises(DatabendUnavailable):
        rotate_object(
            admin, table, connection="c_new", target="t", retry=RetryPolicy(sleep=waits.append)
        )

    # Then the ALTER was sent STEP_ATTEMPTS times, with bounded waits between, and the error
    # reaches the task layer
    assert admin.statements.count(f"ALTER {table}") == STEP_ATTEMPTS == 4
    assert len(waits) == STEP_ATTEMPTS - 1
    assert all(0 < w <= STEP_MAX_WAIT for w in waits)


def test_the_policy_runs_the_first_attempt_once_and_counts_it_in_the_budget() -> None:
    # Given statements failing transiently 0, 1, 3 and 4 times, and one failing fatally
    for failures, succeeds in ((0, True), (1, True), (3, True), (4, False)):
        calls: list[int] = []
        waits: list[float] = []

        def statement(failures: int = failures, calls: list[int] = calls) -> str:
            calls.append(1)
            if len(calls) <= failures:
                raise DatabendUnavailable("connection reset")
            return "done"

        # When the step's policy runs each
        policy = RetryPolicy(sleep=waits.append)
        if succeeds:
            assert policy.call(statement) == "done"
        else:
            with pytest.raises(DatabendUnavailable):
                policy.call(statement)

        # Then each attempt ran once (a failed first one is not re-sent), within the budget,
        # with a bounded wait before the second attempt and each later one
        assert len(calls) == min(failures + 1, STEP_ATTEMPTS)
        assert len(waits) == len(calls) - 1
        assert all(0 < w <= STEP_MAX_WAIT for w in waits)

    fatal: list[int] = []

    def refused() -> None:
        fatal.append(1)
        raise FatalError("access denied")

    with pytest.raises(FatalError):
        RetryPolicy(sleep=lambda _s: pytest.fail("a fatal error is not waited on")).call(refused)
    assert fatal == [1]


def test_the_base_task_declares_the_task_layer_once() -> None:
    assert RotatorTask.autoretry_for == (RetryableError,)
    assert RotatorTask.throws == (FatalError,)
    assert (RotatorTask.max_retries, RotatorTask.retry_backoff) == (TASK_RETRIES, TASK_BACKOFF)
    assert RotatorTask.retry_backoff_max == TASK_BACKOFF_MAX and RotatorTask.retry_jitter
    assert (LockBusy.retry_after, LockBusy.max_retries) == (LOCK_WAIT_SECONDS, LOCK_WAIT_RETRIES)
    import tasks.migration
    import tasks.rotation

    for task in (tasks.rotation.switch_batch, tasks.migration.migrate_batch):
        name = task.name
        assert task.max_retries == TASK_RETRIES and task.gave_up is not None, name


class ShortWait(RetryableError):
    """An error that knows its own delay and budget, as LockBusy does (shorter, for the test)."""

    retry_after = 0.05
    max_retries = 2


def _gave_up(key: str, reason: str) -> None:
    _redis().set(f"{key}:gave_up", reason)


@app.task(base=RotatorTask, name="rotator.test.always_down", retry_backoff_max=0, gave_up=_gave_up)
def _always_down(key: str) -> None:
    _redis().incr(key)
    raise DatabendUnavailable("databend down")


@app.task(base=RotatorTask, name="rotator.test.short_wait", retry_backoff_max=0, gave_up=_gave_up)
def _short_wait(key: str) -> None:
    _redis().incr(key)
    raise ShortWait("busy")


def _progressing_gave_up(
    key: str, _progress_until: int, _runs_until_done: int, reason: str
) -> None:
    _gave_up(key, reason)


@app.task(
    base=RotatorTask,
    name="rotator.test.progressing",
    retry_backoff_max=0,
    gave_up=_progressing_gave_up,
)
def _progressing(key: str, progress_until: int, runs_until_done: int) -> None:
    """A batch whose runs each record an object and then meet a transient error, up to run
    ``progress_until``; from then on it records nothing; it is done on run ``runs_until_done``."""
    run = int(_redis().incr(key))
    if run >= runs_until_done:
        _redis().set(f"{key}:done", "1")
        return
    error = DatabendUnavailable("connection reset")
    error.progress = 1 if run <= progress_until else 0
    raise error


@app.task(base=RotatorTask, name="rotator.test.fatal", gave_up=_gave_up)
def _fatal(key: str) -> None:
    _redis().incr(key)
    raise FatalError("bad secret")


_URL: list[str] = []


def _redis() -> redis.Redis:
    return redis.Redis.from_url(_URL[0])


@pytest.fixture(scope="module")
def celery_worker(redis_url: str) -> Iterator[None]:
    """A real Celery worker (threads pool) in this process, on this module's Redis database."""
    from celery.contrib.testing.worker import start_worker

    _URL[:] = [redis_url]
    saved = {"broker_url": app.conf.get("broker_url")}
    app.conf.update(broker_url=redis_url)
    try:
        with start_worker(
            app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="ERROR"
        ):
            yield
    finally:
        # leave the app as found: its broker, and no pool bound to this module's database
        app.conf.update(saved)
        with contextlib.suppress(Exception):
            app.pool.force_close_all()
        app._pool = None
        app.amqp._producer_pool = None


def _wait_for(key: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reason = _redis().get(f"{key}:gave_up")
        if reason is not None:
            time.sleep(0.3)  # a run after the hook would show in the count
            return reason.decode()
        time.sleep(0.05)
    raise AssertionError(f"{key}: the task never gave up ({_redis().get(key)} runs)")


def test_a_task_runs_at_most_task_retries_plus_one_times_then_records_why(
    celery_worker: None,
) -> None:
    _always_down.delay("down")
    reason = _wait_for("down")
    assert int(_redis().get("down") or 0) == TASK_RETRIES + 1 == 6
    assert reason == f"gave up after {TASK_RETRIES} retries: databend down"


def test_an_error_that_knows_its_delay_and_budget_carries_them(celery_worker: None) -> None:
    started = time.monotonic()
    _short_wait.delay("short")
    reason = _wait_for("short")
    assert int(_redis().get("short") or 0) == ShortWait.max_retries + 1
    assert time.monotonic() - started >= ShortWait.max_retries * ShortWait.retry_after
    assert reason == "gave up after 2 retries: busy"


def test_a_batch_that_records_objects_gets_its_whole_budget_again(celery_worker: None) -> None:
    # a batch of 10 objects that meets an error after each one still ends: it ran 11 times,
    # twice the budget of a task that makes no progress
    _progressing.delay("progressing", 10, 11)
    deadline = time.monotonic() + 30
    while _redis().get("progressing:done") is None:
        assert _redis().get("progressing:gave_up") is None, "gave up while making progress"
        assert time.monotonic() < deadline, "never finished"
        time.sleep(0.05)
    assert int(_redis().get("progressing") or 0) == 11 > TASK_RETRIES + 1


def test_the_budget_counts_from_the_last_run_that_recorded_an_object(
    celery_worker: None,
) -> None:
    # two runs record an object, then none does: TASK_RETRIES more runs, then it gives up
    _progressing.delay("stalled", 2, 1000)
    reason = _wait_for("stalled")
    assert int(_redis().get("stalled") or 0) == 2 + TASK_RETRIES
    assert reason == f"gave up after {TASK_RETRIES} retries: connection reset"


def test_a_fatal_error_is_never_retried_and_still_recorded(celery_worker: None) -> None:
    _fatal.delay("fatal")
    assert _wait_for("fatal") == "bad secret"
    assert int(_redis().get("fatal") or 0) == 1


def test_the_worst_case_is_pinned_and_the_readme_states_it() -> None:
    assert worst_case_statement_attempts() == STEP_ATTEMPTS * (TASK_RETRIES + 1) == 24
    text = README.read_text()
    assert re.search(r"at most 24 times", text), "README: the worst case per statement"
