"""Bulk migrations: move many objects to one target connection in waves, a canary wave first.

A migration is a run of kind ``migration``: its objects (tables, and with ``--from`` or
``--binding`` also stages and database defaults) are planned up front (every one pending, with the
wave it belongs to), waves are released one at a time, and a wave whose error rate passes the
threshold halts the run. Finished objects are never switched again: a resumed run skips them, and
one found already on the target is only validated.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from worker.domain.bindings import Binding, NameSelector, Selector, find_binding
from worker.domain.errors import MigrationRefused, RotatorError
from worker.domain.model import (
    DatabaseDefault,
    RunKind,
    RunStatus,
    StoredObject,
    TableOutcome,
    TableStatus,
)
from worker.domain.ports import DatabendAdmin, RunRecord, RunStore
from worker.domain.sql import ObjectName, TableName, object_label
from worker.flow import objects as objects_


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
    tables: list[StoredObject]  # every object to move, whatever its kind
    waves: list[list[ObjectName]]
    previous_connections: dict[str, str]  # fingerprint -> a connection with those credentials
    refusals: tuple[str, ...] = ()  # chosen objects on storage Databend cannot switch
    target_behind: str | None = None  # why the target's key must not be moved onto (stale.py)


def binding_selectors(bindings: list[Binding], name: str) -> tuple[Selector | NameSelector, ...]:
    """``--binding NAME``: every selector of that binding (its tables, stages and databases).
    A binding that names none (it finds its objects by discovery alone) is refused: no selector
    at all would choose every object of every kind."""
    found = find_binding(bindings, name=name)
    if found is None:
        raise MigrationRefused(f"no binding named {name}")
    chosen: tuple[Selector | NameSelector, ...] = (
        *found.selectors,
        *found.stage_selectors,
        *found.database_selectors,
    )
    if not chosen:
        raise MigrationRefused(
            f"binding {name} names no tables, stages or databases (it finds its objects by "
            "discovery, which a migration does not use): choose them with --from or --tables; "
            "nothing was changed"
        )
    return chosen


def select_tables(
    tables: list[StoredObject],
    *,
    from_fingerprint: str | None = None,
    from_connection: str | None = None,
    selectors: tuple[Selector | NameSelector, ...] = (),
) -> list[StoredObject]:
    """The objects shown on the ``--from`` connection's credentials (a database default: also one
    naming that connection), or named by ``selectors`` (each matches its own kind)."""
    chosen = []
    for obj in tables:
        if from_fingerprint is not None:
            names_it = isinstance(obj, DatabaseDefault) and obj.connection == from_connection
            if obj.storage.fingerprint != from_fingerprint and not names_it:
                continue
        if selectors and not any(_matches(s, obj.name) for s in selectors):
            continue
        chosen.append(obj)
    return sorted(chosen, key=lambda t: t.name)


def _refuse_lookalikes(admin: DatabendAdmin, source: str, chosen: list[StoredObject]) -> None:
    """``--from``: an object chosen because it shows the source's key (not a database default
    naming the source) may instead use another connection's key that Databend shows the same way
    (1 in 1,024 keys in the current form): refused, nothing changed, rather than moving another
    team's objects. Another key is told by its secret, shown differently."""
    shown = {c.name: c for c in admin.list_connections()}
    mine = shown.get(source)
    if mine is None or not mine.fingerprint or not mine.secret_shown:
        return
    others = sorted(
        c.name
        for c in shown.values()
        if c.name != source
        and c.fingerprint == mine.fingerprint
        and c.secret_shown
        and c.secret_shown != mine.secret_shown
    )
    by_key = [o for o in chosen if not (isinstance(o, DatabaseDefault) and o.connection == source)]
    if others and by_key:
        raise MigrationRefused(
            f"connection {', '.join(others)} holds another key that Databend shows as "
            f"{source}'s does ({mine.shown or mine.fingerprint}): which of them the "
            f"{len(by_key)} object(s) showing it use cannot be told; choose them with --tables "
            "or --binding"
        )


