"""Per-process wiring of the adapters the core needs (built lazily, rebuilt after fork)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from worker.aws_iam import BotoIamKeys
from worker.aws_secrets import SecretsManagerStore
from worker.core.bindings import Binding, load_bindings
from worker.core.key_rotation import KeyRotationContext
from worker.databend_admin import DriverDatabendAdmin
from worker.databend_client import DatabendClient
from worker.limits import RedisLimits
from worker.redis_state import RedisIntakeState, RedisSecretLocks
from worker.run_store import RedisRunStore, redis_client
from worker.settings import Settings, settings


@dataclass
class Services:
    settings: Settings
    runs: RedisRunStore
    secrets: SecretsManagerStore
    bindings: list[Binding]
    intake_state: RedisIntakeState
    locks: RedisSecretLocks
    limits: RedisLimits
    _admin: DriverDatabendAdmin | None = field(default=None, repr=False)
    _iam: BotoIamKeys | None = field(default=None, repr=False)

    @property
    def iam(self) -> BotoIamKeys:
        if self._iam is None:
            self._iam = BotoIamKeys()
        return self._iam

    def key_rotation(self) -> KeyRotationContext:
        return KeyRotationContext(
            runs=self.runs,
            secrets=self.secrets,
            writer=self.secrets,
            iam=self.iam,
            admin=self.admin,
            locks=self.locks,
        )

    @property
    def admin(self) -> DriverDatabendAdmin:
        """Built on first use: the intake never talks to Databend and needs no DSN."""
        if self._admin is None:
            dsn = self.settings.require("databend_dsn").databend_dsn
            assert dsn is not None
            client = DatabendClient(dsn, statement_timeout=self.settings.statement_timeout)
            self._admin = DriverDatabendAdmin(client)
        return self._admin


_lock = threading.Lock()
_services: Services | None = None


def services() -> Services:
    global _services
    with _lock:
        if _services is None:
            current = settings().require("redis_url", "bindings_path")
            assert current.redis_url and current.bindings_path
            client = redis_client(current.redis_url)
            _services = Services(
                settings=current,
                runs=RedisRunStore(client),
                secrets=SecretsManagerStore(),
                bindings=load_bindings(current.bindings_path),
                intake_state=RedisIntakeState(client),
                locks=RedisSecretLocks(client, current.lock_ttl),
                limits=RedisLimits(client),
            )
        return _services


def reset_services() -> None:
    global _services
    with _lock:
        _services = None
