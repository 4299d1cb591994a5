"""Start runs and follow them: shared by the CLI, the demo and (later) the event intake."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass

from worker.core.bindings import Binding, find_binding
from worker.core.model import RunStatus, TableOutcome
from worker.core.ports import RunRecord, SecretStore
from worker.errors import UnknownSecretError
from worker.run_store import RedisRunStore


@dataclass(frozen=True)
class ResolvedVersion:
    arn: str
    name: str
    version_id: str
    binding: Binding


def resolve_version(
    secret: str, version_id: str | None, *, secrets: SecretStore, bindings: list[Binding]
) -> ResolvedVersion:
    """SECRET may be a secret name, an ARN or a binding name; the version defaults to AWSCURRENT."""
    by_name = find_binding(bindings, name=secret)
    info = secrets.describe(by_name.secret if by_name else secret)
    binding = by_name or find_binding(bindings, secret_arn=info.arn, secret_name=info.name)
    if binding is None:
        raise UnknownSecretError(f"no binding covers secret {info.name}")
    if version_id is None:
        version_id = info.version_with_stage("AWSCURRENT")
        if version_id is None:
            raise UnknownSecretError(f"secret {info.name} has no AWSCURRENT version")
    elif version_id not in info.versions:
        raise UnknownSecretError(f"secret {info.name} has no version {version_id}")
    return ResolvedVersion(info.arn, info.name, version_id, binding)


def new_rotation_run(runs: RedisRunStore, resolved: ResolvedVersion) -> str:
    run_id = uuid.uuid4().hex
    runs.create(
        RunRecord(
            run_id=run_id,
            kind="rotation",
            secret=resolved.arn,
            version_id=resolved.version_id,
            binding=resolved.binding.name,
        )
    )
    return run_id


def enqueue_rotation(run_id: str) -> None:
    from tasks.rotation import start_rotation

    start_rotation.delay(run_id)


@dataclass(frozen=True)
class RunProgress:
    run: RunRecord
    outcomes: list[TableOutcome]

    @property
    def counts(self) -> Counter[str]:
        return Counter(str(o.status) for o in self.outcomes)

    @property
    def done(self) -> int:
        return sum(1 for o in self.outcomes if o.status.done)

    @property
    def final(self) -> bool:
        return RunStatus(self.run.status).final

    @property
    def succeeded(self) -> bool:
        return self.run.status == RunStatus.SUCCEEDED


def progress(runs: RedisRunStore, run_id: str) -> RunProgress:
    """A run and its tables; a key rotation shows the tables of its table run."""
    run = runs.get(run_id)
    tables_of = run.data.get("table_run") if run.kind == "key-rotation" else run_id
    return RunProgress(run, runs.outcomes(str(tables_of)) if tables_of else [])


def wait_for_run(
    runs: RedisRunStore, run_id: str, *, timeout: float, on_update=None, poll: float = 0.2
) -> RunProgress:
    deadline = time.monotonic() + timeout
    while True:
        current = progress(runs, run_id)
        if on_update:
            on_update(current)
        if current.final or time.monotonic() > deadline:
            return current
        time.sleep(poll)


def failed_outcomes(p: RunProgress) -> list[TableOutcome]:
    return [o for o in p.outcomes if o.status.failed]
