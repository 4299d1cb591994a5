"""The chaos suite's world: the fakes of tests/fakes.py made to behave — and fail — like the real
systems wherever the safety promise depends on it (see ../shared/DOMAIN.md).

What the plain fakes leave out and this world models:

- **IAM keys are real objects**: created (two per user at most), deactivated, deleted. A key that
  is inactive or deleted opens nothing in S3 (real AWS; moto would still accept an inactive key).
- **Tables hold a real key**: ``ChaosAdmin.true_keys`` has the full access key id each table uses;
  Databend only *shows* a masked form of it in storage_param (rendered by the function the world
  is given, see ``render_storage`` in tests/chaos.py), or nothing parseable for a "blind" row.
- **So do stages and database defaults**: a stage holds its own copy of a key (``true_keys``
  too); ``ALTER STAGE … CONNECTION`` never touches storage (it works whatever either key's state),
  and ``list_stage`` lists with the stage's key (3002 when it no longer works). A database default
  names a connection (``databases``): its key is that connection's, ``ALTER DATABASE`` needs only
  the new connection to exist, and a dropped connection leaves it naming nothing.
- **ALTER TABLE … CONNECTION needs both keys**: the new key is validated (3901 when it does not
  work) and the new snapshot is written with the old one (3002 when that one does not work).
  ``read_back`` reads data, so a table whose key no longer works fails it with 3002 (403).
- **Transient faults**: every Databend / S3 / IAM call fails with a ``worker.domain.errors``
  RetryableError with probability ``Faults.rate`` — before its effect, or, for a change, after it
  (the change is made, the answer is lost: an ALTER that committed, a key that was created).
- **Crashes**: ``WorkerCrash`` (a kill -9) can hit any step boundary: after a change to Databend,
  IAM, the secret, the run store, the intake state, the fences or the lock, and at the core's own
  checkpoints. A dead worker does nothing more: its ``finally`` blocks still run in Python, but
  every port call they make raises ``WorkerCrash`` again without effect, so a batch that dies
  between two objects leaves its switched outcomes unwritten and its changes in flight.
- **Workers**: every task runs in a worker process of its own (``Faults.worker``); a change in
  flight names its worker, and stops counting as in flight ALIVE_TTL after that worker died (the
  heartbeat of worker/adapters/redis_state.py), or when its lease runs out.
- **Redis**: the run store, the secret locks, the fences and the intake state live in one Redis
  and can be flushed together; locks expire after their TTL on the world's clock. A batch's
  ``begin_attempts`` and ``record_outcomes`` are one Lua call each: they happen entirely or not at
  all, and are one step boundary each.
- **Concurrency**: before any port call, another worker's queued task may run to completion
  (``Faults.interleave``), the way two Celery workers' steps fall between each other's calls.

Nothing here calls the core. The world tells an observer (tests/chaos_invariants.py) what happened
— a table switched, a key about to be retired, a run written — and nothing else.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from tests.fakes import (
    FakeAdmin,
    FakeIam,
    FakeSecrets,
    FakeWriter,
    MemoryFences,
    MemoryIntakeState,
    MemoryLocks,
    MemoryRuns,
)
from worker.domain.errors import (
    AwsPermanentError,
    AwsTransientError,
    ConcurrentTableChange,
    DatabendQueryError,
    DatabendUnavailable,
    RotatorError,
    SlotTimeout,
    StoragePermissionDenied,
    StorageUnavailable,
    UnknownSecretError,
)
from worker.domain.model import AccessKeyCredentials, DatabaseDefault, ExternalStage
from worker.domain.ports import Admission
from worker.domain.sql import DatabaseName, ObjectName, StageName, TableName

LOCK_TTL = 600.0  # ROTATOR_LOCK_TTL's default
ALIVE_TTL = 15.0  # redis_state.ALIVE_TTL_MS: a dead worker's changes stop counting this long after
SLOT_LEASE = (
    30.0  # limits.RedisLimits' lease: a dead worker's concurrency slot frees this long after
)
KEYS_PER_USER = 2  # IAM's quota
_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # what AWS key ids are made of


class WorkerCrash(BaseException):
    """A worker dies at a step boundary (kill -9). A BaseException: nothing in the core catches it,
    as nothing catches a SIGKILL."""


class Observer(Protocol):
    """What the world reports to the invariant checker."""

    def on_switch(self, table: ObjectName, old_key: str, new_key: str, connection: str) -> None: ...

    def on_retire(self, key_id: str, action: str) -> None: ...

    def on_run_written(self, run_id: str, fields: dict[str, Any]) -> None: ...


class Clock:
    """The scenario's clock, in seconds; the engine moves it, everything reads it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


_TRANSIENT: dict[str, Callable[[str], RotatorError]] = {
    "databend": lambda op: DatabendUnavailable(f"[1043] connection reset during {op} (injected)"),
    "s3": lambda op: StorageUnavailable(f"[3901] 503 SlowDown during {op} (injected)"),
    "iam": lambda op: AwsTransientError(f"Throttling: rate exceeded during {op} (injected)"),
}


