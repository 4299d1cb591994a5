"""Small in-memory fakes of the core's own ports (never of Databend, Redis, Celery or AWS)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from worker.adapters.redis_state import ENTRANT_SEP
from worker.domain.errors import (
    DatabendQueryError,
    RunNotFound,
    SlotTimeout,
    UnknownSecretError,
)
from worker.domain.masking import MaskForm, mask
from worker.domain.model import (
    AccessKeyCredentials,
    ConnectionInfo,
    Credentials,
    DatabaseDefault,
    ExternalStage,
    ExternalTable,
    RunStatus,
    StorageParam,
    TableOutcome,
    parse_location,
)
from worker.domain.ports import Admission, RunRecord, SecretInfo, VersionInfo
from worker.domain.sql import DatabaseName, ObjectName, StageName, TableName


def fake_key(suffix: str) -> str:
    """A 20-character access key id ending in ``suffix`` (tests name keys by their tail)."""
    return suffix if len(suffix) >= 16 else "AKIA" + "FAKE" * 3 + suffix[-4:].rjust(4, "0")


@dataclass
class FakeAdmin:
    """Databend as the core sees it: tables show their key masked in ``form`` (legacy ******XYZ or
    current AK***YZ); ``keys`` is the truth behind the mask."""

    tables: dict[TableName, StorageParam] = field(default_factory=dict)
    connections: dict[str, Credentials] = field(default_factory=dict)
    statements: list[str] = field(default_factory=list)
    keys: dict[TableName, str] = field(default_factory=dict)
    form: MaskForm = MaskForm.LEGACY
    # per-table scripted failures: a list of exceptions raised by successive switch/read calls
    switch_failures: dict[TableName, list[Exception]] = field(default_factory=dict)
    read_failures: dict[TableName, list[Exception]] = field(default_factory=dict)
    probe_failures: dict[str, Exception] = field(default_factory=dict)  # bucket -> error
    connection_probe_failures: dict[str, Exception] = field(default_factory=dict)  # by connection
    # stages: what each shows, its URL and the key behind the mask (as for tables)
    stages: dict[StageName, StorageParam] = field(default_factory=dict)
    stage_urls: dict[StageName, str] = field(default_factory=dict)
    stage_keys: dict[StageName, str] = field(default_factory=dict)
    list_failures: dict[StageName, list[Exception]] = field(default_factory=dict)
    # database defaults: database -> (the connection it names, its DEFAULT_STORAGE_PATH)
    databases: dict[DatabaseName, tuple[str, str]] = field(default_factory=dict)

    def add_stage(
        self,
        name: str,
        key: str,
        bucket: str = "lake",
        kind: str = "s3",
        secret: str | None = None,  # its secret key, shown masked as Databend shows it
    ) -> StageName:
        stage = StageName(name)
        self.stage_keys[stage] = fake_key(key)
        self.stage_urls[stage] = f"{kind}://{bucket}/{name}/"
        self.stages[stage] = StorageParam(
            kind=kind,
            bucket=bucket,
            root=f"/{name}/",
            ak=mask(self.stage_keys[stage], self.form),
            secret_shown=mask(secret, self.form) if secret else None,
        )
        return stage

    def add_database(self, name: str, connection: str, bucket: str = "lake") -> DatabaseName:
        database = DatabaseName(name)
        self.databases[database] = (connection, f"s3://{bucket}/{name}/")
        return database

    def key_of_object(self, name: ObjectName) -> str | None:
        """The key an object really uses (a database: its connection's)."""
        if isinstance(name, TableName):
            return self.keys.get(name)
        if isinstance(name, StageName):
            return self.stage_keys.get(name)
        c = self.connections.get(self.databases[name][0])
        return c.access_key_id if isinstance(c, AccessKeyCredentials) else None

    def add(self, name: TableName, key: str, bucket: str = "lake") -> None:
        self.keys[name] = fake_key(key)
        self.tables[name] = StorageParam(
            kind="s3", bucket=bucket, root=f"/{name.table}/", ak=mask(self.keys[name], self.form)
        )

    def key_of(self, name: TableName) -> str:
        return self.keys[name]

    def connection_fingerprint(self, name: str) -> str | None:
        c = self.connections.get(name)
        if c is None:
            return None
        if isinstance(c, AccessKeyCredentials):
            return f"ak:{mask(c.access_key_id, self.form)}"
        return c.fingerprint

    def create_connection(self, name: str, credentials: Credentials) -> bool:
        self.statements.append(f"CREATE CONNECTION {name}")
        if name in self.connections:
            return False
        self.connections[name] = credentials
        return True

    def list_external_tables(
        self,
        databases: frozenset[str] | None = None,
        tables: frozenset[TableName] | None = None,
    ) -> list[ExternalTable]:
        return [
            ExternalTable(n, p)
            for n, p in self.tables.items()
            if p.kind
            and (databases is None or n.database in databases)
            and (tables is None or n in tables)
        ]

    def describe_table(self, table: TableName) -> ExternalTable | None:
        p = self.tables.get(table)
        return None if p is None else ExternalTable(table, p)

    def switch_table(self, table: TableName, connection: str) -> None:
        self.statements.append(f"ALTER {table}")
        _maybe_raise(self.switch_failures, table)
        credentials = self.connections[connection]
        assert isinstance(credentials, AccessKeyCredentials)
        self.keys[table] = credentials.access_key_id
        self.tables[table] = dataclasses.replace(
            self.tables[table], ak=mask(credentials.access_key_id, self.form)
        )

    def probe_connection(self, connection: str, bucket: str) -> None:
        self.statements.append(f"PROBE {connection} {bucket}")
        if bucket in self.probe_failures:
            raise self.probe_failures[bucket]
        if connection in self.connection_probe_failures:
            raise self.connection_probe_failures[connection]

    def read_back(self, table: TableName) -> int:
        self.statements.append(f"READ {table}")
        _maybe_raise(self.read_failures, table)
        return 1

    # --- stages ----------------------------------------------------------------------------------

    def list_stages(self) -> list[ExternalStage]:
        return [ExternalStage(n, p, self.stage_urls[n]) for n, p in self.stages.items()]

    def describe_stage(self, stage: StageName) -> ExternalStage | None:
        p = self.stages.get(stage)
        return None if p is None else ExternalStage(stage, p, self.stage_urls[stage])

    def switch_stage(self, stage: ExternalStage, connection: str) -> None:
        self.statements.append(f"ALTER STAGE {stage.name} URL={stage.url}")
        _maybe_raise(self.switch_failures, stage.name)  # type: ignore[arg-type]
        credentials = self.connections[connection]
        assert isinstance(credentials, AccessKeyCredentials)
        self.stage_keys[stage.name] = credentials.access_key_id
        self.stages[stage.name] = dataclasses.replace(
            self.stages[stage.name], ak=mask(credentials.access_key_id, self.form)
        )

    def list_stage(self, stage: StageName) -> int:
        self.statements.append(f"LIST {stage}")
        _maybe_raise(self.list_failures, stage)  # type: ignore[arg-type]
        return 1

    # --- database defaults -----------------------------------------------------------------------

    def list_database_defaults(self) -> list[DatabaseDefault]:
        return [self._default(d) for d in self.databases]

    def describe_database(self, database: DatabaseName) -> DatabaseDefault | None:
        return self._default(database) if database in self.databases else None

    def _default(self, database: DatabaseName) -> DatabaseDefault:
        connection, path = self.databases[database]
        kind, bucket, root = parse_location(path)
        c = self.connections.get(connection)
        ak = mask(c.access_key_id, self.form) if isinstance(c, AccessKeyCredentials) else None
        storage = StorageParam(kind=kind, bucket=bucket, root=root, ak=ak)
        return DatabaseDefault(database, connection, path, storage, connection_exists=c is not None)

    def switch_database(self, database: DatabaseDefault, connection: str) -> None:
        self.statements.append(f"ALTER DATABASE {database.name} CONNECTION {connection}")
        if connection not in self.connections:
            raise DatabendQueryError(1006, f"Connection '{connection}' does not exist")
        self.databases[database.name] = (connection, database.path)

    # --- connections -----------------------------------------------------------------------------

    def list_connections(self) -> list[ConnectionInfo]:
        return [
            ConnectionInfo(
                name,
                "s3",
                self.connection_fingerprint(name),
                None,
                secret_shown=mask(c.secret_access_key, self.form)
                if isinstance(c := self.connections[name], AccessKeyCredentials)
                else None,
            )
            for name in sorted(self.connections)
        ]

    def drop_connection(self, name: str) -> None:
        self.statements.append(f"DROP CONNECTION {name}")
        self.connections.pop(name, None)


def _maybe_raise(failures: dict[TableName, list[Exception]], table: TableName) -> None:
    queue = failures.get(table)
    if queue:
        raise queue.pop(0)


@dataclass
class FakeSecrets:
    name: str = "databend/lake"
    arn: str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/lake-AbCdEf"
    values: dict[str, str] = field(default_factory=dict)
    stages: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def describe(self, secret_id: str) -> SecretInfo:
        if secret_id not in (self.name, self.arn):
            raise UnknownSecretError(f"secret {secret_id} not found")
        return SecretInfo(
            self.arn,
            self.name,
            {
                v: VersionInfo(v, self.stages.get(v, ()), float(i))
                for i, v in enumerate(self.values)
            },
        )

    def read_version(self, arn: str, version_id: str) -> str | None:
        return self.values[version_id]


@dataclass
class MemoryRuns:
    runs: dict[str, RunRecord] = field(default_factory=dict)
    tables: dict[str, dict[TableName, TableOutcome]] = field(default_factory=dict)
    pending_: dict[str, set[TableName]] = field(default_factory=dict)
    retiring_: set[str] = field(default_factory=set)
    waves_: dict[str, list[list[TableName]]] = field(default_factory=dict)
    wave_done_: dict[tuple[str, int, int], set[TableName]] = field(default_factory=dict)
    on_update: Callable[[str, dict[str, object]], None] | None = None
    clock: Callable[[], float] = time.time

    def create(self, run: RunRecord, *, alone: bool = False) -> str | None:
        blocking = self.unfinished_run(run.kind, run.secret, run.version_id) if alone else None
        if blocking is not None:
            return blocking.run_id
        run.created_at = run.created_at or self.clock()
        run.updated_at = self.clock()
        self.runs[run.run_id] = run
        return None

    def unfinished(self) -> list[str]:
        return sorted(r for r, run in self.runs.items() if not RunStatus(run.status).final)

    def redispatch(self, run_id: str) -> int:
        self.runs[run_id].dispatch += 1
        return self.runs[run_id].dispatch

    def migrating(self, names: list[TableName]) -> set[TableName]:
        plans = [
            self.tables.get(r, {})
            for r, run in self.runs.items()
            if run.kind == "migration" and not RunStatus(run.status).final
        ]
        return {n for n in names if any(n in plan for plan in plans)}

    def forget_unfinished(self, run_id: str) -> None:
        pass

    def latest_run(self, kind: str, secret: str, version_id: str = "") -> RunRecord | None:
        matching = [
            r
            for r in self.runs.values()
            if r.kind == kind
            and r.secret == secret
            and (kind != "rotation" or r.version_id == version_id)
        ]
        return max(matching, key=lambda r: r.created_at, default=None)

    def unfinished_run(self, kind: str, secret: str, version_id: str = "") -> RunRecord | None:
        matching = [
            r
            for r in self.runs.values()
            if r.kind == kind
            and r.secret == secret
            and (kind != "rotation" or r.version_id == version_id)
        ]
        newest = max(matching, key=lambda r: r.created_at, default=None)
        return None if newest is None or RunStatus(newest.status).final else newest

    def get(self, run_id: str) -> RunRecord:
        if run_id not in self.runs:
            raise RunNotFound(run_id)
        return dataclasses.replace(self.runs[run_id])

    def update(self, run_id: str, **fields: object) -> None:
        fields.setdefault("updated_at", self.clock())
        if self.on_update:
            self.on_update(run_id, fields)
        self.runs[run_id] = dataclasses.replace(self.runs[run_id], **fields)  # type: ignore[arg-type]

    def update_unless_final(self, run_id: str, **fields: object) -> bool:
        if RunStatus(MemoryRuns.get(self, run_id).status).final:
            return False
        MemoryRuns.update(self, run_id, **fields)
        return True

    def update_if(self, run_id: str, expected: dict[str, Any], **fields: object) -> bool:
        run = MemoryRuns.get(self, run_id)
        if any(getattr(run, name) != value for name, value in expected.items()):
            return False
        MemoryRuns.update(self, run_id, **fields)
        return True

    def set_plan(self, run_id: str, outcomes: list[TableOutcome]) -> None:
        self.tables[run_id] = {o.table: o for o in outcomes}
        self.pending_[run_id] = {o.table for o in outcomes if not o.status.done}

    def outcome(self, run_id: str, table: TableName) -> TableOutcome | None:
        return self.tables.get(run_id, {}).get(table)

    def begin_attempt(self, run_id: str, table: TableName) -> TableOutcome | None:
        outcome = self.tables.get(run_id, {}).get(table)
        if outcome is None or outcome.status.done:
            return outcome
        outcome = dataclasses.replace(outcome, attempts=outcome.attempts + 1)
        self.tables[run_id][table] = outcome
        return dataclasses.replace(outcome)

    def begin_attempts(self, run_id: str, tables: list[TableName]) -> list[TableOutcome | None]:
        return [self.begin_attempt(run_id, table) for table in tables]

    def record_outcomes(
        self, run_id: str, outcomes: list[TableOutcome], wave: tuple[int, int] | None = None
    ) -> tuple[int, int, int]:
        remaining, finished, size = 0, 0, 0
        for outcome in outcomes:
            remaining = self.record_outcome(run_id, outcome)
            if wave is not None:
                finished = self.wave_finished(run_id, wave[0], outcome.table, wave[1])
                size = self.wave_size(run_id, wave[0])
        return remaining, finished, size

    def record_wave_outcome(
        self, run_id: str, outcome: TableOutcome, wave: int, epoch: int
    ) -> tuple[int, int, int]:
        remaining = self.record_outcome(run_id, outcome)
        return (
            remaining,
            self.wave_finished(run_id, wave, outcome.table, epoch),
            self.wave_size(run_id, wave),
        )

    def outcomes(self, run_id: str) -> list[TableOutcome]:
        return sorted(self.tables.get(run_id, {}).values(), key=lambda o: o.table)

    def outcomes_for(self, run_id: str, tables: list[ObjectName]) -> list[TableOutcome]:
        have = self.tables.get(run_id, {})
        return [have[t] for t in tables if t in have]

    def status_counts(self, run_id: str) -> Counter[str] | None:
        return +Counter(str(o.status) for o in self.tables.get(run_id, {}).values())

    def record_outcome(self, run_id: str, outcome: TableOutcome) -> int:
        self.tables[run_id][outcome.table] = outcome
        if run_id in self.runs:
            self.runs[run_id].updated_at = self.clock()
        if outcome.status.done:
            self.pending_[run_id].discard(outcome.table)
        return len(self.pending_[run_id])

    def pending(self, run_id: str) -> list[TableName]:
        return sorted(self.pending_.get(run_id, set()))

    def set_waves(self, run_id: str, waves: list[list[TableName]]) -> None:
        self.waves_[run_id] = [list(w) for w in waves]

    def wave(self, run_id: str, index: int) -> list[TableName]:
        waves = self.waves_.get(run_id, [])
        return list(waves[index]) if index < len(waves) else []

    def wave_size(self, run_id: str, index: int) -> int:
        return len(self.wave(run_id, index))

    def wave_count(self, run_id: str) -> int:
        return len(self.waves_.get(run_id, []))

    def wave_finished(self, run_id: str, index: int, table: TableName, epoch: int) -> int:
        done = self.wave_done_.setdefault((run_id, index, epoch), set())
        done.add(table)
        return len(done)

    def mark_retiring(self, run_id: str) -> None:
        self.retiring_.add(run_id)

    def unmark_retiring(self, run_id: str) -> None:
        self.retiring_.discard(run_id)

    def retiring(self) -> list[str]:
        return sorted(self.retiring_)

    def record_pending(self, run_id: str, outcome: TableOutcome) -> None:
        self.tables[run_id][outcome.table] = outcome
        self.pending_[run_id].add(outcome.table)


@dataclass
class ChangedAfterRead(MemoryRuns):
    """MemoryRuns where, once ``then(**fields)`` is armed, the next ``get`` returns the run as
    it was and then applies ``fields``: another process's write landing right after the caller
    read the run (step-by-step races)."""

    armed: dict[str, object] | None = None

    def then(self, **fields: object) -> None:
        self.armed = fields

    def get(self, run_id: str) -> RunRecord:
        run = super().get(run_id)
        if self.armed is not None:
            fields, self.armed = self.armed, None
            self.update(run_id, **fields)
        return run


@dataclass
class MemoryIntakeState:
    claims: dict[tuple[str, str], list[object]] = field(default_factory=dict)
    newest_: dict[str, object] = field(default_factory=dict)

    def claim(self, secret_arn: str, version_id: str, run_id: str):  # type: ignore[no-untyped-def]
        from worker.domain.ports import Claim

        entry = self.claims.setdefault((secret_arn, version_id), [run_id, False])
        # in one process nothing is in flight elsewhere: an unenqueued claim is a crashed one
        return Claim(run_id=str(entry[0]), enqueued=bool(entry[1]), mine=not entry[1])

    def mark_enqueued(self, secret_arn: str, version_id: str) -> None:
        self.claims[(secret_arn, version_id)][1] = True

    def newest(self, secret_arn: str):  # type: ignore[no-untyped-def]
        return self.newest_.get(secret_arn)

    def advance_newest(self, secret_arn: str, version, *, moved_back: bool = False) -> None:  # type: ignore[no-untyped-def]
        current = self.newest_.get(secret_arn)
        if moved_back or current is None or current.created_at <= version.created_at:  # type: ignore[attr-defined]
            self.newest_[secret_arn] = version


@dataclass
class MemoryLocks:
    owners: dict[str, str] = field(default_factory=dict)

    def acquire(self, secret_arn: str, owner: str) -> bool:
        return self.owners.setdefault(secret_arn, owner) == owner

    def renew(self, secret_arn: str, owner: str) -> bool:
        return self.owners.get(secret_arn) == owner

    def release(self, secret_arn: str, owner: str) -> None:
        if self.owners.get(secret_arn) == owner:
            del self.owners[secret_arn]


@dataclass
class MemoryLimits:
    """A run's shared concurrency slots (no waiting: none free raises SlotTimeout at once) and
    its rate (recorded, never slept on)."""

    held: dict[str, int] = field(default_factory=dict)
    paced: list[tuple[str, float | None]] = field(default_factory=list)

    @contextlib.contextmanager
    def slot(
        self, run_id: str, limit: int, *, wait: float = 60, poll: float = 0.02
    ) -> Iterator[None]:
        if self.held.get(run_id, 0) >= limit:
            raise SlotTimeout(f"no free slot for run {run_id} within {wait:.0f}s")
        self.held[run_id] = self.held.get(run_id, 0) + 1
        try:
            yield
        finally:
            self.held[run_id] -= 1

    def pace(self, run_id: str, per_second: float | None) -> None:
        self.paced.append((run_id, per_second))

    def busy_slots(self, run_id: str) -> int:
        return self.held.get(run_id, 0)

    def flush(self) -> None:
        self.held.clear()


@dataclass
class FakeIam:
    keys: dict[str, list[list[object]]] = field(default_factory=dict)  # user -> [id, active, t]
    crash_after_create: bool = False
    counter: int = 0

    def owner_of(self, access_key_id: str) -> str:
        for user, keys in self.keys.items():
            if any(k[0] == access_key_id for k in keys):
                return user
        raise UnknownSecretError("NoSuchEntity: IAM does not know who owns the key")

    def list_keys(self, user: str):  # type: ignore[no-untyped-def]
        from worker.domain.ports import AccessKey

        return [
            AccessKey(str(k[0]), bool(k[1]), float(k[2]))  # type: ignore[arg-type]
            for k in self.keys.get(user, [])
        ]

    def create_key(self, user: str) -> tuple[str, str]:
        self.counter += 1
        key_id = f"AKIAFAKEFAKEFAKE{self.counter:04d}"
        self.keys.setdefault(user, []).append([key_id, True, 100.0 + self.counter])
        return key_id, "s" * 40

    def set_active(self, user: str, key_id: str, active: bool) -> None:
        for k in self.keys[user]:
            if k[0] == key_id:
                k[1] = active

    def delete_key(self, user: str, key_id: str) -> None:
        self.keys[user] = [k for k in self.keys[user] if k[0] != key_id]


@dataclass
class FakeWriter:
    secrets: FakeSecrets

    def put_pending(self, arn: str, version_id: str, value: str) -> None:
        self.secrets.values.setdefault(version_id, value)
        self.secrets.stages[version_id] = ("AWSPENDING",)

    def make_current(self, arn: str, version_id: str) -> None:
        for v, stages in list(self.secrets.stages.items()):
            if "AWSCURRENT" in stages and v != version_id:
                self.secrets.stages[v] = ("AWSPREVIOUS",)
        self.secrets.stages[version_id] = ("AWSCURRENT",)

    def drop_pending(self, arn: str, version_id: str) -> None:
        self.secrets.stages[version_id] = tuple(
            s for s in self.secrets.stages.get(version_id, ()) if s != "AWSPENDING"
        )


@dataclass
class MemoryFences:
    """Fences over a MemoryRuns: the same rules as worker.adapters.redis_state.RedisFences.

    One in-flight entry per item and entrant (``entrant()``: the calling thread; the chaos world
    names its simulated worker), as "<item>\\x1f<entrant>": an entrant leaves only its own."""

    runs: MemoryRuns
    clock: Callable[[], float] = lambda: 0.0
    newest: dict[str, tuple[int, str]] = field(default_factory=dict)
    flying: dict[str, dict[str, float]] = field(default_factory=dict)  # run -> entry -> lease end
    epoch: int = 0  # the labels epoch
    moving_until: float = float("-inf")  # admissions carrying an epoch are held until then
    under: dict[str, dict[str, int]] = field(default_factory=dict)  # run -> entry -> its epoch

    def entrant(self) -> str:
        return str(threading.get_ident())

    def _entry(self, item: str) -> str:
        return f"{item}{ENTRANT_SEP}{self.entrant()}"

    def issue(self, secret_arn: str, run_id: str) -> tuple[int, str | None]:
        token, previous = self.newest.get(secret_arn, (0, None))
        self.newest[secret_arn] = (token + 1, run_id)
        return token + 1, previous

    def enter(
        self,
        run_id: str,
        item: str,
        *,
        secret_arn: str | None = None,
        token: int = 0,
        lease_seconds: float = 600,
        require_active: bool = True,
        exclusive: bool = False,
        labels_epoch: int | None = None,
        dispatch: int = 0,
        apart: bool = False,
    ) -> Admission:
        run = self.runs.runs.get(run_id)
        if run is None:
            return Admission.ENDED
        status = RunStatus(run.status)
        if require_active and status is RunStatus.PAUSED:
            return Admission.PAUSED
        if require_active and not status.active:
            return Admission.ENDED
        if secret_arn and token and self.newest.get(secret_arn, (0, ""))[0] != token:
            return Admission.SUPERSEDED
        if dispatch and run.dispatch != dispatch:
            return Admission.REDISPATCHED
        if exclusive and item in self.in_flight(run_id):
            return Admission.BUSY
        if apart and any(i == item and e != self._entry(item) for i, e in self._live(run_id)):
            return Admission.BUSY
        moving = self.clock() < self.moving_until
        if labels_epoch is not None and (labels_epoch != self.epoch or moving):
            return Admission.STALE
        entry = self._entry(item)
        self.flying.setdefault(run_id, {})[entry] = self.clock() + lease_seconds
        if labels_epoch is None:
            self.under.get(run_id, {}).pop(entry, None)
        else:
            self.under.setdefault(run_id, {})[entry] = labels_epoch
        return Admission.ADMITTED

    def leave(self, run_id: str, *items: str) -> None:
        for item in items:
            self.flying.get(run_id, {}).pop(self._entry(item), None)
            self.under.get(run_id, {}).pop(self._entry(item), None)

    def in_flight(self, run_id: str) -> list[str]:
        return sorted({item for item, _entry in self._live(run_id)})

    def _live(self, run_id: str) -> list[tuple[str, str]]:
        """(item, entry) of the entries whose lease runs."""
        now = self.clock()
        return [
            (entry.partition(ENTRANT_SEP)[0], entry)
            for entry, until in self.flying.get(run_id, {}).items()
            if until > now
        ]

    def is_newest(self, secret_arn: str, token: int) -> bool:
        return self.newest.get(secret_arn, (0, ""))[0] == token

    def labels_epoch(self) -> int:
        return self.epoch

    def labels_moving(self, seconds: float) -> None:
        self.moving_until = self.clock() + seconds

    def labels_moved(self) -> int:
        self.epoch += 1
        self.moving_until = float("-inf")
        return self.epoch

    def in_flight_before(self, epoch: int) -> list[str]:
        return sorted(
            {
                f"{run_id}:{item}"
                for run_id, under in self.under.items()
                for item, entry in self._live(run_id)
                if under.get(entry, epoch) != epoch
            }
        )
