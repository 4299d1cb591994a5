"""The interfaces the core needs; adapters in worker/ implement them, tests use small fakes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from worker.domain.model import (
    ConnectionInfo,
    Credentials,
    DatabaseDefault,
    ExternalStage,
    ExternalTable,
    TableOutcome,
)
from worker.domain.sql import DatabaseName, ObjectName, StageName, TableName


@dataclass(frozen=True)
class VersionInfo:
    version_id: str
    stages: tuple[str, ...]
    created_at: float | None = None


@dataclass(frozen=True)
class SecretInfo:
    arn: str
    name: str
    versions: dict[str, VersionInfo] = field(default_factory=dict)

    def version_with_stage(self, stage: str) -> str | None:
        """The version carrying ``stage``; should two ever carry it, the newest one."""
        carriers = [v for v in self.versions.values() if stage in v.stages]
        if not carriers:
            return None
        return max(carriers, key=lambda v: v.created_at or 0.0).version_id


class SecretStore(Protocol):
    def describe(self, secret_id: str) -> SecretInfo:
        """Resolve a secret name or ARN; raises UnknownSecretError when it does not exist."""
        ...

    def read_version(self, arn: str, version_id: str) -> str | None:
        """The SecretString of exactly that version (None for binary secrets)."""
        ...


class DatabendAdmin(Protocol):
    def connection_fingerprint(self, name: str) -> str | None:
        """What the connection's credentials look like (``ak:XYZ``/``role:arn``); None if absent."""
        ...

    def create_connection(self, name: str, credentials: Credentials) -> None:
        """CREATE CONNECTION IF NOT EXISTS."""
        ...

    def list_external_tables(self, databases: frozenset[str] | None = None) -> list[ExternalTable]:
        """External tables, of the given databases only when ``databases`` is not None."""
        ...

    def describe_table(self, table: TableName) -> ExternalTable | None:
        """None when the table does not exist; storage.kind is '' for a non-external table."""
        ...

    def switch_table(self, table: TableName, connection: str) -> None:
        """ALTER TABLE … CONNECTION=(connection_name=…)."""
        ...

    def probe_connection(self, connection: str, bucket: str) -> None:
        """Prove the connection can list the bucket (touching no object); raises when not."""
        ...

    def read_back(self, table: TableName) -> int:
        """Read rows from storage (not metadata); returns how many were read."""
        ...

    # --- stages: copies of credentials made at CREATE / ALTER STAGE -----------------------------

    def list_stages(self) -> list[ExternalStage]:
        """Every external stage (internal stages hold no credentials), readable or not."""
        ...

    def describe_stage(self, stage: StageName) -> ExternalStage | None:
        """None when no external stage of that name exists."""
        ...

    def switch_stage(self, stage: ExternalStage, connection: str) -> None:
        """Give the stage the connection's credentials, restating its URL (``ALTER STAGE s SET
        URL='<its url>' CONNECTION=(connection_name=…)``; never touches storage)."""
        ...

    def list_stage(self, stage: StageName) -> int:
        """A bounded LIST of the stage with its own credentials; returns the files listed."""
        ...

    # --- database defaults: a database naming a connection for the tables created in it --------

    def list_database_defaults(self) -> list[DatabaseDefault]:
        """Every database whose DEFAULT_STORAGE_CONNECTION names a connection."""
        ...

    def describe_database(self, database: DatabaseName) -> DatabaseDefault | None:
        """None when the database does not exist or names no default connection."""
        ...

    def switch_database(self, database: DatabaseDefault, connection: str) -> None:
        """``ALTER DATABASE d SET OPTIONS (DEFAULT_STORAGE_CONNECTION = …)``, keeping its path."""
        ...

    # --- connections -----------------------------------------------------------------------------

    def list_connections(self) -> list[ConnectionInfo]: ...

    def drop_connection(self, name: str) -> None:
        """DROP CONNECTION IF EXISTS."""
        ...


class RunStore(Protocol):
    """Durable record of runs and per-table outcomes (Redis in production)."""

    def create(self, run: RunRecord) -> None: ...

    def get(self, run_id: str) -> RunRecord:
        """Raises RunNotFound."""
        ...

    def update(self, run_id: str, **fields: object) -> None: ...

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
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    run_id: str
    enqueued: bool  # the run was enqueued: nothing left to do
    mine: bool  # this handler holds the claim and must finish recording and enqueueing


