"""Per-binding and per-run metrics, read from Redis when Prometheus scrapes, so every worker that
serves ``--metrics-port`` shows the same numbers whichever worker ran the schedule's tick.

- ``rotator_key_age_seconds{binding}``: age of the key AWSCURRENT holds (IAM CreateDate)
- ``rotator_rotate_every_seconds{binding}``: the binding's rotate_every (absent: no policy)
- ``rotator_schedule_state{binding,state}``: 1 for the binding's schedule state, else 0
- ``rotator_last_success_timestamp_seconds{binding}``: end of its newest succeeded run
- ``rotator_objects{binding,state}``: its objects, current / other / unreadable / missing
- ``rotator_drift_objects{binding}``: objects out of step (reconcile's count when newer)
- ``rotator_runs{kind,status}``: runs on record (the newest 1,000; a key rotation's table run is
  counted through its key rotation)
- ``rotator_oldest_unfinished_run_seconds``: age of the oldest run not yet ended (0: none)

Key age and objects come from the last schedule tick (``ROTATOR_SCHEDULE_INTERVAL``); the age is
counted up to the scrape from the key's creation time.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from worker.domain.schedule import ScheduleState

RUNS_LOOKED_AT = 1000
_FIELDS = ("kind", "status", "binding", "updated_at", "created_at", "parent", "ended_at")


def _decode(raw: Any) -> Any:
    return None if raw is None else json.loads(raw)


class ServiceCollector(Collector):
    def __init__(self, redis: Any, clock: Any = time.time) -> None:
        self.redis = redis
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from worker.runtime.scheduler import observed

        now = self.clock()
        seen = observed(self.redis)
        age = GaugeMetricFamily(
            "rotator_key_age_seconds",
            "Age of the key the secret's AWSCURRENT holds",
            labels=["binding"],
        )
        every = GaugeMetricFamily(
            "rotator_rotate_every_seconds", "The binding's rotate_every", labels=["binding"]
        )
        state = GaugeMetricFamily(
            "rotator_schedule_state",
            "1 for the binding's schedule state",
            labels=["binding", "state"],
        )
        objects = GaugeMetricFamily(
            "rotator_objects", "The binding's objects by state", labels=["binding", "state"]
        )
        drift = GaugeMetricFamily(
            "rotator_drift_objects", "The binding's objects out of step", labels=["binding"]
        )
        reconciled = {
            k.decode(): json.loads(v)
            for k, v in (self.redis.hgetall("rotator:drift") or {}).items()
        }
        for o in seen:
            if o.key_created_at is not None:
                age.add_metric([o.binding], max(0.0, now - o.key_created_at))
            if o.rotate_every_seconds is not None:
                every.add_metric([o.binding], o.rotate_every_seconds)
            for s in ScheduleState:
                state.add_metric([o.binding, s.value], 1.0 if o.state == s.value else 0.0)
            for name in ("current", "other", "unreadable", "missing"):
                if o.drift is not None:
                    objects.add_metric([o.binding, name], float(o.objects.get(name, 0)))
            from_reconcile = reconciled.get(o.binding)
            if from_reconcile and float(from_reconcile["at"]) >= o.observed_at:
                drift.add_metric([o.binding], float(from_reconcile["count"]))
            elif o.drift is not None:
                drift.add_metric([o.binding], float(o.drift))
        yield from (age, every, state, objects, drift)
        yield from self._runs(now)

    def _runs(self, now: float) -> Iterator[GaugeMetricFamily]:
        ids = [r.decode() for r in self.redis.zrevrange("rotator:runs", 0, RUNS_LOOKED_AT - 1)]
        unfinished = {r.decode() for r in self.redis.smembers("rotator:unfinished")}
        with self.redis.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hmget(f"rotator:run:{run_id}", *_FIELDS)
            rows = pipe.execute()
        counts: Counter[tuple[str, str]] = Counter()
        last_success: dict[str, float] = {}
        oldest = 0.0
        for run_id, row in zip(ids, rows, strict=True):
            if row[0] is None:
                continue  # expired
            kind, status, binding, updated, created, parent, ended = (_decode(v) for v in row)
            if run_id in unfinished:
                oldest = max(oldest, now - float(created or now))
            if parent:
                continue
            counts[(str(kind), str(status))] += 1
            if status == "succeeded" and binding:
                at = float(ended or updated or 0)  # (runs recorded before ended_at existed)
                last_success[binding] = max(last_success.get(binding, 0.0), at)
        runs = GaugeMetricFamily(
            "rotator_runs", "Runs on record by kind and status", labels=["kind", "status"]
        )
        for (kind, status), n in sorted(counts.items()):
            runs.add_metric([kind, status], float(n))
        success = GaugeMetricFamily(
            "rotator_last_success_timestamp_seconds",
            "When the binding's newest succeeded run ended",
            labels=["binding"],
        )
        for binding, ts in sorted(last_success.items()):
            success.add_metric([binding], ts)
        oldest_metric = GaugeMetricFamily(
            "rotator_oldest_unfinished_run_seconds", "Age of the oldest run that has not ended"
        )
        oldest_metric.add_metric([], oldest)
        yield from (runs, success, oldest_metric)


_registered = False


def register_service_metrics(redis_url: str) -> None:
    """Serve these metrics from this process's default registry (once)."""
    global _registered
    if _registered:
        return
    from worker.adapters.run_store import redis_client

    REGISTRY.register(ServiceCollector(redis_client(redis_url)))
    _registered = True
