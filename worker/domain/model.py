"""Value objects of the rotation domain."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit

from worker.domain import masking
from worker.domain.errors import UnreadableEvidence
from worker.domain.sql import DatabaseName, ObjectName, StageName, TableName


@dataclass(frozen=True)
class AccessKeyCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str | None = None
    endpoint_url: str | None = None

    @property
    def fingerprint(self) -> str:
        """These credentials' identity, compared with what objects show through masking.compare."""
        return masking.held("ak", self.access_key_id)

    def __repr__(self) -> str:  # never show the key pair
        return f"AccessKeyCredentials(access_key_id={masking.show_key(self.access_key_id)})"


@dataclass(frozen=True)
class RoleCredentials:
    role_arn: str
    external_id: str | None = field(default=None, repr=False)
    region: str | None = None
    endpoint_url: str | None = None

    @property
    def fingerprint(self) -> str:
        return masking.held("role", self.role_arn)


Credentials = AccessKeyCredentials | RoleCredentials


@dataclass(frozen=True)
class StorageParam:
    """Parsed ``system.tables.storage_param`` of an external table.

    ``ak`` / ``iam_role`` hold the values as Databend shows them (masked); ``unreadable`` is set,
    with the text at fault, when the row could not be read: such a row is evidence of nothing,
    and every destructive step refuses while one exists.
    """

    kind: str
    bucket: str | None = None
    root: str | None = None
    endpoint: str | None = None
    ak: str | None = None
    iam_role: str | None = None
    unreadable: str | None = None
    # the secret key as Databend shows it, where an object shows it (a stage; a database
    # default through its connection): the same key id with another secret is another key
    secret_shown: str | None = None

    @property
    def fingerprint(self) -> str | None:
        if self.iam_role:
            return masking.observed("role", self.iam_role)
        if self.ak:
            return masking.observed("ak", self.ak)
        return None

    def shows_another_secret(self, secret_access_key: str) -> bool:
        """Does this object show its secret key, as one that cannot be ``secret_access_key``?"""
        if not self.secret_shown:
            return False
        try:
            shown = masking.parse_shown(self.secret_shown)
        except UnreadableEvidence:
            return False  # (a form not known: no evidence either way)
        return shown.match(secret_access_key) is masking.Match.NO

    def may_hold(self, credentials_fingerprint: str) -> bool:
        """May this object hold those credentials? (True for an unreadable row: fail closed.)"""
        if self.unreadable is not None:
            return True
        return masking.may_hold(self.fingerprint, credentials_fingerprint)

    @property
    def location(self) -> str | None:
        """``s3://bucket/root/`` (None when the bucket is not shown)."""
        if not self.bucket:
            return None
        root = "/" + (self.root or "").strip("/")
        return f"{self.kind}://{self.bucket}{root.rstrip('/')}/"

    @property
    def switchable(self) -> bool:
        """Can Databend move this object to other credentials? ``StorageParams::apply_update``
        updates s3, gcs and azblob only; every other kind fails with "Cannot apply update"."""
        return self.kind in SWITCHABLE_KINDS


# The storage kinds whose credentials Databend can replace (ALTER … CONNECTION and the like).
SWITCHABLE_KINDS = frozenset({"s3", "gcs", "azblob"})


_PARAM_ITEM = re.compile(r"(\w+)=([^,]*)")


def parse_storage_param(text: str) -> StorageParam:
    """``s3 | bucket=b,root=/t/,endpoint=http://..,ak=******XYZ,iam_role=`` -> StorageParam.

    Never drops a row: text it cannot read comes back with ``unreadable`` set."""
    if not text or "|" not in text:
        return StorageParam(kind="?", unreadable=text or "(empty storage_param)")
    kind, _, rest = text.partition("|")
    items = {k: v.strip() for k, v in _PARAM_ITEM.findall(rest)}
    ak, role = items.get("ak") or None, items.get("iam_role") or None
    param = StorageParam(
        kind=kind.strip(),
        bucket=items.get("bucket") or None,
        root=items.get("root") or None,
        endpoint=items.get("endpoint") or None,
        ak=ak,
        iam_role=role,
    )
    for value in (ak, role):
        if value is not None and not masking.readable(masking.observed("ak", value)):
            return dataclasses.replace(
                param, unreadable=f"{kind.strip()} credentials shown as {value!r}"
            )
    return param