@dataclass
class Faults:
    """Where the world fails. Inert unless ``armed`` (the engine arms it while a task or an
    operator command runs, so its own inspections never fail or crash anything).

    ``rate``: chance that a Databend / S3 / IAM call fails transiently. ``crash_rate``: chance that
    a worker dies at a step boundary, at most ``max_crashes`` times; ``crash_at``: die exactly at
    the n-th boundary instead (to sweep every boundary). ``interleave_rate``: chance that, before
    a port call, ``interleave()`` runs another worker's task first. Tests' hooks, armed or not:
    ``on_call(operation)`` before every port call, ``probe(operation, details)`` after every
    change (it may raise ``WorkerCrash``, or call ``die``).

    ``worker`` names the worker process whose task runs now; ``die`` kills it: from then on, until
    ``revive``, every port call raises ``WorkerCrash`` without effect (the dead worker's ``finally``
    blocks change nothing), and ``dead`` remembers when it died.
    """

    rng: random.Random
    rate: float = 0.0
    crash_rate: float = 0.0
    max_crashes: int = 3
    crash_at: int | None = None
    interleave_rate: float = 0.0
    interleave: Callable[[], None] | None = None
    # its own stream (the schedules drawn from ``rng`` stay as they were when it is unused): the
    # chance of another worker's task between an ALTER's check of the keys and its commit
    commit_rng: random.Random | None = None
    on_call: Callable[[str], None] | None = None
    probe: Callable[[str, Any], None] | None = None
    log: Callable[[str], None] = lambda _line: None
    armed: bool = False
    calls: Counter[str] = field(default_factory=Counter)  # Databend / S3 / IAM calls, armed
    injected: Counter[str] = field(default_factory=Counter)  # of which failed on purpose
    crashes: int = 0
    boundaries: int = 0
    clock: Callable[[], float] = lambda: 0.0
    worker: str = "w0"
    dying: bool = False
    dead: dict[str, float] = field(default_factory=dict)  # worker -> when it died

    def call(self, system: str, op: str, *, change: bool = False) -> bool:
        """Before a port call. Raises a transient error, or returns True when the call should
        take effect and then lose its answer (only for a change)."""
        self.alive(op)
        if self.on_call is not None:
            self.on_call(op)
        if not self.armed:
            return False
        if self.interleave and self.interleave_rate and self.rng.random() < self.interleave_rate:
            self.interleave()
        if not system:
            return False
        self.calls[system] += 1
        if self.rng.random() >= self.rate:
            return False
        self.injected[system] += 1
        if change and self.rng.random() < 0.25:
            self.log(f"· {system} fault: {op} takes effect, its answer is lost")
            return True
        error = _TRANSIENT[system](op)
        self.log(f"· {system} fault: {type(error).__name__} before {op}")
        raise error

    def before_commit(self, op: str) -> None:
        """Databend has checked the ALTER's keys and is about to commit it: maybe another
        worker's task runs first (with ``commit_rng``, at ``interleave_rate``)."""
        if not (self.armed and self.interleave and self.commit_rng is not None):
            return
        if self.commit_rng.random() < self.interleave_rate:
            self.log(f"· between the check and the commit of {op}:")
            self.interleave()
            self.alive(op)

    def done(self, system: str, op: str, lose_answer: bool, detail: Any = None) -> None:
        """After a change took effect: the test probe, a lost answer, or a crash."""
        if self.probe is not None:
            self.probe(op, detail)
        if not self.armed:
            return
        if lose_answer:
            raise _TRANSIENT[system](op)
        self.boundary(op)

    def boundary(self, where: str) -> None:
        """A step boundary: the worker may die here. The core's own checkpoints (named points
        inside a key-rotation step, and after each object of a batch) are ten times likelier, so
        random schedules reach them."""
        if not self.armed:
            return
        self.boundaries += 1
        rate = self.crash_rate * (10 if where.startswith("checkpoint") else 1)
        if self.boundaries == self.crash_at or (
            self.crash_at is None and self.crashes < self.max_crashes and self.rng.random() < rate
        ):
            self.crashes += 1
            self.log(f"✝ worker dies after {where}")
            self.die(where)

    def die(self, where: str) -> None:
        """The running worker dies here (kill -9)."""
        self.dying = True
        self.dead.setdefault(self.worker, self.clock())
        raise WorkerCrash(where)

    def alive(self, op: str) -> None:
        """Before any port call, read or write: a dead worker's call does nothing."""
        if self.dying:
            raise WorkerCrash(f"dead before {op}")

    def revive(self, worker: str) -> None:
        """The broker hands the next task to ``worker`` (a live process)."""
        self.dying, self.worker = False, worker

    @contextmanager
    def disarmed(self) -> Iterator[None]:
        armed, self.armed = self.armed, False
        try:
            yield
        finally:
            self.armed = armed


