"""Per-process wiring of the adapters behind the core's ports (built lazily, rebuilt after fork).

``Services`` is typed to the ports of worker/domain/ports.py, so whoever holds one (tasks, the
CLI, the schedule) sees what the core sees. The functions below it hand the CLI, the local stack
and the doctor what they need of adapters without naming one: bounded AWS clients, the run
records alone, the audit table.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog

from worker.adapters import aws_clients
from worker.adapters.audit_store import AuditTable
from worker.adapters.audit_trail import Recorder
from worker.adapters.audited import AuditedAdmin, AuditedIam, AuditedRunStore, AuditedSecrets
from worker.adapters.databend_client import DatabendClient, table_time_limit
from worker.adapters.limits import RedisLimits
from worker.adapters.redis_state import RedisFences, RedisIntakeState, RedisSecretLocks
from worker.adapters.run_store import RedisRunStore, redis_client
from worker.domain.bindings import Binding, load_bindings
from worker.domain.errors import RotatorError
from worker.domain.model import TableOutcome
from worker.domain.ports import (
    DatabendAdmin,
    Fences,
    IamKeys,
    IntakeState,
    Limits,
    RunStore,
    SecretInfo,
    SecretLocks,
    SecretsManager,
)
from worker.domain.sql import object_label
from worker.flow.key_rotation import KeyRotationContext, KeyRotationPlan, plan_key_rotation
from worker.flow.stale import RotatedAway
from worker.observe.audit import switching as audit_switching
from worker.observe.audit import use as use_audit_trail
from worker.observe.notify import use_sns
from worker.runtime.settings import Settings, settings

LABELS_MAX_AGE = 5.0  # seconds a worker reuses a bound secret's labels between batches


@dataclass
class Services:
    settings: Settings
    runs: RunStore
    secrets: SecretsManager
    loaded_bindings: list[Binding] | None  # None: ROTATOR_BINDINGS is not set
    intake_state: IntakeState
    locks: SecretLocks
    limits: Limits
    fences: Fences
    redis: redis.Redis  # the state store itself: the keys notifications and the schedule keep
    _admin: DatabendAdmin | None = field(default=None, repr=False)
    _iam: IamKeys | None = field(default=None, repr=False)
    _rotated_away: RotatedAway | None = field(default=None, repr=False)

    @property
    def rotated_away(self) -> RotatedAway:
        """Which keys the bound secrets have been rotated away from (worker/flow/stale.py), for
        a migration's batches: one per process, so each secret version is read once and each
        secret's labels at most every LABELS_MAX_AGE seconds (not once per batch), or at once
        when the rotator has moved labels since (the fences' labels epoch)."""
        if self._rotated_away is None:
            self._rotated_away = RotatedAway(
                self.secrets,
                self.loaded_bindings or [],
                max_age=LABELS_MAX_AGE,
                epoch=self.fences.labels_epoch,
            )
        return self._rotated_away

    def fresh_rotated_away(self) -> RotatedAway:
        """The same, reading the labels for every question (a rollback, object by object)."""
        return RotatedAway(self.secrets, self.loaded_bindings or [], epoch=self.fences.labels_epoch)

    @property
    def bindings(self) -> list[Binding]:
        """The bindings file's bindings; only commands that need them require ROTATOR_BINDINGS
        (``rotator status`` of a run does not)."""
        if self.loaded_bindings is None:
            self.settings.require("bindings_path")
        return self.loaded_bindings or []

    @property
    def iam(self) -> IamKeys:
        if self._iam is None:
            self._iam = AuditedIam(aws_client("iam", current=self.settings))
        return self._iam

    def key_rotation(self) -> KeyRotationContext:
        return KeyRotationContext(
            runs=self.runs,
            secrets=self.secrets,
            writer=self.secrets,
            iam=self.iam,
            admin=self.admin,
            locks=self.locks,
            fences=self.fences,
            bound_secrets=tuple(b.secret for b in self.bindings),
            bindings=tuple(self.bindings),
        )

    def plan_key_rotation(
        self, binding: Binding, info: SecretInfo, *, allow_empty: bool = False
    ) -> KeyRotationPlan:
        """What ``rotate --commit`` (or the schedule) would do for the binding, with every bound
        secret counted as holding its live keys."""
        return plan_key_rotation(
            binding,
            info,
            secrets=self.secrets,
            iam=self.iam,
            admin=self.admin,
            allow_empty=allow_empty,
            bound_secrets=tuple(b.secret for b in self.bindings),
        )

    @property
    def lease_seconds(self) -> float:
        """How long an admitted change counts as in flight: one table's time limit and a margin."""
        return float(self.settings.table_time_limit + 60)

    def table_time_limit(self) -> AbstractContextManager[None]:
        """The deadline of one table's switch and read-back (``ROTATOR_TABLE_TIME_LIMIT``): every
        Databend statement inside the block ends by then."""
        return table_time_limit(self.settings.table_time_limit)

    def object_scope(self, planned: TableOutcome) -> AbstractContextManager[None]:
        """Around one planned object's switch in a batch (``object_scope`` below)."""
        return object_scope(planned, self.settings.table_time_limit)

    def queue_notification(self, sink: str, message: dict[str, Any]) -> None:
        """Hand one notification to the task that delivers it (worker/observe/notify.py)."""
        from tasks.service import deliver_notification

        deliver_notification.delay(sink, message)

    @property
    def admin(self) -> DatabendAdmin:
        """Built on first use: the intake never talks to Databend and needs no DSN."""
        if self._admin is None:
            dsn = self.settings.require("databend_dsn").databend_dsn
            assert dsn is not None
            client = DatabendClient(dsn, statement_timeout=self.settings.statement_timeout)
            self._admin = AuditedAdmin(client, self.runs)
        return self._admin


def log_server(admin: DatabendAdmin) -> None:
    """Log which Databend this process talks to and how it masks keys (once per process)."""
    log = structlog.get_logger("rotator.databend")
    try:
        version = admin.server_version()
    except RotatorError as exc:
        log.warning("databend server version unknown", error=str(exc))
        return
    form = admin.mask_form()
    masking = str(form) if form else "unknown"
    log.info("databend server", server_version=version, key_masking=masking)


_lock = threading.Lock()
_services: Services | None = None


@contextlib.contextmanager
def object_scope(planned: TableOutcome, seconds: float) -> Iterator[None]:
    """Around one planned object's switch in a batch: its time limit (``seconds``), and the
    plan's view of it handed to the audit (the switch row's ``before``, without a Redis read
    per object)."""
    label = object_label(planned.table)
    with table_time_limit(seconds), audit_switching(label, planned.previous, planned.attempts):
        yield


def services() -> Services:
    global _services
    with _lock:
        if _services is None:
            current = settings().require("redis_url")
            assert current.redis_url
            client = redis_client(current.redis_url)
            path = current.bindings_path
            _services = Services(
                settings=current,
                runs=AuditedRunStore(client),
                secrets=AuditedSecrets(aws_client("secretsmanager", current=current)),
                loaded_bindings=load_bindings(path) if path else None,
                intake_state=RedisIntakeState(client),
                locks=RedisSecretLocks(client, current.lock_ttl),
                limits=RedisLimits(client),
                fences=RedisFences(client),
                redis=client,
            )
        return _services


def reset_services() -> None:
    global _services
    with _lock:
        _services = None


# --- what the CLI, the local stack and the doctor need without the whole wiring ----------------


def aws_client(service: str, *, current: Settings | None = None, **kwargs: Any) -> Any:
    """A boto3 client bounded by this process's settings (``ROTATOR_AWS_*``; see
    worker/adapters/aws_clients.py). ``long_poll_seconds`` and boto3's own arguments pass on."""
    return aws_clients.aws_client(service, bounds=current or settings(), **kwargs)


def run_records(current: Settings) -> RunStore:
    """The run records alone (``rotator runs`` needs Redis, not AWS or Databend)."""
    return RedisRunStore.from_url(current.require("redis_url").redis_url or "")


def audit_table(current: Settings) -> AuditTable:
    """The audit table in Databend, for reading (``rotator audit``)."""
    dsn = current.require("databend_dsn").databend_dsn or ""
    return AuditTable(DatabendClient(dsn, statement_timeout=30), current.audit_database)


# --- what observe/ is handed: it imports no adapter ----------------------------------------------


def audit_recorder() -> Recorder | None:
    """This process's audit trail (worker/adapters/audit_trail.py); None without Databend or
    Redis."""
    current = settings()
    if not current.databend_dsn or not current.redis_url:
        return None
    return Recorder(
        base=current.audit_spool,
        dsn=current.databend_dsn,
        database=current.audit_database,
        interval=current.audit_flush_interval,
        runs=RedisRunStore.from_url(current.redis_url),
    )


def _publish_sns(topic: str, message: str, subject: str) -> None:
    aws_client("sns").publish(TopicArn=topic, Message=message, Subject=subject)


use_audit_trail(audit_recorder)
use_sns(_publish_sns)