_STAGE_KINDS = {"s3": "s3", "gcs": "gcs", "azblob": "azblob", "azure": "azblob"}


def parse_stage_params(storage_type: str | None, text: str | None) -> StorageParam:
    """``system.stages.storage_params`` (a JSON object: ``access_key_id`` masked, ``bucket``,
    ``root``, ``endpoint_url``, ``role_arn`` in clear) -> StorageParam. Never drops a stage: text it
    cannot read comes back with ``unreadable`` set."""
    kind = (storage_type or "").strip().lower()
    try:
        params = json.loads(text or "")
    except ValueError:
        return StorageParam(kind=kind or "?", unreadable=f"storage_params {text!r}")
    if not isinstance(params, dict):
        return StorageParam(kind=kind or "?", unreadable=f"storage_params {text!r}")
    kind = kind or str(params.get("type", "")).lower() or "?"
    bucket = params.get("bucket") or params.get("container")
    ak = params.get("access_key_id") or params.get("account_name")
    role = params.get("role_arn")
    param = StorageParam(
        kind=_STAGE_KINDS.get(kind, kind),
        bucket=str(bucket) if bucket else None,
        root=str(params.get("root") or "") or None,
        endpoint=str(params.get("endpoint_url") or "") or None,
        ak=str(ak) if ak and kind != "azblob" else None,
        iam_role=str(role) if role else None,
        secret_shown=str(params.get("secret_access_key") or "") or None,
    )
    for value in (param.ak, param.iam_role):
        if value is not None and not masking.readable(masking.observed("ak", value)):
            return dataclasses.replace(param, unreadable=f"{kind} credentials shown as {value!r}")
    return param


def parse_location(url: str) -> tuple[str, str | None, str | None]:
    """``s3://bucket/path/`` -> (kind, bucket, root)."""
    parts = urlsplit(url.strip())
    return parts.scheme.lower(), parts.netloc or None, parts.path or "/"


@dataclass(frozen=True)
class ExternalTable:
    name: TableName
    storage: StorageParam

    @property
    def location(self) -> str | None:
        return self.storage.location


@dataclass(frozen=True)
class ExternalStage:
    """An external stage: a copy of credentials made when it was created or last altered."""

    name: StageName
    storage: StorageParam
    url: str  # as system.stages shows it; restated as is when the stage is switched

    @property
    def location(self) -> str | None:
        return self.url or self.storage.location


@dataclass(frozen=True)
class DatabaseDefault:
    """A database whose ``DEFAULT_STORAGE_CONNECTION`` names a connection: every table created in
    it without a location copies that connection's credentials. ``storage`` is what the named
    connection shows (its kind and key), with the bucket and root of ``path``; a connection that no
    longer exists shows no key."""

    name: DatabaseName
    connection: str
    path: str
    storage: StorageParam
    connection_exists: bool = True

    @property
    def location(self) -> str | None:
        return self.path or None


StoredObject = ExternalTable | ExternalStage | DatabaseDefault


@dataclass(frozen=True)
class ConnectionInfo:
    """A connection: a named set of credentials. Objects copy them; a database default names one."""

    name: str
    kind: str  # storage type: s3, gcs, …
    fingerprint: str | None  # ak:<as shown> / role:<arn>; None when it shows no credential
    shown: str | None = None  # the key (or role) as Databend shows it
    unreadable: str | None = None
    # the secret key as Databend shows it: two connections that show the same key id but
    # different secrets hold different keys (a look-alike, worker/flow/migration.py)
    secret_shown: str | None = None