@dataclass
class Env:
    """What every faulty fake shares."""

    faults: Faults
    clock: Clock
    rng: random.Random
    observer: Observer | None = None
    labels: dict[str, str] = field(default_factory=dict)  # key / version / run id -> short name
    counters: Counter[str] = field(default_factory=Counter)

    def label(self, ident: str | None) -> str:
        return self.labels.get(ident or "", ident or "?")

    def name(self, ident: str, prefix: str) -> str:
        """Give ``ident`` the next short name of its kind (K0, K1, … / R0, KR0, …)."""
        if ident not in self.labels:
            self.labels[ident] = f"{prefix}{self.counters[prefix]}"
            self.counters[prefix] += 1
        return self.labels[ident]


class ChaosIam(FakeIam):
    """IAM users and their keys; deleted keys are remembered (``deleted``) for the invariants."""

    def __init__(self, env: Env) -> None:
        super().__init__()
        self.env = env
        self.deleted: dict[str, float] = {}

    def add_key(self, user: str, key_id: str | None = None) -> str:
        """Set-up and the world's own actors: a key created outside the core (no faults)."""
        key_id = key_id or self._new_key_id()
        self.counter += 1  # keeps creation times distinct within one instant
        self.keys.setdefault(user, []).append([key_id, True, self.env.clock() + self.counter / 1e3])
        self.env.name(key_id, "K")
        return key_id

    def _new_key_id(self) -> str:
        """A realistic id whose masked forms (last 3, first 2 + last 2) no other key shares, so that
        a suffix match in this world always means the same key."""
        known = {str(k[0]) for ks in self.keys.values() for k in ks} | set(self.deleted)
        while True:
            key_id = "AKIA" + "".join(self.env.rng.choice(_KEY_ALPHABET) for _ in range(16))
            if all(key_id[-3:] != k[-3:] and key_id[-2:] != k[-2:] for k in known):
                return key_id

    def state(self, key_id: str) -> str:
        """'active', 'inactive', 'deleted' or 'unknown' (ground truth, no faults)."""
        if key_id in self.deleted:
            return "deleted"
        for keys in self.keys.values():
            for k in keys:
                if k[0] == key_id:
                    return "active" if k[1] else "inactive"
        return "unknown"

    def owner_of(self, access_key_id: str) -> str:
        self.env.faults.call("iam", "GetAccessKeyLastUsed")
        for user, keys in self.keys.items():
            if any(k[0] == access_key_id for k in keys):
                return user
        raise UnknownSecretError("NoSuchEntity: IAM does not know who owns the key")

    def list_keys(self, user: str):  # type: ignore[no-untyped-def]
        self.env.faults.call("iam", "ListAccessKeys")
        return super().list_keys(user)

    def create_key(self, user: str) -> tuple[str, str]:
        lose = self.env.faults.call("iam", "CreateAccessKey", change=True)
        if len(self.keys.get(user, [])) >= KEYS_PER_USER:
            raise AwsPermanentError("LimitExceeded: Cannot exceed quota for AccessKeysPerUser: 2")
        key_id = self.add_key(user)
        self.env.faults.done("iam", "CreateAccessKey", lose, key_id)
        return key_id, "s" * 40

    def set_active(self, user: str, key_id: str, active: bool) -> None:
        lose = self.env.faults.call("iam", "UpdateAccessKey", change=True)
        if self.state(key_id) not in ("active", "inactive"):
            raise UnknownSecretError(f"NoSuchEntity: no access key {key_id[-3:]}")
        if not active and self.env.observer:
            self.env.observer.on_retire(key_id, "deactivate")
        super().set_active(user, key_id, active)
        self.env.faults.done("iam", "UpdateAccessKey", lose, key_id)

    def delete_key(self, user: str, key_id: str) -> None:
        lose = self.env.faults.call("iam", "DeleteAccessKey", change=True)
        if self.state(key_id) in ("deleted", "unknown"):
            return  # the adapter treats NoSuchEntity as "already gone"
        if self.env.observer:
            self.env.observer.on_retire(key_id, "delete")
        super().delete_key(user, key_id)
        self.deleted[key_id] = self.env.clock()
        self.env.faults.done("iam", "DeleteAccessKey", lose, key_id)


StorageRenderer = Callable[[str, str, str, bool], Any]  # (key id, bucket, root, blind) -> param


