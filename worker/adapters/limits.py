"""Limits shared by every worker through Redis: concurrency slots and a rate schedule per run."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
import structlog

from worker.adapters.redis_scripts import LuaScript
from worker.domain.errors import SlotTimeout, StateStoreUnavailable

PREFIX = "rotator:"
log = structlog.get_logger("rotator.limits")

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
  redis.call('EXPIRE', KEYS[1], 3600)
  return 1
end
return 0
"""
# A shared schedule (a leaky bucket): each caller reserves the next free instant.
_RESERVE = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local at = tonumber(redis.call('GET', KEYS[1]) or '0')
if at < now then at = now end
redis.call('SET', KEYS[1], tostring(at + interval), 'EX', 3600)
return tostring(at - now)
"""


class RedisLimits:
    """Concurrency slots are leases: a holder's process renews them while the table is in flight,
    so the slots of a worker that died (SIGKILL, OOM, lost host) free themselves within
    ``lease`` seconds instead of holding a resumed run up."""

    def __init__(self, client: redis.Redis, lease: float = 30) -> None:
        self.redis = client
        self.lease = lease
        self._acquire = LuaScript(client, _ACQUIRE)
        self._reserve = LuaScript(client, _RESERVE)
        self._held: dict[str, str] = {}  # token -> slots key, for the renewing thread
        self._held_lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    @contextmanager
    def slot(
        self, run_id: str, limit: int, *, wait: float = 60, poll: float = 0.02
    ) -> Iterator[None]:
        """Hold one of ``limit`` concurrency slots of the run (across all workers)."""
        key, token = f"{PREFIX}slots:{run_id}", uuid.uuid4().hex
        deadline = time.monotonic() + wait
        while True:
            now = time.time()
            try:
                got = self._acquire(keys=[key], args=[now, limit, now + self.lease, token])
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise StateStoreUnavailable(f"redis unavailable: {exc}") from None
            if got:
                break
            if time.monotonic() > deadline:
                raise SlotTimeout(f"no free slot for run {run_id} within {wait:.0f}s")
            time.sleep(poll)
        self._hold(token, key)
        try:
            yield
        finally:
            with self._held_lock:
                self._held.pop(token, None)
            self.redis.zrem(key, token)

    def _hold(self, token: str, key: str) -> None:
        with self._held_lock:
            self._held[token] = key
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(
                    target=self._renew_leases, name="rotator-slot-leases", daemon=True
                )
                self._renewer.start()

    def _renew_leases(self) -> None:
        """Every third of a lease, push the expiry of every slot this process holds."""
        while True:
            time.sleep(self.lease / 3)
            with self._held_lock:
                held = list(self._held.items())
            if not held:
                continue
            expiry = time.time() + self.lease
            try:
                with self.redis.pipeline(transaction=False) as pipe:
                    for token, key in held:
                        pipe.zadd(key, {token: expiry}, xx=True)  # a released slot stays gone
                    pipe.execute()
            except redis.RedisError as exc:  # the next round tries again; leases outlast two
                log.warning("could not renew slot leases", error=str(exc))

    def pace(self, run_id: str, per_second: float | None) -> None:
        """Sleep until this caller's turn under a shared rate of ``per_second``."""
        if not per_second:
            return
        delay = float(
            self._reserve(keys=[f"{PREFIX}rate:{run_id}"], args=[time.time(), 1.0 / per_second])
        )
        if delay > 0:
            time.sleep(delay)

    def busy_slots(self, run_id: str) -> int:
        key = f"{PREFIX}slots:{run_id}"
        self.redis.zremrangebyscore(key, "-inf", time.time())
        return int(self.redis.zcard(key))