class TableStatus(StrEnum):
    PENDING = "pending"
    SWITCHED = "switched"  # ALTER done, read-back not yet
    VALIDATED = "validated"  # switched by this run and read back
    ALREADY_SWITCHED = "already_switched"  # was on the new credentials already; read back
    FAILED = "failed"
    STRANDED = "stranded"  # its old key no longer works: ALTER cannot write (see RUNBOOK)
    ROLLED_BACK = "rolled_back"  # a migration's switch undone: previous connection, read back
    REVERTED = "reverted"  # read-back failed on the new credentials: switched back, read back
    SUPERSEDED = "superseded"  # a newer run of the secret owns it now: left untouched

    @property
    def done(self) -> bool:
        return self is not TableStatus.PENDING and self is not TableStatus.SWITCHED

    @property
    def failed(self) -> bool:
        return self in (TableStatus.FAILED, TableStatus.STRANDED, TableStatus.REVERTED)


@dataclass
class TableOutcome:
    """One object's outcome in a run (a table, a stage or a database default: ``table`` holds
    its name, whatever its kind; the name is kept for the run records already written)."""

    table: ObjectName
    status: TableStatus = TableStatus.PENDING
    rule: str = ""
    reason: str | None = None
    rows_read: int | None = None
    previous: str | None = None  # fingerprint before the switch
    switched_at: float | None = None  # wall-clock time the ALTER returned
    attempts: int = 0  # switch attempts begun (written before the ALTER: a retry checks first)


class RunKind(StrEnum):
    """What a run does (stored as its value, so records written before this type still read)."""

    ROTATION = "rotation"  # apply one secret version to every object of its binding
    KEY_ROTATION = "key-rotation"  # create a key, switch, move AWSCURRENT, retire the old key
    MIGRATION = "migration"  # move selected objects to another connection in waves


class RunStatus(StrEnum):
    QUEUED = "queued"
    PLANNING = "planning"
    SWITCHING = "switching"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # a newer version was accepted before this run started
    ABORTED = "aborted"  # a key rotation undone by `rotator abort`
    PAUSED = "paused"  # a migration stopped by `rotator pause`; `rotator resume` goes on
    HALTED = "halted"  # a migration wave's error rate passed the threshold
    ROLLED_BACK = "rolled_back"  # a migration undone by `rotator rollback`
    SUPERSEDED = "superseded"  # a newer run of the same secret took over (fencing)
    STUCK = "stuck"  # no progress for ROTATOR_STUCK_AFTER and not safe to re-enqueue: see error

    @property
    def final(self) -> bool:
        return not self.active and self is not RunStatus.PAUSED

    @property
    def active(self) -> bool:
        """May the run's work change anything now?"""
        return self in (RunStatus.QUEUED, RunStatus.PLANNING, RunStatus.SWITCHING)


@dataclass(frozen=True)
class PlannedTable:
    table: ObjectName  # a table, a stage or a database default
    rule: str  # which rule selected it: "selector sales.orders" / "discovered ak ******XYZ in b"
    current: str | None  # fingerprint now, None when the table is missing / not external
    problem: str | None = None  # set when the table cannot be switched at all
    bucket: str | None = None  # where its data lives (the pre-flight lists it first)


@dataclass(frozen=True)
class RotationPlan:
    connection: str
    target: str  # fingerprint of the new credentials
    tables: tuple[PlannedTable, ...]  # every object, whatever its kind
    notes: tuple[str, ...] = ()
    # objects the binding selects that Databend cannot switch (oss, cos, …): the run is refused
    refusals: tuple[str, ...] = ()


def short_version_id(version_id: str) -> str:
    """First 8 alphanumerics of a version id, lower-cased: stable and safe in a connection name."""
    cleaned = re.sub(r"[^0-9A-Za-z]", "", version_id).lower()
    return cleaned[:8] or "v"
