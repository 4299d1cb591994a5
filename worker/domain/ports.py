"""The interfaces the core needs; adapters in worker/adapters/ implement them, tests use small
fakes. The run store and a run's record are in runs.py, the audit trail's port in audit.py."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from worker.domain.masking import MaskForm
from worker.domain.model import (
    ConnectionInfo,
    Credentials,
    DatabaseDefault,
    ExternalStage,
    ExternalTable,
)
from worker.domain.runs import RunRecord as RunRecord
from worker.domain.runs import RunStore as RunStore
from worker.domain.sql import DatabaseName, StageName, TableName


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
    def server_version(self) -> str:
        """``SELECT version()``, read once: e.g. ``Databend Query v1.2.895-nightly-…``."""
        ...

    def mask_form(self) -> MaskForm | None:
        """How this server masks keys, from its version (None when the version cannot be read)."""
        ...

    def connection_fingerprint(self, name: str) -> str | None:
        """What the connection's credentials look like (``ak:XYZ``/``role:arn``); None if absent."""
        ...

    def connection_fingerprints(self) -> dict[str, str]:
        """Every connection's name -> what its credentials look like."""
        ...

    def create_connection(self, name: str, credentials: Credentials) -> bool:
        """CREATE CONNECTION: True when this call created it, False when a connection of that
        name exists already (then nothing was changed)."""
        ...

    def list_external_tables(
        self,
        databases: frozenset[str] | None = None,
        tables: frozenset[TableName] | None = None,
    ) -> list[ExternalTable]:
        """External tables, of the given databases only when ``databases`` is not None, and
        only those named when ``tables`` is not None."""
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
    STALE = "stale"  # a secret's labels moved since the caller read them: read them again first
    REDISPATCHED = "redispatched"  # the run's pending objects were sent out again: leave them


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
        labels_epoch: int | None = None,
        dispatch: int = 0,
        apart: bool = False,
    ) -> Admission:
        """Check (run active, unless not ``require_active``: an abort's own changes; ``token``
        still the newest when given; for an ``exclusive`` item, no other live process holding
        it, and with ``apart`` no other entrant (another thread too) holding it; with a
        ``labels_epoch``, the secrets' labels unmoved since the caller read them under that
        epoch, else STALE; with a ``dispatch``, the run's objects not sent out again since, else
        REDISPATCHED) and register ``item`` as in flight (with the labels' epoch)."""
        ...

    def leave(self, run_id: str, *items: str) -> None:
        """The changes of these items have ended (one call for a batch). Each entrant (the
        thread that entered them) holds and leaves its own entries: two copies of one batch
        switching the same object at once each count until they have ended."""
        ...

    def in_flight(self, run_id: str) -> list[str]:
        """Items registered by ``enter`` whose lease has not run out."""
        ...

    def is_newest(self, secret_arn: str, token: int) -> bool: ...

    def labels_epoch(self) -> int:
        """The secrets' labels epoch: it changes whenever the rotator has moved a secret's
        labels (``labels_moved``), so a view of them read under an older epoch is stale."""
        ...

    def labels_moving(self, seconds: float) -> None:
        """A secret's labels are about to move: until ``labels_moved`` (or ``seconds`` pass,
        should the mover die), every admission carrying a labels epoch is refused STALE."""
        ...

    def labels_moved(self) -> int:
        """A secret's labels have moved: every view of them read before is stale, and a change
        admitted under it is told apart (``in_flight_before``); admissions are no longer held
        (``labels_moving``). Returns the new epoch."""
        ...

    def in_flight_before(self, epoch: int) -> list[str]:
        """Changes in flight, of any run, admitted under a labels epoch other than ``epoch`` (on
        a view of the labels from before they last moved), as ``run:item``."""
        ...


class SecretLocks(Protocol):
    """One run per secret at a time; locks expire so a dead worker cannot hold one forever."""

    def acquire(self, secret_arn: str, owner: str) -> bool: ...

    def renew(self, secret_arn: str, owner: str) -> bool: ...

    def release(self, secret_arn: str, owner: str) -> None: ...


class Limits(Protocol):
    """Limits every worker shares (Redis in production): concurrency slots and a rate per run."""

    def slot(
        self, run_id: str, limit: int, *, wait: float = 60, poll: float = 0.02
    ) -> AbstractContextManager[None]:
        """Hold one of the run's ``limit`` slots for the block (raises a RetryableError when none
        frees up within ``wait``)."""
        ...

    def pace(self, run_id: str, per_second: float | None) -> None:
        """Sleep until this caller's turn under a shared rate of ``per_second``."""
        ...

    def busy_slots(self, run_id: str) -> int: ...


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


class SecretsManager(SecretStore, SecretWriter, Protocol):
    """A store that is read and written (AWS Secrets Manager in production)."""
