"""Bulk migrations: move many tables to one target connection in waves, a canary wave first.

A migration is a run of kind ``migration``: its tables are planned up front (every one pending,
with the wave it belongs to), waves are released one at a time, and a wave whose error rate passes
the threshold halts the run. Finished tables are never switched again: a resumed run skips them,
and a table found already on the target is only read back.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from worker.core.bindings import Selector
from worker.core.model import ExternalTable, RunStatus, TableOutcome, TableStatus
from worker.core.ports import DatabendAdmin, RunRecord, RunStore
from worker.errors import FatalError
from worker.sql import TableName


class MigrationRefused(FatalError):
    pass


@dataclass(frozen=True)
class MigrationOptions:
    wave_size: int = 100
    canary: int = 5
    max_error_rate: float = 0.0
    concurrency: int = 8
    rate: float | None = None  # tables per second across all workers; None: no limit

    def __post_init__(self) -> None:
        if self.wave_size < 1 or self.canary < 0 or self.concurrency < 1:
            raise ValueError("wave size and concurrency must be at least 1, canary at least 0")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError("max error rate must be between 0 and 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")


@dataclass(frozen=True)
class MigrationPlan:
    target: str  # connection name
    target_fingerprint: str
    tables: list[ExternalTable]
    waves: list[list[TableName]]
    previous_connections: dict[str, str]  # fingerprint -> a connection with those credentials


def select_tables(
    tables: list[ExternalTable],
    *,
    from_fingerprint: str | None = None,
    selectors: tuple[Selector, ...] = (),
) -> list[ExternalTable]:
    chosen = []
    for table in tables:
        if from_fingerprint is not None and table.storage.fingerprint != from_fingerprint:
            continue
        if selectors and not any(s.matches(table.name) for s in selectors):
            continue
        chosen.append(table)
    return sorted(chosen, key=lambda t: t.name)


def assign_waves(tables: list[TableName], *, canary: int, wave_size: int) -> list[list[TableName]]:
    """The canary wave (``canary`` tables) first, then waves of ``wave_size``."""
    waves: list[list[TableName]] = []
    rest = list(tables)
    if canary:
        waves.append(rest[:canary])
        rest = rest[canary:]
    waves += [rest[i : i + wave_size] for i in range(0, len(rest), wave_size)]
    return [w for w in waves if w]


def plan_migration(
    admin: DatabendAdmin,
    *,
    target: str,
    from_connection: str | None,
    selectors: tuple[Selector, ...],
    options: MigrationOptions,
    connection_fingerprints: dict[str, str],
) -> MigrationPlan:
    """``connection_fingerprints``: every connection's name -> what it looks like to Databend."""
    target_fp = connection_fingerprints.get(target)
    if target_fp is None:
        raise MigrationRefused(f"target connection {target} does not exist")
    from_fp = None
    if from_connection is not None:
        from_fp = connection_fingerprints.get(from_connection)
        if from_fp is None:
            raise MigrationRefused(f"connection {from_connection} does not exist")
    tables = select_tables(
        admin.list_external_tables(), from_fingerprint=from_fp, selectors=selectors
    )
    previous: dict[str, str] = {}
    for name, fp in sorted(connection_fingerprints.items()):
        previous.setdefault(fp, name)
    if from_connection is not None and from_fp is not None:
        previous[from_fp] = from_connection
    waves = assign_waves(
        [t.name for t in tables], canary=options.canary, wave_size=options.wave_size
    )
    return MigrationPlan(
        target=target,
        target_fingerprint=target_fp,
        tables=tables,
        waves=waves,
        previous_connections=previous,
    )


def new_migration(
    runs: RunStore, plan: MigrationPlan, options: MigrationOptions, description: str
) -> str:
    """Record the run and its plan: every table pending, before anything is switched."""
    if not plan.tables:
        raise MigrationRefused("no table matches: nothing to migrate")
    run_id = uuid.uuid4().hex
    wave_of = {t: i for i, wave in enumerate(plan.waves) for t in wave}
    runs.create(
        RunRecord(
            run_id=run_id,
            kind="migration",
            secret="",
            version_id="",
            status=RunStatus.SWITCHING,
            connection=plan.target,
            target=plan.target_fingerprint,
            started_at=time.time(),
            notes=[description],
            data={
                "wave": 0,
                "epoch": 0,
                "options": {
                    "wave_size": options.wave_size,
                    "canary": options.canary,
                    "max_error_rate": options.max_error_rate,
                    "concurrency": options.concurrency,
                    "rate": options.rate,
                },
                "previous_connections": plan.previous_connections,
            },
        )
    )
    runs.set_waves(run_id, plan.waves)
    runs.set_plan(
        run_id,
        [
            TableOutcome(
                table=t.name, rule=f"wave {wave_of[t.name]}", previous=t.storage.fingerprint
            )
            for t in plan.tables
        ],
    )
    return run_id


@dataclass(frozen=True)
class WaveVerdict:
    complete: bool
    failed: int
    total: int
    halt: bool

    @property
    def error_rate(self) -> float:
        return self.failed / self.total if self.total else 0.0


def judge_wave(outcomes: list[TableOutcome], max_error_rate: float) -> WaveVerdict:
    done = [o for o in outcomes if o.status.done]
    failed = sum(1 for o in done if o.status.failed)
    complete = len(done) == len(outcomes)
    rate = failed / len(outcomes) if outcomes else 0.0
    return WaveVerdict(
        complete=complete,
        failed=failed,
        total=len(outcomes),
        halt=complete and rate > max_error_rate + 1e-12,
    )


def estimate(done: int, total: int, started_at: float, now: float) -> tuple[float, float | None]:
    """(tables per second so far, seconds left) from the tables finished out of ``total``."""
    elapsed = max(now - started_at, 1e-6)
    rate = done / elapsed if done else 0.0
    left = total - done
    return rate, (left / rate if rate else None) if left else 0.0


def rollback_targets(
    outcomes: list[TableOutcome], previous_connections: dict[str, str]
) -> tuple[list[tuple[TableName, str, str]], list[TableName]]:
    """Tables this migration switched, with the connection to go back to (and its fingerprint);
    and those with no known connection for their previous credentials."""
    back, unknown = [], []
    for o in outcomes:
        if o.status is not TableStatus.VALIDATED or not o.previous:
            continue
        connection = previous_connections.get(o.previous)
        if connection is None:
            unknown.append(o.table)
        else:
            back.append((o.table, connection, o.previous))
    return back, unknown
