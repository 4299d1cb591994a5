"""Start runs and follow them: shared by the CLI, the demo and (later) the event intake."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from worker.adapters.run_codec import outcome_to_json
from worker.adapters.run_store import RedisRunStore
from worker.domain.bindings import Binding
from worker.domain.errors import UnknownSecretError
from worker.domain.model import RunKind, RunStatus, TableOutcome, TableStatus
from worker.domain.ports import RunRecord, SecretStore
from worker.flow.inventory import resolve_secret
from worker.flow.lifecycle import Followup
from worker.flow.runs.prepare import refuse_behind_awscurrent


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
    binding, info = resolve_secret(secret, secrets=secrets, bindings=bindings)
    if version_id is None:
        version_id = info.version_with_stage("AWSCURRENT")
        if version_id is None:
            raise UnknownSecretError(f"secret {info.name} has no AWSCURRENT version")
    elif version_id not in info.versions:
        raise UnknownSecretError(f"secret {info.name} has no version {version_id}")
    else:
        refuse_behind_awscurrent(info, version_id)
    return ResolvedVersion(info.arn, info.name, version_id, binding)


def new_rotation_run(runs: RedisRunStore, resolved: ResolvedVersion) -> str:
    run_id = uuid.uuid4().hex
    runs.create(
        RunRecord(
            run_id=run_id,
            kind=RunKind.ROTATION,
            secret=resolved.arn,
            version_id=resolved.version_id,
            binding=resolved.binding.name,
        )
    )
    return run_id


def unfinished_run_for(runs: RedisRunStore, resolved: ResolvedVersion) -> str | None:
    """A run of this very version that has not ended: a crash or a lost worker may have cut it
    short, and a new run would wait behind its secret lock. Asking again continues that run."""
    run = runs.unfinished_run("rotation", resolved.arn, resolved.version_id)
    return run.run_id if run else None


def enqueue_rotation(run_id: str) -> None:
    from tasks.rotation import start_rotation

    start_rotation.delay(run_id)


def enqueue_followup(followup: Followup, run_id: str) -> None:
    """Hand what a lifecycle call or the reaper decided to the task that does it."""
    from tasks.key_rotation import advance_key_rotation, retire_due
    from tasks.migration import release_wave
    from tasks.rotation import start_rotation

    if followup is Followup.START_ROTATION:
        start_rotation.delay(run_id)
    elif followup is Followup.ADVANCE_KEY_ROTATION:
        advance_key_rotation.delay(run_id)
    elif followup is Followup.RELEASE_WAVE:
        release_wave.delay(run_id)
    elif followup is Followup.RETIRE_DUE:
        retire_due.delay()


@dataclass(frozen=True)
class RunProgress:
    """A run and its tables: every outcome, or only the counts per status while following."""

    run: RunRecord
    outcomes: list[TableOutcome]
    status_counts: Counter[str] | None = None

    @cached_property
    def counts(self) -> Counter[str]:
        if self.status_counts is not None:
            return self.status_counts
        return Counter(str(o.status) for o in self.outcomes)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(n for status, n in self.counts.items() if TableStatus(status).done)

    @property
    def final(self) -> bool:
        return RunStatus(self.run.status).final

    @property
    def succeeded(self) -> bool:
        return self.run.status == RunStatus.SUCCEEDED


def progress(runs: RedisRunStore, run_id: str, *, tables: bool = True) -> RunProgress:
    """A run and its tables; a key rotation shows the tables of its table run. With
    ``tables=False`` only the counts per status are read (cheap at any size, for polling)."""
    run = runs.get(run_id)
    tables_of = run.data.get("table_run") if run.kind == RunKind.KEY_ROTATION else run_id
    if not tables_of:
        return RunProgress(run, [])
    if not tables:
        counts = runs.status_counts(str(tables_of))
        if counts is not None:
            return RunProgress(run, [], counts)
    return RunProgress(run, runs.outcomes(str(tables_of)))


def wait_for_run(
    runs: RedisRunStore,
    run_id: str,
    *,
    timeout: float,
    on_update: Callable[[RunProgress], None] | None = None,
    poll: float = 0.2,
    max_poll: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RunProgress:
    """Poll the run's counts until it ends (or ``timeout``); then read every table once.

    Every ``poll`` seconds at first, then an eighth of the time waited so far, up to
    ``max_poll`` (a batch writes its outcomes seconds apart anyway): a short run's end is
    seen at once, a longer one's within an eighth of its time and a second at most, and an
    hour-long migration costs Redis two reads a second, not ten."""
    started = clock()
    deadline = started + timeout
    while True:
        current = progress(runs, run_id, tables=False)
        if on_update:
            on_update(current)
        now = clock()
        if current.final or now >= deadline:
            return progress(runs, run_id)
        sleep(min(max_poll, max(poll, (now - started) / 8), max(0.0, deadline - now)))


def outcome_json(outcome: TableOutcome) -> dict[str, Any]:
    """An object's outcome as ``rotator status --json`` shows it: the shape the run store keeps."""
    return dict(json.loads(outcome_to_json(outcome)))


def failed_outcomes(p: RunProgress) -> list[TableOutcome]:
    return [o for o in p.outcomes if o.status.failed]