class ChaosAdmin(FakeAdmin):
    """Databend with external tables on real keys. ``tables`` (FakeAdmin's) holds what Databend
    shows; ``true_keys`` what each table really uses."""

    def __init__(self, env: Env, iam: ChaosIam, render: StorageRenderer) -> None:
        super().__init__()
        self.env, self.iam, self.render = env, iam, render
        self.true_keys: dict[ObjectName, str] = {}  # tables and stages
        self.locations: dict[ObjectName, str] = {}
        self.blind: set[ObjectName] = set()

    def put_table(self, name: TableName, key_id: str, bucket: str, *, blind: bool = False) -> None:
        """Set-up: an external table at s3://bucket/<table>/ on key_id (no faults)."""
        self.true_keys[name], self.locations[name] = key_id, bucket
        if blind:
            self.blind.add(name)
        self._show(name)

    def put_stage(self, name: StageName, key_id: str, bucket: str) -> None:
        """Set-up: an external stage at s3://bucket/<stage>/ holding key_id (no faults)."""
        self.true_keys[name], self.locations[name] = key_id, bucket
        self.stage_urls[name] = f"s3://{bucket}/{name.name}/"
        self._show(name)

    def put_database(self, name: DatabaseName, connection: str, bucket: str) -> None:
        """Set-up: a database whose default connection is ``connection`` (no faults)."""
        self.databases[name] = (connection, f"s3://{bucket}/{name.name}/")

    def object_keys(self) -> dict[ObjectName, str]:
        """Ground truth: the key each object uses (a database default: its connection's)."""
        keys = dict(self.true_keys)
        for database, (connection, _path) in self.databases.items():
            credentials = self.connections.get(connection)
            if isinstance(credentials, AccessKeyCredentials):
                keys[database] = credentials.access_key_id
        return keys

    def _show(self, name: ObjectName) -> None:
        key, bucket = self.true_keys[name], self.locations[name]
        if isinstance(name, TableName):
            self.tables[name] = self.render(key, bucket, f"/{name.table}/", name in self.blind)
        elif isinstance(name, StageName):
            self.stages[name] = self.render(key, bucket, f"/{name.name}/", name in self.blind)

    def works(self, key_id: str) -> bool:
        return self.iam.state(key_id) == "active"

    def connection_fingerprint(self, name: str) -> str | None:
        self.env.faults.call("databend", "SHOW CONNECTIONS")
        return super().connection_fingerprint(name)

    def connection_fingerprints(self) -> dict[str, str]:
        """SHOW CONNECTIONS: every connection's name -> what Databend shows of its key."""
        self.env.faults.call("databend", "SHOW CONNECTIONS")
        return {name: str(super().connection_fingerprint(name)) for name in self.connections}

    def create_connection(self, name: str, credentials: Any) -> bool:
        lose = self.env.faults.call("databend", f"CREATE CONNECTION {name}", change=True)
        created = super().create_connection(name, credentials)
        self.env.faults.done("databend", f"CREATE CONNECTION {name}", lose)
        return created

    def list_external_tables(
        self, databases: frozenset[str] | None = None, tables: frozenset[Any] | None = None
    ) -> list[Any]:
        self.env.faults.call("databend", "SELECT … FROM system.tables")
        return super().list_external_tables(databases, tables)

    def describe_table(self, table: TableName) -> Any:
        self.env.faults.call("databend", f"DESCRIBE {table}")
        return super().describe_table(table)

    def switch_table(self, table: TableName, connection: str) -> None:
        op = f"ALTER {table}"
        lose = self.env.faults.call(self.env.rng.choice(("databend", "s3")), op, change=True)
        if table not in self.true_keys:
            raise DatabendQueryError(1025, f"Unknown table {table}")
        if connection not in self.connections:
            raise DatabendQueryError(2510, f"Unknown connection {connection}")
        credentials = self.connections[connection]
        assert isinstance(credentials, AccessKeyCredentials), "role connections are not modelled"
        old, new = self.true_keys[table], credentials.access_key_id
        if not self.works(new):
            raise DatabendQueryError(
                3901, f"StorageUnavailable: the new key …{new[-3:]} is invalid"
            )
        if not self.works(old):
            raise StoragePermissionDenied(3002, f"PermissionDenied (403) at write {table} _ss/")
        self.env.faults.before_commit(op)  # (the keys were checked; what happens meanwhile…)
        if self.true_keys[table] != old:
            raise ConcurrentTableChange(f"[2009] table {table} changed meanwhile: not committed")
        self.statements.append(op)
        self.true_keys[table] = new
        self._show(table)
        if self.env.observer:
            self.env.observer.on_switch(table, old, new, connection)
        self.env.faults.done("databend", op, lose, (table, old, new))

    def probe_connection(self, connection: str, bucket: str) -> None:
        """The pre-flight: LIST on a throwaway stage over the connection's key."""
        self.env.faults.call("s3", f"LIST {bucket} via {connection}")
        credentials = self.connections.get(connection)
        if credentials is None:
            raise DatabendQueryError(2510, f"Unknown connection {connection}")
        if not self.works(credentials.access_key_id):  # type: ignore[union-attr]
            raise StoragePermissionDenied(3002, f"PermissionDenied (403) at list {bucket}")

    def read_back(self, table: TableName) -> int:
        self.env.faults.call(self.env.rng.choice(("databend", "s3")), f"SELECT * FROM {table}")
        if table not in self.true_keys:
            raise DatabendQueryError(1025, f"Unknown table {table}")
        if not self.works(self.true_keys[table]):
            raise StoragePermissionDenied(3002, f"PermissionDenied (403) at read {table}")
        return 10

    # --- stages: a copy of a key; the switch never touches storage --------------------------------

    def list_stages(self) -> list[ExternalStage]:
        self.env.faults.call("databend", "SELECT … FROM system.stages")
        return super().list_stages()

    def describe_stage(self, stage: StageName) -> ExternalStage | None:
        self.env.faults.call("databend", f"DESC STAGE {stage}")
        return super().describe_stage(stage)

    def switch_stage(self, stage: ExternalStage, connection: str) -> None:
        name, op = stage.name, f"ALTER STAGE {stage.name}"
        lose = self.env.faults.call("databend", op, change=True)
        if name not in self.true_keys:
            raise DatabendQueryError(2501, f"UnknownStage: {name}")
        credentials = self.connections.get(connection)
        if credentials is None:
            raise DatabendQueryError(2510, f"Unknown connection {connection}")
        assert isinstance(credentials, AccessKeyCredentials), "role connections are not modelled"
        old, new = self.true_keys[name], credentials.access_key_id
        self.statements.append(op)
        self.true_keys[name] = new
        self._show(name)
        if self.env.observer:
            self.env.observer.on_switch(name, old, new, connection)
        self.env.faults.done("databend", op, lose, (name, old, new))

    def list_stage(self, stage: StageName) -> int:
        self.env.faults.call(self.env.rng.choice(("databend", "s3")), f"LIST @{stage}")
        if stage not in self.true_keys:
            raise DatabendQueryError(2501, f"UnknownStage: {stage}")
        if not self.works(self.true_keys[stage]):
            raise StoragePermissionDenied(3002, f"PermissionDenied (403) at list @{stage}")
        return 1

    # --- database defaults: they name a connection ------------------------------------------------

    def list_database_defaults(self) -> list[DatabaseDefault]:
        self.env.faults.call("databend", "SHOW CREATE DATABASE … (every database)")
        return super().list_database_defaults()

    def describe_database(self, database: DatabaseName) -> DatabaseDefault | None:
        self.env.faults.call("databend", f"SHOW CREATE DATABASE {database}")
        return super().describe_database(database)

    def switch_database(self, database: DatabaseDefault, connection: str) -> None:
        op = f"ALTER DATABASE {database.name}"
        lose = self.env.faults.call("databend", op, change=True)
        old_connection = self.connections.get(self.databases[database.name][0])
        super().switch_database(database, connection)  # 1006 unless the connection exists
        new_connection = self.connections[connection]
        if self.env.observer and isinstance(new_connection, AccessKeyCredentials):
            old = getattr(old_connection, "access_key_id", "")
            self.env.observer.on_switch(
                database.name, old, new_connection.access_key_id, connection
            )
        self.env.faults.done("databend", op, lose, (database.name, connection))

    def list_connections(self) -> list[Any]:
        self.env.faults.call("databend", "SHOW CONNECTIONS")
        return super().list_connections()

    def drop_connection(self, name: str) -> None:
        lose = self.env.faults.call("databend", f"DROP CONNECTION {name}", change=True)
        super().drop_connection(name)
        self.env.faults.done("databend", f"DROP CONNECTION {name}", lose)


