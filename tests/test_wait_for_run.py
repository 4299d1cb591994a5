"""How the CLI waits for a run (worker/runtime/launch.py ``wait_for_run``): often while the run
is young, less often as it goes on, and the end seen promptly either way."""

from __future__ import annotations

from collections import Counter

from worker.domain.model import RunStatus
from worker.domain.runs import RunRecord
from worker.runtime.launch import wait_for_run


class _Run:
    """A run that ends ``lasts`` seconds into the fake clock; counts each read."""

    def __init__(self, lasts: float) -> None:
        self.now = 0.0
        self.lasts = lasts
        self.reads = 0

    def get(self, run_id: str) -> RunRecord:
        self.reads += 1
        ended = self.now >= self.lasts
        status = RunStatus.SUCCEEDED if ended else RunStatus.SWITCHING
        return RunRecord(run_id, "migration", "arn:secret", "v", status=status)

    def status_counts(self, _run_id: str) -> Counter[str]:
        return Counter({"validated": 1})

    def outcomes(self, _run_id: str) -> list[object]:
        return []

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def _wait(run: _Run, timeout: float = 7200) -> float:
    final = wait_for_run(
        run,
        "r",
        timeout=timeout,
        sleep=run.sleep,
        clock=lambda: run.now,
    )
    assert final.final or run.now >= timeout
    return run.now - run.lasts  # how late the end was seen


def test_a_short_run_is_polled_five_times_a_second() -> None:
    run = _Run(lasts=1.0)
    assert _wait(run) < 0.2 + 1e-9
    assert run.reads >= 5


def test_a_long_run_is_polled_at_most_once_a_second_and_its_end_seen_within_one() -> None:
    # Given a migration of an hour, when the CLI follows it
    run = _Run(lasts=3600.0)
    late = _wait(run)
    # Then its end is seen within a second, and Redis served about one poll a second, not five
    assert 0 <= late <= 1.0 + 1e-9
    assert run.reads < 3600 * 1.05 + 60  # 0.2 s polls throughout: 18,000


def test_a_timeout_is_kept_to_the_poll() -> None:
    run = _Run(lasts=10_000.0)
    _wait(run, timeout=30.0)
    assert 30.0 <= run.now <= 30.0 + 1e-9  # no sleep past the deadline
