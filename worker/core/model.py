"""Value objects of the rotation domain."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from worker.sql import TableName


@dataclass(frozen=True)
class AccessKeyCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str | None = None
    endpoint_url: str | None = None

    @property
    def fingerprint(self) -> str:
        """What Databend's storage_param shows of these credentials: the key's last 3 chars."""
        return f"ak:{self.access_key_id[-3:]}"

    def __repr__(self) -> str:  # never show the key pair
        return f"AccessKeyCredentials(access_key_id=******{self.access_key_id[-3:]})"


@dataclass(frozen=True)
class RoleCredentials:
    role_arn: str
    external_id: str | None = field(default=None, repr=False)
    region: str | None = None
    endpoint_url: str | None = None

    @property
    def fingerprint(self) -> str:
        return role_fingerprint(self.role_arn)


Credentials = AccessKeyCredentials | RoleCredentials


def role_fingerprint(role_arn: str) -> str:
    """Databend shows only a role ARN's last 3 characters on a connection; compare those."""
    return f"role:~{role_arn.lstrip('*')[-3:]}"


@dataclass(frozen=True)
class SecretVersion:
    """One version of a secret, as read from the secret store."""

    arn: str
    name: str
    version_id: str
    stages: tuple[str, ...]
    created_at: float | None = None


@dataclass(frozen=True)
class StorageParam:
    """Parsed ``system.tables.storage_param`` of an external table."""

    kind: str
    bucket: str | None = None
    root: str | None = None
    endpoint: str | None = None
    ak_suffix: str | None = None
    iam_role: str | None = None

    @property
    def fingerprint(self) -> str | None:
        if self.iam_role:
            return role_fingerprint(self.iam_role)
        if self.ak_suffix:
            return f"ak:{self.ak_suffix}"
        return None


_PARAM_ITEM = re.compile(r"(\w+)=([^,]*)")


def parse_storage_param(text: str) -> StorageParam | None:
    """``s3 | bucket=b,root=/t/,endpoint=http://..,ak=******XYZ,iam_role=`` -> StorageParam."""
    if not text or "|" not in text:
        return None
    kind, _, rest = text.partition("|")
    items = {k: v.strip() for k, v in _PARAM_ITEM.findall(rest)}
    ak = items.get("ak", "")
    return StorageParam(
        kind=kind.strip(),
        bucket=items.get("bucket") or None,
        root=items.get("root") or None,
        endpoint=items.get("endpoint") or None,
        ak_suffix=ak.lstrip("*")[-3:] if ak.strip("*") else None,
        iam_role=items.get("iam_role") or None,
    )


@dataclass(frozen=True)
class ExternalTable:
    name: TableName
    storage: StorageParam


class TableStatus(StrEnum):
    PENDING = "pending"
    SWITCHED = "switched"  # ALTER done, read-back not yet
    VALIDATED = "validated"  # switched by this run and read back
    ALREADY_SWITCHED = "already_switched"  # was on the new credentials already; read back
    FAILED = "failed"
    STRANDED = "stranded"  # its old key no longer works: ALTER cannot write (see RUNBOOK)
    ROLLED_BACK = "rolled_back"  # a migration's switch undone: previous connection, read back

    @property
    def done(self) -> bool:
        return self in (
            TableStatus.VALIDATED,
            TableStatus.ALREADY_SWITCHED,
            TableStatus.FAILED,
            TableStatus.STRANDED,
            TableStatus.ROLLED_BACK,
        )

    @property
    def failed(self) -> bool:
        return self in (TableStatus.FAILED, TableStatus.STRANDED)


@dataclass
class TableOutcome:
    table: TableName
    status: TableStatus = TableStatus.PENDING
    rule: str = ""
    reason: str | None = None
    rows_read: int | None = None
    previous: str | None = None  # fingerprint before the switch
    switched_at: float | None = None  # wall-clock time the ALTER returned
    attempts: int = 0  # switch attempts begun (written before the ALTER: a retry checks first)


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

    @property
    def final(self) -> bool:
        return self in (
            RunStatus.SUCCEEDED,
            RunStatus.FAILED,
            RunStatus.SKIPPED,
            RunStatus.ABORTED,
            RunStatus.HALTED,
            RunStatus.ROLLED_BACK,
        )


@dataclass(frozen=True)
class PlannedTable:
    table: TableName
    rule: str  # which rule selected it: "selector sales.orders" / "discovered ak ******XYZ in b"
    current: str | None  # fingerprint now, None when the table is missing / not external
    problem: str | None = None  # set when the table cannot be switched at all


@dataclass(frozen=True)
class RotationPlan:
    connection: str
    target: str  # fingerprint of the new credentials
    tables: tuple[PlannedTable, ...]
    notes: tuple[str, ...] = ()


def short_version_id(version_id: str) -> str:
    """First 8 alphanumerics of a version id, lower-cased: stable and safe in a connection name."""
    cleaned = re.sub(r"[^0-9A-Za-z]", "", version_id).lower()
    return cleaned[:8] or "v"
