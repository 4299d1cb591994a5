"""Fencing: late work never changes anything once a newer run of its secret has taken over.

Each run of a secret takes a token when it first takes the secret's lock, strictly greater than
every earlier one (a key rotation's table run works under its parent's token). Right before every
change — a connection, an ALTER, an IAM key, a label move — the work asks ``admitted``: one atomic
check that its run is still active and its token still the secret's newest, which also registers
the change as in flight until it ends. Work that is refused changes nothing. A run that takes a
newer token marks the run that held the previous one ``superseded``, unless it had ended.

This holds whatever the lock's expiry and the broker's redelivery delay are (Kleppmann, "How to do
distributed locking"): the lock only keeps two live runs from working at once; the token keeps a
dead run's late messages from acting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from worker.domain.errors import FatalError, LabelsMoving, LockBusy
from worker.domain.model import RunStatus
from worker.domain.ports import Admission, Fences, RunRecord, RunStore

DEFAULT_LEASE_SECONDS = 600.0
PAUSE_WAIT_SECONDS = 120.0  # how long a pause or a rollback waits for changes in flight


def take_fence(run: RunRecord, runs: RunStore, fences: Fences | None) -> int:
    """The run's token, issued on first use (0 without fences)."""
    if fences is None:
        return 0
    if run.fence:
        return run.fence
    waits_for: list[str] = []
    if run.parent:
        token = runs.get(run.parent).fence
    else:
        token, previous = fences.issue(run.secret, run.run_id)
        if previous and previous != run.run_id:
            waits_for = supersede(runs, previous, by=run.run_id)
    runs.update(run.run_id, fence=token, waits_for=waits_for)
    run.fence, run.waits_for = token, waits_for
    return token


def require_drained(fences: Fences | None, run: RunRecord) -> None:
    """A run that superseded another changes nothing while that run's admitted changes are still
    in flight (their leases bound the wait): raises LockBusy, so the task tries again shortly."""
    if fences is None or not run.waits_for:
        return
    flying = [f"{r}:{item}" for r in run.waits_for for item in fences.in_flight(r)]
    if flying:
        raise LockBusy(
            f"waiting for {len(flying)} change(s) of the superseded run to end: {flying[0]}"
        )


def supersede(runs: RunStore, run_id: str, *, by: str) -> list[str]:
    """Mark an unfinished run (and its table run) superseded by a newer run of its secret;
    returns the run ids whose changes in flight the newer run must wait for."""
    try:
        run = runs.get(run_id)
    except FatalError:
        return []  # gone (expired or flushed): nothing to mark
    if not RunStatus(run.status).final:
        reason = f"superseded by run {by}, a newer run of the same secret"
        runs.update(run_id, status=RunStatus.SUPERSEDED, error=reason)
    child = run.data.get("table_run")
    return [run_id] + (supersede(runs, str(child), by=by) if child else [])


def admit(
    fences: Fences | None,
    run: RunRecord,
    item: str,
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    exclusive: bool = False,
    labels_epoch: int | None = None,
    dispatch: int = 0,
    apart: bool = False,
) -> Admission:
    """Check the run and its token right before a change; ADMITTED registers ``item`` as in
    flight, and the caller must ``fences.leave`` it when the change has ended. With the
    ``labels_epoch`` a check of the secrets' labels rested on: STALE once they have moved since
    (worker/flow/stale.py). With the ``dispatch`` (the sending of the run's objects the caller's
    batch came in): REDISPATCHED once they were sent out again."""
    if fences is None:
        return Admission.ADMITTED
    return fences.enter(
        run.run_id,
        item,
        secret_arn=run.secret if run.fence else None,
        token=run.fence,
        lease_seconds=lease_seconds,
        exclusive=exclusive,
        labels_epoch=labels_epoch,
        dispatch=dispatch,
        apart=apart,
    )


STALE_CHECKS = 3  # a change's check on fresh labels, at most, while they keep moving


def admit_on_fresh_labels(
    check: Callable[[bool], int | None], enter: Callable[[int | None], Admission], what: str
) -> Admission:
    """``enter(epoch)`` a change right after ``check(labels_moved)`` approved it on the
    secrets' labels read under ``epoch`` (worker/flow/stale.py). While they move on before the
    admission (STALE), check again on fresh ones (``labels_moved`` True), a few times; then
    LabelsMoving (retryable) names ``what`` was being checked."""
    for attempt in range(STALE_CHECKS):
        verdict = enter(check(attempt > 0))
        if verdict is not Admission.STALE:
            return verdict
    raise LabelsMoving(f"the secrets' labels moved {STALE_CHECKS} times while {what} was checked")


@contextmanager
def admitted(
    fences: Fences | None,
    run: RunRecord,
    item: str,
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    exclusive: bool = False,
) -> Iterator[Admission]:
    """``with admitted(...) as verdict:`` — change something only when the verdict is ADMITTED;
    the change counts as in flight until the block ends."""
    verdict = admit(fences, run, item, lease_seconds=lease_seconds, exclusive=exclusive)
    try:
        yield verdict
    finally:
        if verdict is Admission.ADMITTED and fences is not None:
            fences.leave(run.run_id, item)


def wait_until_idle(
    fences: Fences | None,
    run_ids: list[str],
    *,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Wait until no change of these runs is in flight; returns what still is at ``timeout``."""
    if fences is None:
        return []
    deadline = clock() + timeout
    while True:
        flying = [f"{r}:{item}" for r in run_ids for item in fences.in_flight(r)]
        if not flying or clock() >= deadline:
            return flying
        sleep(0.2)


def wait_idle(
    fences: Fences | None,
    run_id: str,
    busy_slots: Callable[[str], int],
    timeout: float,
    sleep: Callable[[float], None],
) -> list[str]:
    """Wait until nothing of the run is in flight and no concurrency slot is held (a task
    waiting for one may still be admitted); returns what still is at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        flying = wait_until_idle(fences, [run_id], timeout=0, sleep=sleep)
        slots = busy_slots(run_id)
        if not flying and not slots:
            return []
        if time.monotonic() >= deadline:
            return flying + [f"{slots} concurrency slot(s)"] * bool(slots)
        sleep(0.2)
