"""RunStore on Redis: run records, per-table outcomes and the set of tables still pending.

Keys (all under ``rotator:``): ``run:{id}`` hash of JSON fields; ``run:{id}:tables`` hash of
table -> outcome JSON; ``run:{id}:pending`` set of tables not finished; ``run:{id}:counts`` hash of
status -> tables; ``runs`` sorted set of run ids by creation time; ``unfinished`` set of run ids
not yet final (the reaper's work list). Records expire after ``ttl_seconds`` (30 days by default),
except those of a key rotation whose old key is still to be retired (``retiring``): they stay until
it is done.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from typing import Any

import redis

from worker.adapters.redis_scripts import LuaScript, ThreadConnections
from worker.adapters.run_codec import outcome_from_json, outcome_to_json, table_from_key, table_key
from worker.adapters.run_store_scripts import (
    BEGIN_ATTEMPTS,
    CREATE,
    RECORD_OUTCOMES,
    UPDATE_CHECKED,
)
from worker.domain.errors import RunNotFound, StateStoreUnavailable
from worker.domain.model import RunKind, RunStatus, TableOutcome
from worker.domain.ports import RunRecord
from worker.domain.sql import ObjectName
from worker.observe import actor

PREFIX = "rotator:"
_RECORD_FIELDS = {f.name for f in dataclasses.fields(RunRecord)}


def redis_client(url: str) -> redis.Redis:
    """The process's client: its Lua scripts go the short way (worker/adapters/redis_scripts.py)."""
    return ThreadConnections.from_url(
        url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
    )