class ChaosRuns(MemoryRuns):
    """The run store (Redis): every write tells the observer and is a step boundary. A batch's
    ``begin_attempts`` and ``record_outcomes`` are one Lua call each in Redis: here too each is
    one call and one boundary, all of it or nothing (not tests/fakes.py's loop over the
    single-object writes)."""

    def __init__(self, env: Env) -> None:
        super().__init__(clock=env.clock)
        self.env = env

    def peek(self, run_id: str) -> Any:
        """Ground truth for the engine and the invariants (no faults, no interleaving)."""
        return self.runs.get(run_id)

    def flush(self) -> None:
        for store in (self.runs, self.tables, self.pending_, self.waves_, self.wave_done_):
            store.clear()
        self.retiring_.clear()

    def _write(self, op: str, run_id: str, fields: dict[str, Any] | None = None) -> None:
        if self.env.observer:
            self.env.observer.on_run_written(run_id, fields or {})
        self.env.faults.done("", op, False, fields)

    def create(self, run: Any, *, alone: bool = False) -> str | None:
        self.env.faults.call("", "runs.create")
        blocking = super().create(run, alone=alone)
        if blocking is not None:
            return blocking
        if run.parent:  # named for the trace: R0, R1, … / KR0, … / KR0.tables
            self.env.labels[run.run_id] = f"{self.env.label(run.parent)}.tables"
        else:
            prefix = {"key-rotation": "KR", "migration": "M"}.get(str(run.kind), "R")
            self.env.name(run.run_id, prefix)
        self._write("runs.create", run.run_id, {"created": run})
        return None

    def get(self, run_id: str) -> Any:
        self.env.faults.call("", "runs.get")
        return super().get(run_id)

    def update(self, run_id: str, **fields: object) -> None:
        self.env.faults.call("", "runs.update")
        super().update(run_id, **fields)
        self._write("runs.update", run_id, fields)

    def update_unless_final(self, run_id: str, **fields: object) -> bool:
        """One Lua call in Redis: the check and the write are one step here too."""
        self.env.faults.call("", "runs.update")
        written = MemoryRuns.update_unless_final(self, run_id, **fields)
        if written:
            self._write("runs.update", run_id, fields)
        return written

    def update_if(self, run_id: str, expected: dict[str, Any], **fields: object) -> bool:
        """One Lua call in Redis: the checks and the write are one step here too."""
        self.env.faults.call("", "runs.update")
        written = MemoryRuns.update_if(self, run_id, expected, **fields)
        if written:
            self._write("runs.update", run_id, fields)
        return written

    def set_plan(self, run_id: str, outcomes: list[Any]) -> None:
        self.env.faults.call("", "runs.set_plan")
        super().set_plan(run_id, outcomes)
        self._write("runs.set_plan", run_id)

    def begin_attempt(self, run_id: str, table: TableName) -> Any:
        self.env.faults.call("", "runs.begin_attempt")
        outcome = super().begin_attempt(run_id, table)
        self._write("runs.begin_attempt", run_id)
        return outcome

    def record_outcome(self, run_id: str, outcome: Any) -> int:
        self.env.faults.call("", "runs.record_outcome")
        remaining = super().record_outcome(run_id, outcome)
        self._write("runs.record_outcome", run_id)
        return remaining

    def begin_attempts(self, run_id: str, tables: list[ObjectName]) -> list[Any]:
        self.env.faults.call("", "runs.begin_attempts")
        outcomes = [MemoryRuns.begin_attempt(self, run_id, table) for table in tables]
        self._write("runs.begin_attempts", run_id)
        return outcomes

    def record_outcomes(
        self, run_id: str, outcomes: list[Any], wave: tuple[int, int] | None = None
    ) -> tuple[int, int, int]:
        self.env.faults.call("", "runs.record_outcomes")
        remaining, finished, size = len(self.pending_.get(run_id, ())), 0, 0
        for outcome in outcomes:
            remaining = MemoryRuns.record_outcome(self, run_id, outcome)
            if wave is not None:
                finished = self.wave_finished(run_id, wave[0], outcome.table, wave[1])
                size = self.wave_size(run_id, wave[0])
        self.env.faults.log(f"· {len(outcomes)} outcome(s) written, {remaining} pending")
        self._write("runs.record_outcomes", run_id)
        return remaining, finished, size

    def record_pending(self, run_id: str, outcome: Any) -> None:
        self.env.faults.call("", "runs.record_pending")
        super().record_pending(run_id, outcome)
        self._write("runs.record_pending", run_id)

    def set_waves(self, run_id: str, waves: list[list[ObjectName]]) -> None:
        self.env.faults.call("", "runs.set_waves")
        super().set_waves(run_id, waves)
        self._write("runs.set_waves", run_id)

    def outcomes_for(self, run_id: str, tables: list[ObjectName]) -> list[Any]:
        self.env.faults.call("", "runs.outcomes_for")
        return super().outcomes_for(run_id, tables)

    def wave_finished(self, run_id: str, index: int, table: ObjectName, epoch: int) -> int:
        """One SADD in Redis (also called inside record_outcomes' Lua call: no boundary there)."""
        self.env.faults.alive("runs.wave_finished")
        return super().wave_finished(run_id, index, table, epoch)

    def mark_retiring(self, run_id: str) -> None:
        self.env.faults.alive("runs.mark_retiring")
        super().mark_retiring(run_id)
        self._write("runs.mark_retiring", run_id)

    def unmark_retiring(self, run_id: str) -> None:
        self.env.faults.alive("runs.unmark_retiring")
        super().unmark_retiring(run_id)
        self._write("runs.unmark_retiring", run_id)


