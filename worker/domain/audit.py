"""The audit trail's port: every change the rotator makes is one ``AuditEvent`` handed to
``Audit.record``. What an event may hold: names, version ids, and credentials only as Databend
shows them (``******XYZ`` / ``AK***YZ``) — never a secret value.

``record`` must return quickly and must not raise: a change that already happened is never undone
or held up because its audit row could not be written yet (the adapter keeps the row and retries).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class AuditAction(StrEnum):
    CONNECTION_CREATED = "connection_created"
    CONNECTION_DROPPED = "connection_dropped"
    OBJECT_SWITCHED = "object_switched"
    OBJECT_REVERTED = "object_reverted"  # switched back to the credentials it had
    KEY_CREATED = "key_created"
    KEY_DEACTIVATED = "key_deactivated"
    KEY_REACTIVATED = "key_reactivated"
    KEY_DELETED = "key_deleted"
    PENDING_STORED = "pending_stored"  # a new secret version labelled AWSPENDING
    PENDING_REMOVED = "pending_removed"
    AWSCURRENT_MOVED = "awscurrent_moved"
    RUN_ABORTED = "run_aborted"


@dataclass(frozen=True)
class AuditEvent:
    action: AuditAction
    object: str
    before: str | None = None
    after: str | None = None
    run_id: str | None = None
    binding: str | None = None
    secret: str | None = None
    actor: str | None = None
    at: float = field(default_factory=time.time)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)


_SWITCH_IDS = uuid.UUID("5b0c2f6e-5d0a-4c55-9a1e-7d1f0c6e2a11")


def switch_event_id(run_id: str, obj: str, attempt: int) -> str:
    """The event id of the switch a run's ``attempt`` at ``obj`` made: the row written when it
    happened and one written later by a redelivered batch that found the switch unrecorded (its
    worker died right after the ALTER) share it, and the trail shows that switch once."""
    return uuid.uuid5(_SWITCH_IDS, f"{run_id}\x1f{obj}\x1f{attempt}").hex


def listed_once(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows (oldest first) as the trail lists them: one per event id, and a run's switch of an
    object written twice (the batch that found it switched wrote the row again, under the id of
    its own earlier attempt) once: an ``object_switched`` row whose run's last row for that
    object is the same switch (onto the same connection) is left out. A switch after a revert is
    listed again."""
    seen: set[str] = set()
    last: dict[tuple[Any, Any], tuple[Any, str]] = {}
    listed = []
    for row in rows:
        if row["event_id"] in seen:
            continue
        seen.add(row["event_id"])
        key = (row.get("run_id"), row.get("object"))
        what = (row.get("action"), str(row.get("after") or "").split(" (")[0])
        if key[0] and what[0] == AuditAction.OBJECT_SWITCHED and last.get(key) == what:
            continue
        last[key] = what
        listed.append(row)
    return listed


class Audit(Protocol):
    def record(self, event: AuditEvent) -> None:
        """Keep the event durably (returns quickly, never raises)."""
        ...