@dataclass(frozen=True)
class NewestVersion:
    version_id: str
    created_at: float
    run_id: str = ""  # the run that applies it ("" when recorded without one)
    claim: str = ""  # the intake claim that run was recorded under ("" = the version id)


class IntakeState(Protocol):
    """What the intake remembers per secret version (Redis in production)."""

    def claim(self, secret_arn: str, version_id: str, run_id: str) -> Claim:
        """Record that (secret, version) has a run, or find the claim already made.

        A claim not yet marked enqueued is leased to the handler that made it; once the lease
        runs out (that handler died) the next handler takes it over, keeping its run id.
        """
        ...

    def mark_enqueued(self, secret_arn: str, version_id: str) -> None: ...

    def newest(self, secret_arn: str) -> NewestVersion | None: ...

    def advance_newest(
        self, secret_arn: str, version: NewestVersion, *, moved_back: bool = False
    ) -> None:
        """Keep the newest accepted version per secret (by creation date); never go back, unless
        ``moved_back``: AWSCURRENT itself was moved back to this older version."""
        ...


class Admission(StrEnum):
    ADMITTED = "admitted"  # go ahead: registered as in flight until ``leave``
    SUPERSEDED = "superseded"  # a newer run of the secret holds the fence: change nothing
    PAUSED = "paused"  # the run is paused: leave the object pending for ``resume``
    BUSY = "busy"  # an exclusive item is in flight in another live process: try again later
    ENDED = "ended"  # the run is final, or unknown (a Redis flush): change nothing


class Fences(Protocol):
    """Fencing tokens per secret and the changes in flight per run (Redis in production).

    A lock with an expiry is no lock for late work (a redelivered task, a resumed run): every
    change is therefore preceded by ``enter``, one atomic check that the run is still active and
    its token still the secret's newest, which also registers the change as in flight so that
    ``abort``/``pause`` can wait for it to end.
    """

    def issue(self, secret_arn: str, run_id: str) -> tuple[int, str | None]:
        """A token for ``run_id`` greater than every earlier one of the secret, and the run that
        held the newest token before (None when none did)."""
        ...

    def enter(
        self,
        run_id: str,
        item: str,
        *,
        secret_arn: str | None = None,
        token: int = 0,
        lease_seconds: float = 600,
        require_active: bool = True,
        exclusive: bool = False,
    ) -> Admission:
        """Check (run active, unless not ``require_active``: an abort's own changes; ``token``
        still the newest when given; for an ``exclusive`` item, nobody else holding it) and
        register ``item`` as in flight."""
        ...

    def leave(self, run_id: str, *items: str) -> None:
        """The changes of these items have ended (one call for a batch)."""
        ...

    def in_flight(self, run_id: str) -> list[str]:
        """Items registered by ``enter`` whose lease has not run out."""
        ...

    def is_newest(self, secret_arn: str, token: int) -> bool: ...


class SecretLocks(Protocol):
    """One run per secret at a time; locks expire so a dead worker cannot hold one forever."""

    def acquire(self, secret_arn: str, owner: str) -> bool: ...

    def renew(self, secret_arn: str, owner: str) -> bool: ...

    def release(self, secret_arn: str, owner: str) -> None: ...


@dataclass(frozen=True)
class AccessKey:
    key_id: str
    active: bool
    created_at: float


class IamKeys(Protocol):
    def owner_of(self, access_key_id: str) -> str:
        """The IAM user owning a key (GetAccessKeyLastUsed)."""
        ...

    def list_keys(self, user: str) -> list[AccessKey]: ...

    def create_key(self, user: str) -> tuple[str, str]:
        """A new active key: (access key id, secret access key)."""
        ...

    def set_active(self, user: str, key_id: str, active: bool) -> None: ...

    def delete_key(self, user: str, key_id: str) -> None: ...


class SecretWriter(Protocol):
    def put_pending(self, arn: str, version_id: str, value: str) -> None:
        """Store a new version labelled AWSPENDING (idempotent for the same version id)."""
        ...

    def make_current(self, arn: str, version_id: str) -> None:
        """Move AWSCURRENT to the version and drop its AWSPENDING label (idempotent)."""
        ...

    def drop_pending(self, arn: str, version_id: str) -> None:
        """Remove the AWSPENDING label from the version, if it has it."""
        ...