class ChaosLocks(MemoryLocks):
    """Redis locks with a TTL on the world's clock.

    (The Lua scripts of worker/adapters/redis_state.py.)
    """

    def __init__(self, env: Env, ttl: float = LOCK_TTL) -> None:
        super().__init__()
        self.env, self.ttl = env, ttl
        self.expires: dict[str, float] = {}

    def holder(self, secret_arn: str) -> str | None:
        if self.expires.get(secret_arn, 0.0) <= self.env.clock():
            self.owners.pop(secret_arn, None)
        return self.owners.get(secret_arn)

    def acquire(self, secret_arn: str, owner: str) -> bool:
        self.env.faults.call("", "locks.acquire")
        if self.holder(secret_arn) not in (None, owner):
            return False
        self.owners[secret_arn], self.expires[secret_arn] = owner, self.env.clock() + self.ttl
        self.env.faults.done("", "locks.acquire", False)
        return True

    def renew(self, secret_arn: str, owner: str) -> bool:
        self.env.faults.alive("locks.renew")
        if self.holder(secret_arn) != owner:
            return False
        self.expires[secret_arn] = self.env.clock() + self.ttl
        return True

    def release(self, secret_arn: str, owner: str) -> None:
        self.env.faults.alive("locks.release")
        if self.holder(secret_arn) == owner:
            del self.owners[secret_arn]
        self.env.faults.done("", "locks.release", False)

    def flush(self) -> None:
        self.owners.clear()
        self.expires.clear()


