"""Per-process wiring of the adapters the core needs (built lazily, rebuilt after fork)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from worker.aws_secrets import SecretsManagerStore
from worker.core.bindings import Binding, load_bindings
from worker.databend_admin import DriverDatabendAdmin
from worker.databend_client import DatabendClient
from worker.run_store import RedisRunStore
from worker.settings import Settings, settings


@dataclass
class Services:
    settings: Settings
    runs: RedisRunStore
    secrets: SecretsManagerStore
    admin: DriverDatabendAdmin
    bindings: list[Binding]


_lock = threading.Lock()
_services: Services | None = None


def services() -> Services:
    global _services
    with _lock:
        if _services is None:
            current = settings().require("databend_dsn", "redis_url", "bindings_path")
            assert current.databend_dsn and current.redis_url and current.bindings_path
            _services = Services(
                settings=current,
                runs=RedisRunStore.from_url(current.redis_url),
                secrets=SecretsManagerStore(),
                admin=DriverDatabendAdmin(DatabendClient(current.databend_dsn)),
                bindings=load_bindings(current.bindings_path),
            )
        return _services


def reset_services() -> None:
    global _services
    with _lock:
        _services = None