class RedisRunStore:
    def __init__(self, client: redis.Redis, ttl_seconds: int = 30 * 24 * 3600) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._begin = LuaScript(client, BEGIN_ATTEMPTS)
        self._record_script = LuaScript(client, RECORD_OUTCOMES)
        self._update_checked = LuaScript(client, UPDATE_CHECKED)
        self._create = LuaScript(client, CREATE)

    @classmethod
    def from_url(cls, url: str) -> RedisRunStore:
        return cls(redis_client(url))

    def _key(self, run_id: str, suffix: str = "") -> str:
        return f"{PREFIX}run:{run_id}{suffix}"

    def create(self, run: RunRecord, *, alone: bool = False) -> str | None:
        if "actor" not in run.data:  # who asked for it (worker/observe/actor.py)
            run.data["actor"] = self._parent_actor(run.parent) if run.parent else actor.current()
        now = time.time()
        run.created_at = run.created_at or now
        run.updated_at = now
        fields = [x for k, v in dataclasses.asdict(run).items() for x in (k, json.dumps(v))]
        keys = [self._key(run.run_id), f"{PREFIX}runs", f"{PREFIX}unfinished"]
        keys.append(self._latest_key(run.kind, run.secret, run.version_id))
        args = [run.run_id, run.created_at, self.ttl, int(alone), self._key(""), *fields]
        blocking = _call(self._create, keys=keys, args=args)
        return blocking.decode() if blocking else None

    def _parent_actor(self, parent: str) -> str:
        try:
            return str(self.get(parent).data.get("actor") or actor.current())
        except RunNotFound:
            return actor.current()

    def _latest_key(self, kind: str, secret: str, version_id: str) -> str:
        """Index of the newest run of a kind for its secret: a rotation per version, a key
        rotation (whose version id is only the token of the version it will make) per secret."""
        scope = version_id if kind == RunKind.ROTATION else ""
        return f"{PREFIX}latest:{kind}:{secret}:{scope}"

    def unfinished_run(self, kind: str, secret: str, version_id: str = "") -> RunRecord | None:
        """The newest run of ``kind`` for the secret ARN (and, for a rotation, the version) if
        it has not ended: a crash or a lost worker may have cut it short."""
        run = self.latest_run(kind, secret, version_id)
        return None if run is None or RunStatus(run.status).final else run

    def latest_run(self, kind: str, secret: str, version_id: str = "") -> RunRecord | None:
        """The newest run of ``kind`` for the secret ARN (a rotation: and version), ended or not."""
        run_id = _call(self.redis.get, self._latest_key(kind, secret, version_id))
        if run_id is None:
            return None
        try:
            return self.get(run_id.decode())
        except RunNotFound:
            return None

    def get(self, run_id: str) -> RunRecord:
        # a run's id never holds the key separator: "ID:tables" names a run's outcomes, not a run
        raw = _call(self.redis.hgetall, self._key(run_id)) if ":" not in run_id else None
        if not raw or b"kind" not in raw:
            raise RunNotFound(f"no run with id {run_id}")
        data = {k.decode(): json.loads(v) for k, v in raw.items()}
        return RunRecord(**{k: v for k, v in data.items() if k in _RECORD_FIELDS})

    def update(self, run_id: str, **fields: Any) -> None:
        """Write the fields. A new status also updates the unfinished index and, once final, the
        ended list (for the notification sweep, worker/observe/notify.py): the rule lives in one
        place, UPDATE_CHECKED, here with nothing to check. A run that is gone (expired or
        flushed) stays gone: a status is not written into an empty record."""
        if "status" not in fields:
            _call(self.redis.hset, self._key(run_id), mapping=_encoded_fields(fields))
            return
        self._checked_update(run_id, {}, fields, unless_final=False)

    def unfinished(self) -> list[str]:
        """Runs not yet final (paused ones included): what the reaper looks at."""
        return sorted(r.decode() for r in _call(self.redis.smembers, f"{PREFIX}unfinished"))

    def redispatch(self, run_id: str) -> int:
        return int(_call(self.redis.hincrby, self._key(run_id), "dispatch", 1))

    def migrating(self, names: list[ObjectName]) -> set[ObjectName]:
        """At most three round trips whatever the number of runs: the unfinished runs, their
        kinds, then the migrations' plans looked up for these objects."""
        ids, keys = self.unfinished(), [table_key(n) for n in names]
        if not ids or not keys:
            return set()
        with self.redis.pipeline() as pipe:
            for run_id in ids:
                pipe.hget(self._key(run_id), "kind")
            kinds = _execute(pipe)
        migration = json.dumps(str(RunKind.MIGRATION)).encode()
        with self.redis.pipeline() as pipe:
            for run_id, kind in zip(ids, kinds, strict=True):
                if kind == migration:
                    pipe.hmget(self._key(run_id, ":tables"), keys)
            planned = _execute(pipe)
        return {n for found in planned for n, v in zip(names, found, strict=True) if v is not None}

    def forget_unfinished(self, run_id: str) -> None:
        """Drop a run from the index (its record expired or was flushed)."""
        _call(self.redis.srem, f"{PREFIX}unfinished", run_id)

    def update_unless_final(self, run_id: str, **fields: Any) -> bool:
        return self._checked_update(run_id, {}, fields, unless_final=True)

    def update_if(self, run_id: str, expected: dict[str, Any], **fields: Any) -> bool:
        return self._checked_update(run_id, expected, fields, unless_final=False)

    def _checked_update(
        self, run_id: str, expected: dict[str, Any], fields: dict[str, Any], *, unless_final: bool
    ) -> bool:
        status = fields.get("status")
        if status is not None and RunStatus(str(status)).final and not self._ended(run_id):
            # when it ended, once: later writes (a key's retirement, a rollback of a finished
            # migration, notes) stamp only updated_at (one read, on a run's last write only)
            fields = {"ended_at": time.time(), **fields}
        encoded = _encoded_fields(fields)
        args: list[Any] = [
            run_id,
            int(status is not None),
            int(status is not None and RunStatus(str(status)).final),
            int(unless_final),
            len(expected),
        ]
        for key, value in _encoded_fields(dict(expected), stamp=False).items():
            args += [key, value]
        for key, value in encoded.items():
            args += [key, value]
        keys = [self._key(run_id), f"{PREFIX}unfinished", f"{PREFIX}ended"]
        return bool(_call(self._update_checked, keys=keys, args=args))

    def _ended(self, run_id: str) -> bool:
        raw = _call(self.redis.hget, self._key(run_id), "status")
        return raw is not None and RunStatus(json.loads(raw)).final

    def set_plan(self, run_id: str, outcomes: list[TableOutcome]) -> None:
        tables_key, pending_key = self._key(run_id, ":tables"), self._key(run_id, ":pending")
        counts_key = self._key(run_id, ":counts")
        counts = Counter(str(o.status) for o in {o.table: o for o in outcomes}.values())
        rows = {table_key(o.table): outcome_to_json(o) for o in outcomes}
        pending = [table_key(o.table) for o in outcomes if not o.status.done]
        with self.redis.pipeline() as pipe:
            pipe.delete(tables_key, pending_key, counts_key)
            keys = list(rows)
            for start in range(0, len(keys), 1000):  # a few commands for the whole plan
                pipe.hset(tables_key, mapping={k: rows[k] for k in keys[start : start + 1000]})
            for start in range(0, len(pending), 1000):
                pipe.sadd(pending_key, *pending[start : start + 1000])
            if counts:
                by_status: dict[Any, int] = dict(counts)
                pipe.hset(counts_key, mapping=by_status)
            for key in (tables_key, pending_key, counts_key):
                pipe.expire(key, self.ttl)
            _execute(pipe)

    def status_counts(self, run_id: str) -> Counter[str] | None:
        """Tables per status, kept with every write; None for a run recorded without counts."""
        raw = _call(self.redis.hgetall, self._key(run_id, ":counts"))
        if not raw:
            return None
        counts = Counter({k.decode(): int(v) for k, v in raw.items()})
        return +counts  # drop statuses no table has any more

    def _write_outcomes(
        self, run_id: str, outcomes: list[TableOutcome], pending: str, *wave_keys: str
    ) -> tuple[int, int, int]:
        if not outcomes:
            raise ValueError("no outcome to record")
        latest = {table_key(o.table): o for o in outcomes}  # the last word on each object
        keys = [self._key(run_id, suffix) for suffix in (":tables", ":counts", ":pending", "")]
        args: list[Any] = [self.ttl, json.dumps(time.time()), pending]
        for key, outcome in latest.items():
            args += [key, outcome_to_json(outcome), str(outcome.status)]
        result = _call(self._record_script, keys=keys + list(wave_keys), args=args)
        pending_left, finished, size = (int(n) for n in result)
        return pending_left, finished, size

    def begin_attempt(self, run_id: str, table: ObjectName) -> TableOutcome | None:
        return self.begin_attempts(run_id, [table])[0]

    def begin_attempts(self, run_id: str, tables: list[ObjectName]) -> list[TableOutcome | None]:
        if not tables:
            return []
        raw = _call(
            self._begin, keys=[self._key(run_id, ":tables")], args=[table_key(t) for t in tables]
        )
        return [outcome_from_json(v) if v else None for v in raw]

    def outcome(self, run_id: str, table: ObjectName) -> TableOutcome | None:
        raw = _call(self.redis.hget, self._key(run_id, ":tables"), table_key(table))
        return outcome_from_json(raw) if raw else None

    def outcomes_for(self, run_id: str, tables: list[ObjectName]) -> list[TableOutcome]:
        if not tables:
            return []
        raw = _call(self.redis.hmget, self._key(run_id, ":tables"), [table_key(t) for t in tables])
        return [outcome_from_json(v) for v in raw if v]

    def outcomes(self, run_id: str) -> list[TableOutcome]:
        raw = _call(self.redis.hvals, self._key(run_id, ":tables"))
        return sorted((outcome_from_json(v) for v in raw), key=lambda o: o.table)

    def record_outcome(self, run_id: str, outcome: TableOutcome) -> int:
        """Write a table's outcome; returns how many tables of the run are still pending."""
        pending = "remove" if outcome.status.done else "keep"
        return self._write_outcomes(run_id, [outcome], pending)[0]

    def record_wave_outcome(
        self, run_id: str, outcome: TableOutcome, wave: int, epoch: int
    ) -> tuple[int, int, int]:
        """record_outcome, and count the table as finished in its wave, in one round trip.
        Returns (tables still pending in the run, finished in the wave, size of the wave)."""
        return self.record_outcomes(run_id, [outcome], (wave, epoch))

    def record_outcomes(
        self, run_id: str, outcomes: list[TableOutcome], wave: tuple[int, int] | None = None
    ) -> tuple[int, int, int]:
        """Finished objects (a batch), in one atomic round trip: (pending in the run, finished in
        the wave, size of the wave; 0, 0 without a wave)."""
        unfinished = [o for o in outcomes if not o.status.done]  # none in practice
        for outcome in unfinished:
            self._write_outcomes(run_id, [outcome], "keep")
        outcomes = [o for o in outcomes if o.status.done]
        if not outcomes:
            return self._write_outcomes(run_id, unfinished[-1:], "keep")
        if wave is None:
            return self._write_outcomes(run_id, outcomes, "remove")
        index, epoch = wave
        done_key = self._key(run_id, f":wave:{index}:done:{epoch}")
        return self._write_outcomes(
            run_id, outcomes, "remove", done_key, self._key(run_id, f":wave:{index}")
        )

    def record_pending(self, run_id: str, outcome: TableOutcome) -> None:
        self._write_outcomes(run_id, [outcome], "add")

    def pending(self, run_id: str) -> list[ObjectName]:
        raw = _call(self.redis.smembers, self._key(run_id, ":pending"))
        return sorted(table_from_key(k) for k in raw)

    # --- migration waves --------------------------------------------------------------------------

    def set_waves(self, run_id: str, waves: list[list[ObjectName]]) -> None:
        with self.redis.pipeline() as pipe:
            for index, wave in enumerate(waves):
                key = self._key(run_id, f":wave:{index}")
                pipe.delete(key)
                if wave:
                    pipe.rpush(key, *[table_key(t) for t in wave])
                pipe.expire(key, self.ttl)
            pipe.set(self._key(run_id, ":waves"), len(waves), ex=self.ttl)
            _execute(pipe)

    def wave(self, run_id: str, index: int) -> list[ObjectName]:
        raw = _call(self.redis.lrange, self._key(run_id, f":wave:{index}"), 0, -1)
        return [table_from_key(k) for k in raw]

    def wave_size(self, run_id: str, index: int) -> int:
        return int(_call(self.redis.llen, self._key(run_id, f":wave:{index}")))

    def wave_count(self, run_id: str) -> int:
        return int(_call(self.redis.get, self._key(run_id, ":waves")) or 0)

    def wave_finished(self, run_id: str, index: int, table: ObjectName, epoch: int) -> int:
        key = self._key(run_id, f":wave:{index}:done:{epoch}")
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, table_key(table))
            pipe.expire(key, self.ttl)
            pipe.scard(key)
            return int(_execute(pipe)[-1])

    # Key rotations whose old key still awaits deactivation or deletion. Retiring reads the run
    # record (user, old key, when each step is due): it must outlive a schedule that can end
    # later than the records' TTL (--delete-after 60d), so a retiring run's keys do not expire
    # until it is unmarked, and then get the usual TTL again, counted from then.
    def _record_keys(self, run_id: str) -> list[str]:
        return [self._key(run_id, suffix) for suffix in ("", ":tables", ":pending", ":counts")]

    def mark_retiring(self, run_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.sadd(f"{PREFIX}retiring", run_id)
            for key in self._record_keys(run_id):
                pipe.persist(key)
            _execute(pipe)

    def unmark_retiring(self, run_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.srem(f"{PREFIX}retiring", run_id)
            for key in self._record_keys(run_id):
                pipe.expire(key, self.ttl)
            _execute(pipe)

    def retiring(self) -> list[str]:
        return sorted(r.decode() for r in _call(self.redis.smembers, f"{PREFIX}retiring"))

    def recent_runs(self, limit: int = 20, start: int = 0) -> list[str]:
        """Run ids newest first: ``limit`` of them, skipping the ``start`` newest."""
        raw = _call(self.redis.zrevrange, f"{PREFIX}runs", start, start + limit - 1)
        return [r.decode() for r in raw]


def _encoded_fields(fields: dict[str, Any], *, stamp: bool = True) -> dict[Any, str]:
    """A run's fields as the hash holds them (JSON each), ``updated_at`` stamped (unless
    ``stamp`` is False: values to compare with what the hash holds)."""
    unknown = set(fields) - _RECORD_FIELDS
    if unknown:
        raise ValueError(f"unknown run fields: {sorted(unknown)}")
    if stamp:
        fields.setdefault("updated_at", time.time())
    return {k: json.dumps(str(v) if hasattr(v, "value") else v) for k, v in fields.items()}


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StateStoreUnavailable(f"redis unavailable: {exc}") from None


def _execute(pipe: Any) -> list[Any]:
    return list(_call(pipe.execute))
