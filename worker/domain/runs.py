"""A run's record and the run store (the port; Redis in production, worker/adapters/run_store.py).

``worker.domain.ports`` names these with the other ports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from worker.domain.model import TableOutcome
from worker.domain.sql import ObjectName


class RunStore(Protocol):
    """Durable record of runs and per-table outcomes (Redis in production)."""

    def create(self, run: RunRecord, *, alone: bool = False) -> str | None:
        """Record a new run. ``alone``: only if no unfinished run of its kind holds its secret
        (a key rotation: one per secret at a time), checked and written in one step; else that
        run's id is returned and nothing is written."""
        ...

    def get(self, run_id: str) -> RunRecord:
        """Raises RunNotFound."""
        ...

    def update(self, run_id: str, **fields: object) -> None: ...

    def update_unless_final(self, run_id: str, **fields: object) -> bool:
        """``update``, unless the run has ended (its status is final), checked and written in
        one atomic step: a run that ended meanwhile (aborted, superseded) is never brought back
        to life by a late write. False, with nothing written, when it had ended."""
        ...

    def update_if(self, run_id: str, expected: dict[str, Any], **fields: object) -> bool:
        """``update``, only while each field of ``expected`` still holds that value (as this
        process read it), checked and written in one atomic step: a decision taken on a record
        that changed meanwhile (paused, resumed, rolled back, aborted) is not written. (A final
        status may be expected: resuming a failed run.) False, with nothing written, otherwise."""
        ...

    def set_plan(self, run_id: str, outcomes: list[TableOutcome]) -> None:
        """Write every planned table as pending (or failed) before any table is switched."""
        ...

    def outcome(self, run_id: str, table: ObjectName) -> TableOutcome | None: ...

    def begin_attempt(self, run_id: str, table: ObjectName) -> TableOutcome | None:
        """The table's outcome; unless finished, with one more attempt recorded (write-ahead)."""
        ...

    def begin_attempts(self, run_id: str, tables: list[ObjectName]) -> list[TableOutcome | None]:
        """begin_attempt for a batch, in one call: each outcome in order (None: not planned)."""
        ...

    def record_wave_outcome(
        self, run_id: str, outcome: TableOutcome, wave: int, epoch: int
    ) -> tuple[int, int, int]:
        """record_outcome for a finished table of a migration wave: (pending in the run,
        finished in the wave, size of the wave)."""
        ...

    def record_outcomes(
        self, run_id: str, outcomes: list[TableOutcome], wave: tuple[int, int] | None = None
    ) -> tuple[int, int, int]:
        """Store finished objects in one atomic call: (pending in the run, finished in the wave,
        size of the wave; both 0 without ``wave`` = (index, epoch)). Idempotent."""
        ...

    def outcomes(self, run_id: str) -> list[TableOutcome]: ...

    def outcomes_for(self, run_id: str, tables: list[ObjectName]) -> list[TableOutcome]:
        """The outcomes of these tables of the run (those it has)."""
        ...

    def status_counts(self, run_id: str) -> Counter[str] | None:
        """Tables per status; None for a run recorded without counts (read its outcomes)."""
        ...

    def record_outcome(self, run_id: str, outcome: TableOutcome) -> int:
        """Store a finished table; returns how many tables are still pending (idempotent)."""
        ...

    def pending(self, run_id: str) -> list[ObjectName]: ...

    def record_pending(self, run_id: str, outcome: TableOutcome) -> None:
        """Put a table back to pending (resume)."""
        ...

    def mark_retiring(self, run_id: str) -> None:
        """A key rotation whose old key awaits deactivation or deletion."""
        ...

    def set_waves(self, run_id: str, waves: list[list[ObjectName]]) -> None:
        """A migration's waves, kept apart from the run record (they can be large)."""
        ...

    def wave(self, run_id: str, index: int) -> list[ObjectName]: ...

    def wave_size(self, run_id: str, index: int) -> int: ...

    def wave_count(self, run_id: str) -> int: ...

    def wave_finished(self, run_id: str, index: int, table: ObjectName, epoch: int) -> int:
        """Count a finished table of a wave (idempotent); returns how many are finished."""
        ...

    def unmark_retiring(self, run_id: str) -> None: ...

    def retiring(self) -> list[str]: ...

    def redispatch(self, run_id: str) -> int:
        """Count one more sending of the run's pending objects; returns its number."""
        ...

    def migrating(self, names: list[ObjectName]) -> set[ObjectName]:
        """Which of these objects an unfinished migration has in its plan (finished or not)."""
        ...

    def unfinished(self) -> list[str]:
        """Ids of runs not yet final (paused ones included)."""
        ...

    def unfinished_run(self, kind: str, secret: str, version_id: str = "") -> RunRecord | None:
        """The newest run of ``kind`` for the secret (a rotation: and version) if not final."""
        ...

    def forget_unfinished(self, run_id: str) -> None: ...

    def latest_run(self, kind: str, secret: str, version_id: str = "") -> RunRecord | None:
        """The newest run of ``kind`` for the secret (a rotation: and version), ended or not."""
        ...

    def recent_runs(self, limit: int = 20, start: int = 0) -> list[str]:
        """Run ids newest first: ``limit`` of them, skipping the ``start`` newest."""
        ...


@dataclass
class RunRecord:
    run_id: str
    kind: str  # a RunKind value: "rotation", "key-rotation", "migration"
    secret: str  # ARN once resolved
    version_id: str
    status: str = "queued"
    binding: str | None = None
    connection: str | None = None
    target: str | None = None
    may_skip_switched: bool = True
    newest_wins: bool = False  # event-driven runs never apply a version older than the newest
    parent: str | None = None  # the key rotation this table run belongs to
    fence: int = 0  # fencing token taken with the secret's lock (0: none yet); see Fences
    # how many times its pending objects were sent out in batches: a batch of an earlier sending
    # stops at its next object (the later one has them), so two never switch side by side
    dispatch: int = 0
    requeues: int = 0  # times the reaper re-enqueued it without progress in between
    requeued_at: float = 0.0
    stuck_from: str = ""  # the status the reaper found it in when it flagged it stuck
    # runs this one superseded: it changes nothing until their changes in flight have ended
    waits_for: list[str] = field(default_factory=list)
    phase: str = ""  # key rotations: the last step completed (see flow/key_rotation.py)
    data: dict[str, Any] = field(default_factory=dict)  # key rotations: write-ahead facts
    error: str | None = None
    created_at: float = 0.0
    started_at: float = 0.0
    updated_at: float = 0.0
    ended_at: float = 0.0  # when its status last became final (0: never); set by the run store
    notes: list[str] = field(default_factory=list)