class ChaosLimits:
    """A migration's shared concurrency slots (Redis, worker/adapters/limits.py): each slot names
    the worker holding it and, once that worker died, stops counting SLOT_LEASE later (nobody
    renews its lease). With none free, SlotTimeout at once (a real task waits up to 60 s first,
    then its retry comes later: the same here, with no waiting inside a step)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.slots: dict[str, dict[int, str]] = {}  # run -> slot -> worker
        self.taken = 0

    def _drop_dead(self, run_id: str) -> dict[int, str]:
        dead, now = self.env.faults.dead, self.env.clock()
        held = self.slots.setdefault(run_id, {})
        for token, worker in list(held.items()):
            if worker in dead and now >= dead[worker] + SLOT_LEASE:
                del held[token]
        return held

    @contextmanager
    def slot(
        self, run_id: str, limit: int, *, wait: float = 60, poll: float = 0.02
    ) -> Iterator[None]:
        self.env.faults.call("", "limits.slot")
        held = self._drop_dead(run_id)
        if len(held) >= limit:
            raise SlotTimeout(f"no free slot for run {run_id} within {wait:.0f}s")
        self.taken += 1
        token = self.taken
        held[token] = self.env.faults.worker
        try:
            yield
        finally:
            self.env.faults.alive("limits.release")  # a dead worker's slot stays until its lease
            held.pop(token, None)

    def pace(self, run_id: str, per_second: float | None) -> None:
        self.env.faults.call("", "limits.pace")

    def busy_slots(self, run_id: str) -> int:
        return len(self._drop_dead(run_id))

    def flush(self) -> None:
        self.slots.clear()


class ChaosFences(MemoryFences):
    """Fencing tokens and changes in flight (Redis): gone with a flush, checked atomically. Each
    change in flight names the worker that entered it (``holders``): a dead worker's changes stop
    counting ALIVE_TTL after it died, as RedisFences drops entries whose holder's heartbeat is
    gone. ``leave`` ends a batch's entries in one call, a step boundary."""

    def __init__(self, env: Env, runs: ChaosRuns) -> None:
        super().__init__(runs=runs, clock=env.clock)
        self.env = env
        self.holders: dict[str, dict[str, str]] = {}  # run -> entry -> worker

    def entrant(self) -> str:
        return str(self.env.faults.worker)

    def _drop_dead(self, run_id: str) -> None:
        dead, now = self.env.faults.dead, self.env.clock()
        held = self.holders.get(run_id, {})
        for entry, worker in list(held.items()):
            if worker in dead and now >= dead[worker] + ALIVE_TTL:
                self.flying.get(run_id, {}).pop(entry, None)
                del held[entry]

    def enter(self, run_id: str, item: str, **kwargs: Any) -> Any:
        self.env.faults.call("", "fences.enter")
        self._drop_dead(run_id)
        verdict = super().enter(run_id, item, **kwargs)
        if verdict is Admission.ADMITTED:
            self.holders.setdefault(run_id, {})[self._entry(item)] = self.env.faults.worker
        return verdict

    def leave(self, run_id: str, *items: str) -> None:
        if not items:
            return
        self.env.faults.call("", "fences.leave")
        super().leave(run_id, *items)
        for item in items:
            self.holders.get(run_id, {}).pop(self._entry(item), None)
        self.env.faults.done("", "fences.leave", False, items)

    def in_flight(self, run_id: str) -> list[str]:
        self._drop_dead(run_id)
        return super().in_flight(run_id)

    def issue(self, secret_arn: str, run_id: str) -> tuple[int, str | None]:
        self.env.faults.call("", "fences.issue")
        return super().issue(secret_arn, run_id)

    # (a dead worker makes no call; no other worker's task is run between these and the next
    # call: the seeds' schedules stay as they were, and tests/test_core_races.py drives the
    # interleavings around a label move by hand)
    def labels_epoch(self) -> int:
        self.env.faults.alive("fences.labels_epoch")
        return super().labels_epoch()

    def labels_moving(self, seconds: float) -> None:
        self.env.faults.alive("fences.labels_moving")
        super().labels_moving(seconds)

    def labels_moved(self) -> int:
        self.env.faults.alive("fences.labels_moved")
        return super().labels_moved()

    def flush(self) -> None:
        self.newest.clear()
        self.flying.clear()
        self.holders.clear()
        self.under.clear()
        self.epoch = 0
        self.moving_until = float("-inf")


