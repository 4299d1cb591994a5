"""Per-process wiring of the adapters the core needs (built lazily, rebuilt after fork)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import structlog

from worker.adapters.audited import AuditedAdmin, AuditedIam, AuditedRunStore, AuditedSecrets
from worker.adapters.aws_iam import BotoIamKeys
from worker.adapters.aws_secrets import SecretsManagerStore
from worker.adapters.databend_admin import DriverDatabendAdmin
from worker.adapters.databend_client import DatabendClient
from worker.adapters.limits import RedisLimits
from worker.adapters.redis_state import RedisFences, RedisIntakeState, RedisSecretLocks
from worker.adapters.run_store import RedisRunStore, redis_client
from worker.domain.bindings import Binding, load_bindings
from worker.domain.errors import RotatorError
from worker.domain.ports import SecretInfo
from worker.flow.key_rotation import KeyRotationContext, KeyRotationPlan, plan_key_rotation
from worker.runtime.settings import Settings, settings


@dataclass
class Services:
    settings: Settings
    runs: RedisRunStore
    secrets: SecretsManagerStore
    loaded_bindings: list[Binding] | None  # None: ROTATOR_BINDINGS is not set
    intake_state: RedisIntakeState
    locks: RedisSecretLocks
    limits: RedisLimits
    fences: RedisFences
    _admin: DriverDatabendAdmin | None = field(default=None, repr=False)
    _iam: BotoIamKeys | None = field(default=None, repr=False)

    @property
    def bindings(self) -> list[Binding]:
        """The bindings file's bindings; only commands that need them require ROTATOR_BINDINGS
        (``rotator status`` of a run does not)."""
        if self.loaded_bindings is None:
            self.settings.require("bindings_path")
        return self.loaded_bindings or []

    @property
    def iam(self) -> BotoIamKeys:
        if self._iam is None:
            self._iam = AuditedIam()
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

    @property
    def admin(self) -> DriverDatabendAdmin:
        """Built on first use: the intake never talks to Databend and needs no DSN."""
        if self._admin is None:
            dsn = self.settings.require("databend_dsn").databend_dsn
            assert dsn is not None
            client = DatabendClient(dsn, statement_timeout=self.settings.statement_timeout)
            self._admin = AuditedAdmin(client, self.runs)
        return self._admin


def log_server(admin: DriverDatabendAdmin) -> None:
    """Log which Databend this process talks to and how it masks keys (once per process)."""
    log = structlog.get_logger("rotator.databend")
    try:
        version = admin.server_version()
    except RotatorError as exc:
        log.warning("databend server version unknown", error=str(exc))
        return
    form = admin.mask_form()
    log.info("databend server", version=version, key_masking=str(form) if form else "unknown")


_lock = threading.Lock()
_services: Services | None = None


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
                secrets=AuditedSecrets(),
                loaded_bindings=load_bindings(path) if path else None,
                intake_state=RedisIntakeState(client),
                locks=RedisSecretLocks(client, current.lock_ttl),
                limits=RedisLimits(client),
                fences=RedisFences(client),
            )
        return _services


def reset_services() -> None:
    global _services
    with _lock:
        _services = None
