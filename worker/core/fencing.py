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

from worker.core.model import RunStatus
from worker.core.ports import Admission, Fences, RunRecord, RunStore
from worker.errors import FatalError

DEFAULT_LEASE_SECONDS = 600.0


def take_fence(run: RunRecord, runs: RunStore, fences: Fences | None) -> int:
    """The run's token, issued on first use (0 without fences)."""
    if fences is None:
        return 0
    if run.fence:
        return run.fence
    if run.parent:
        token = runs.get(run.parent).fence
    else:
        token, previous = fences.issue(run.secret, run.run_id)
        if previous and previous != run.run_id:
            supersede(runs, previous, by=run.run_id)
    runs.update(run.run_id, fence=token)
    run.fence = token
    return token


def supersede(runs: RunStore, run_id: str, *, by: str) -> None:
    """Mark an unfinished run (and its table run) superseded by a newer run of its secret."""
    try:
        run = runs.get(run_id)
    except FatalError:
        return  # gone (expired or flushed): nothing to mark
    if RunStatus(run.status).final:
        return
    reason = f"superseded by run {by}, a newer run of the same secret"
    runs.update(run_id, status=RunStatus.SUPERSEDED, error=reason, updated_at=time.time())
    child = run.data.get("table_run")
    if child:
        supersede(runs, str(child), by=by)


@contextmanager
def admitted(
    fences: Fences | None,
    run: RunRecord,
    item: str,
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> Iterator[Admission]:
    """``with admitted(...) as verdict:`` — change something only when the verdict is ADMITTED;
    the change counts as in flight until the block ends."""
    if fences is None:
        yield Admission.ADMITTED
        return
    verdict = fences.enter(
        run.run_id,
        item,
        secret_arn=run.secret if run.fence else None,
        token=run.fence,
        lease_seconds=lease_seconds,
    )
    try:
        yield verdict
    finally:
        if verdict is Admission.ADMITTED:
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