def _matches(selector: Selector | NameSelector, name: ObjectName) -> bool:
    if isinstance(selector, Selector):
        return isinstance(name, TableName) and selector.matches(name)
    return selector.matches(name)


def assign_waves(
    tables: list[ObjectName], *, canary: int, wave_size: int
) -> list[list[ObjectName]]:
    """The canary wave (``canary`` objects) first, then waves of ``wave_size``."""
    waves: list[list[ObjectName]] = []
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
    selectors: tuple[Selector | NameSelector, ...],
    options: MigrationOptions,
    connection_fingerprints: dict[str, str],
    behind: Callable[[str | None], str | None] = lambda _target: None,
) -> MigrationPlan:
    """``connection_fingerprints``: every connection's name -> what it looks like to Databend.
    ``--tables`` selectors choose tables only; ``--from`` and a binding's selectors choose every
    kind. Objects on storage Databend cannot switch are listed in ``refusals``; ``behind(target's
    fingerprint)`` says why the target's credentials must not be moved onto (a key a bound secret
    was rotated away from: worker/flow/stale.py), kept in ``target_behind``."""
    target_fp = connection_fingerprints.get(target)
    if target_fp is None:
        raise MigrationRefused(f"target connection {target} does not exist")
    from_fp = None
    if from_connection is not None:
        from_fp = connection_fingerprints.get(from_connection)
        if from_fp is None:
            raise MigrationRefused(f"connection {from_connection} does not exist")
    every_kind = from_connection is not None or any(isinstance(s, NameSelector) for s in selectors)
    listed: list[StoredObject] = (
        objects_.list_all(admin) if every_kind else list(admin.list_external_tables())
    )
    tables = select_tables(
        listed, from_fingerprint=from_fp, from_connection=from_connection, selectors=selectors
    )
    if from_connection is not None:
        _refuse_lookalikes(admin, from_connection, tables)
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
        refusals=tuple(
            f"{object_label(t.name)} ({t.storage.kind})" for t in tables if not t.storage.switchable
        ),
        target_behind=behind(target_fp),
    )