class ChaosIntake(MemoryIntakeState):
    def __init__(self, env: Env) -> None:
        super().__init__()
        self.env = env

    def claim(self, secret_arn: str, version_id: str, run_id: str):  # type: ignore[no-untyped-def]
        self.env.faults.alive("intake.claim")
        claim = super().claim(secret_arn, version_id, run_id)
        self.env.faults.done("", "intake.claim", False)
        return claim

    def mark_enqueued(self, secret_arn: str, version_id: str) -> None:
        self.env.faults.alive("intake.mark_enqueued")
        super().mark_enqueued(secret_arn, version_id)
        self.env.faults.done("", "intake.mark_enqueued", False)

    def flush(self) -> None:
        self.claims.clear()
        self.newest_.clear()


class ChaosWriter(FakeWriter):
    """Secrets Manager's label moves; a moved AWSCURRENT is announced (EventBridge)."""

    def __init__(self, env: Env, secrets: FakeSecrets, on_current: Callable[[str], None]) -> None:
        super().__init__(secrets)
        self.env, self.on_current = env, on_current

    def put_pending(self, arn: str, version_id: str, value: str) -> None:
        self.env.faults.call("", "PutSecretValue")
        known = version_id in self.secrets.values
        super().put_pending(arn, version_id, value)
        if not known:  # versions are named by creation order: v2 is older than v3
            self.env.labels[version_id] = f"v{len(self.secrets.values) - 1}"
        self.env.faults.done("", "PutSecretValue", False)

    def make_current(self, arn: str, version_id: str) -> None:
        self.env.faults.call("", "UpdateSecretVersionStage")
        super().make_current(arn, version_id)
        self.on_current(version_id)
        self.env.faults.done("", "UpdateSecretVersionStage", False)

    def drop_pending(self, arn: str, version_id: str) -> None:
        self.env.faults.alive("UpdateSecretVersionStage")
        super().drop_pending(arn, version_id)
        self.env.faults.done("", "UpdateSecretVersionStage", False)


@dataclass(repr=False)
class World:
    """Everything a scenario runs against, plus ground-truth queries for the invariants."""

    env: Env
    secrets: FakeSecrets
    writer: ChaosWriter
    iam: ChaosIam
    admin: ChaosAdmin
    runs: ChaosRuns
    locks: ChaosLocks
    intake: ChaosIntake
    bindings: list[Any]
    value_of: Callable[[str, str], str]  # (key id, secret key) -> the secret's JSON
    fences: ChaosFences
    limits: ChaosLimits

    def __repr__(self) -> str:  # assertion messages name what matters, not the whole world
        keys = {str(t): self.env.label(k) for t, k in self.admin.object_keys().items()}
        return f"World(t={self.clock():.0f}s, objects on {keys})"

    @property
    def clock(self) -> Clock:
        return self.env.clock

    def flush_redis(self) -> None:
        """FLUSHALL: runs, outcomes, retirement schedule, locks and intake claims are gone."""
        self.runs.flush()
        self.locks.flush()
        self.intake.flush()
        self.fences.flush()
        self.limits.flush()

    def version_with(self, stage: str) -> str | None:
        return next((v for v, s in self.secrets.stages.items() if stage in s), None)

    def key_of(self, version_id: str) -> str:
        return str(json.loads(self.secrets.values[version_id])["access_key_id"])

    def version_of_key(self, key_id: str) -> str | None:
        """The newest version holding the key (versions are ordered by creation)."""
        holders = [v for v in self.secrets.values if self.key_of(v) == key_id]
        return holders[-1] if holders else None

    def order(self, version_id: str) -> int:
        return list(self.secrets.values).index(version_id)

    def new_version(self, key_id: str) -> str:
        """An actor outside the core (an operator, another rotation tool) stores a new version
        holding key_id and makes it AWSCURRENT."""
        version_id = "%08x-%04x-4%03x-8%03x-%012x" % tuple(  # noqa: UP031 - uuid-shaped, seeded
            self.env.rng.getrandbits(bits) for bits in (32, 16, 12, 12, 48)
        )
        with self.env.faults.disarmed():
            self.writer.put_pending(self.secrets.arn, version_id, self.value_of(key_id, "s" * 40))
            self.writer.make_current(self.secrets.arn, version_id)
        return version_id

    def stranded(self) -> list[tuple[ObjectName, str]]:
        """Objects whose key has been deleted: a table unreadable for good, a stage that cannot
        be listed, a database where no table can be created."""
        keys = self.admin.object_keys()
        return [(t, k) for t, k in sorted(keys.items()) if k in self.iam.deleted]
