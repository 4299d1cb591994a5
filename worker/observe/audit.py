"""The process's audit trail: ``audit(action, object, …)`` records one change (a one-line hook the
audited adapters call at every change point, worker/adapters/audited.py).

Which trail records it is wired once per process by worker/runtime/services.py (``use``): the
recorder of worker/adapters/audit_trail.py (a local spool shipped to a table in Databend; how a
row travels, and why, is told there) when Databend and Redis are configured, none otherwise. This
module imports no adapter: the trail is handed in, as the ports are to the core.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import structlog

from worker.domain import masking
from worker.domain.audit import Audit, AuditAction, AuditEvent, switch_event_id

log = structlog.get_logger("rotator.audit")


class Trail(Audit, Protocol):
    """The port of worker/domain/audit.py, plus what a process does with its own trail."""

    def start(self) -> None:
        """Start shipping in the background (a worker does at start-up)."""
        ...

    def close(self) -> None:
        """At exit: ship what is left, within a bound."""
        ...


_build: Callable[[], Trail | None] | None = None
_recorder: Trail | None = None
_recorder_lock = threading.Lock()
_unwired_warned = False


def use(build: Callable[[], Trail | None]) -> None:
    """Wire how this process makes its trail (None: no trail configured); made on first use."""
    global _build
    with _recorder_lock:
        _build = build


def recorder() -> Trail | None:
    """This process's trail (None when no Databend DSN or Redis is configured)."""
    global _recorder, _unwired_warned
    made = _recorder
    if made is not None:  # made once: every change after the first skips the lock
        return made
    with _recorder_lock:
        if _recorder is None:
            if _build is None:
                if not _unwired_warned:
                    _unwired_warned = True
                    log.error("audit trail not wired: import worker.runtime.services first")
                return None
            _recorder = _build()
            if _recorder is not None:
                atexit.register(_close_at_exit)
        return _recorder


def _close_at_exit() -> None:
    if _recorder is not None:
        _recorder.close()


_planned: contextvars.ContextVar[tuple[str, str | None, int | None] | None] = (
    contextvars.ContextVar("audit_planned", default=None)
)


@contextlib.contextmanager
def switching(obj: str, previous: str | None, attempt: int | None = None) -> Iterator[None]:
    """Inside the block the object ``obj`` is being switched (by its run's ``attempt``) and its
    run's plan says it showed ``previous`` (a fingerprint): the audited adapter takes a switch
    row's ``before`` (and event id) from here instead of reading the plan back once per object."""
    token = _planned.set((obj, previous, attempt))
    try:
        yield
    finally:
        _planned.reset(token)


def planned_previous(obj: str) -> tuple[bool, str | None]:
    """(known, fingerprint): what the plan says ``obj`` showed, when a ``switching`` block of
    that object is around the caller; (False, None) otherwise."""
    current = _planned.get()
    if current is None or current[0] != obj:
        return False, None
    return True, current[1]


def planned_attempt(obj: str) -> int | None:
    """Which attempt of its run is switching ``obj`` (inside its ``switching`` block)."""
    current = _planned.get()
    return current[2] if current is not None and current[0] == obj else None


def earlier_switch(
    run_id: str, obj: str, previous: str | None, connection: str, attempt: int
) -> None:
    """The row of a switch an earlier attempt made whose worker died before writing it down (a
    redelivered batch found the object switched): under that switch's own event id, so if the
    row was written after all, the trail still shows it once."""
    audit(
        AuditAction.OBJECT_SWITCHED,
        obj,
        before=masking.display(previous) if previous else None,
        after=connection,
        event_id=switch_event_id(run_id, obj, max(1, attempt - 1)),
    )


def audit(action: AuditAction, obj: str, **fields: Any) -> None:
    """Record one change (a one-line hook for any change point)."""
    current = recorder()
    if current is None:
        return
    current.record(AuditEvent(action=action, object=obj, **fields))