def new_migration(
    runs: RunStore, plan: MigrationPlan, options: MigrationOptions, description: str
) -> str:
    """Record the run and its plan: every object pending, before anything is switched."""
    if not plan.tables:
        raise MigrationRefused("no object matches: nothing to migrate")
    refuse_unswitchable(plan)
    run_id = uuid.uuid4().hex
    wave_of = {t: i for i, wave in enumerate(plan.waves) for t in wave}
    runs.create(
        RunRecord(
            run_id=run_id,
            kind=RunKind.MIGRATION,
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


def refuse_unswitchable(plan: MigrationPlan) -> None:
    """A plan that must not run: objects Databend cannot switch, or a target whose key its bound
    secret has been rotated away from (the objects would land on a key due to be retired)."""
    if plan.refusals:
        raise MigrationRefused(
            f"{len(plan.refusals)} object(s) are on storage Databend cannot switch to other "
            f"credentials (only s3, gcs and azblob): {'; '.join(plan.refusals[:10])}; "
            "nothing was changed"
        )
    if plan.target_behind:
        raise MigrationRefused(
            f"target connection {plan.target}: {plan.target_behind}; nothing was changed"
        )


def preflight(admin: DatabendAdmin, plan: MigrationPlan) -> None:
    """Before the run is recorded: the target must list every bucket its objects live in (a
    throwaway stage on an empty prefix; no object is touched), else a refusal."""
    for bucket in sorted({t.storage.bucket for t in plan.tables if t.storage.bucket}):
        try:
            admin.probe_connection(plan.target, bucket)
        except RotatorError as exc:
            raise MigrationRefused(
                f"connection {plan.target} cannot reach bucket {bucket}: {exc}"
            ) from None


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


class WaveDecision(StrEnum):
    HALTED = "halted"  # too many failures: the run stops, the rest untouched
    NEXT_WAVE = "next_wave"  # the next wave is current now: release it
    LAST_WAVE = "last_wave"  # nothing after it (the run closes with its last outcome)
    RUN_CHANGED = "run_changed"  # paused, resumed, rolled back or ended meanwhile: not acted on


def conclude_wave(runs: RunStore, run: RunRecord, wave: int, verdict: WaveVerdict) -> WaveDecision:
    """Act on a complete wave's verdict, given the run as it was read before the verdict was
    taken. The write happens only if the run is still that run — switching, its data (wave,
    epoch) unchanged — checked and written in one step: a verdict on an older view (the run was
    paused and resumed, rolled back or aborted meanwhile) is not acted on; a resumed run judges
    the wave again in its new epoch."""
    expected = {"status": RunStatus.SWITCHING, "data": run.data}
    if verdict.halt:
        limit = float(run.data["options"]["max_error_rate"])
        error = (
            f"wave {wave}: {verdict.failed} of {verdict.total} tables failed "
            f"({verdict.error_rate:.0%}), over the limit of {limit:.0%}; "
            "the rest was not touched"
        )
        halted = runs.update_if(run.run_id, expected, status=RunStatus.HALTED, error=error)
        return WaveDecision.HALTED if halted else WaveDecision.RUN_CHANGED
    if wave + 1 >= runs.wave_count(run.run_id):
        return WaveDecision.LAST_WAVE
    moved = runs.update_if(run.run_id, expected, data={**run.data, "wave": wave + 1})
    return WaveDecision.NEXT_WAVE if moved else WaveDecision.RUN_CHANGED


def estimate(done: int, total: int, started_at: float, now: float) -> tuple[float, float | None]:
    """(objects per second so far, seconds left) from those finished out of ``total``."""
    elapsed = max(now - started_at, 1e-6)
    rate = done / elapsed if done else 0.0
    left = total - done
    return rate, (left / rate if rate else None) if left else 0.0


def switched_unrecorded(
    admin: DatabendAdmin, outcomes: list[TableOutcome], target: str
) -> list[TableOutcome]:
    """The outcomes, each object still pending whose attempt was written ahead (a worker died
    between its change and its outcome) and that now shows the run's target though the plan saw
    it elsewhere replaced by a VALIDATED copy: the migration switched it, so a rollback moves it
    back too. One listing of the objects, not one lookup each."""
    unsure = {
        o.table
        for o in outcomes
        if not o.status.done
        and o.attempts >= 1
        and o.previous
        and not objects_.may_show(o.previous, target)
    }
    if not unsure:
        return outcomes
    shown = {o.name: o.storage.fingerprint for o in objects_.list_all(admin) if o.name in unsure}
    return [
        dataclasses.replace(o, status=TableStatus.VALIDATED)
        if o.table in shown and objects_.may_show(shown[o.table], target)
        else o
        for o in outcomes
    ]


def rollback_targets(
    outcomes: list[TableOutcome], previous_connections: dict[str, str]
) -> tuple[list[tuple[ObjectName, str, str]], list[ObjectName]]:
    """Objects this migration switched, with the connection to go back to (and its fingerprint);
    and those with no known connection for their previous credentials."""
    back: list[tuple[ObjectName, str, str]] = []
    unknown: list[ObjectName] = []
    for o in outcomes:
        if o.status is not TableStatus.VALIDATED or not o.previous:
            continue
        connection = previous_connections.get(o.previous)
        if connection is None:
            unknown.append(o.table)
        else:
            back.append((o.table, connection, o.previous))
    return back, unknown


def finished_in_wave(runs: RunStore, run_id: str, table: ObjectName, wave: int, epoch: int) -> bool:
    """For a table whose task found nothing to do: if the table is finished, count it in the
    wave's current epoch (idempotent) and say whether that completes the wave."""
    outcome = runs.outcome(run_id, table)
    if outcome is None or not outcome.status.done:
        return False
    return runs.wave_finished(run_id, wave, table, epoch) >= runs.wave_size(run_id, wave)
