"""Intake state and per-secret locks on Redis.

- ``rotator:claim:{arn}:{version}`` hash {run_id, enqueued}: one run per secret version;
- ``rotator:newest:{arn}`` hash {version_id, created_at}: the newest version accepted, only ever
  moved forward (a Lua compare-and-set);
- ``rotator:lock:{arn}`` string = owning run id, with an expiry the owner renews;
- ``rotator:fence:{arn}`` hash {token, run_id}: the newest fencing token of the secret and its run;
- ``rotator:run:{id}:inflight`` hash item -> lease end (ms): changes admitted and not yet left.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from worker.core.model import RunStatus
from worker.core.ports import Admission, Claim, NewestVersion
from worker.errors import StateStoreUnavailable

PREFIX = "rotator:"
CLAIM_TTL_SECONDS = 30 * 24 * 3600

_CLAIM = """
local run_id = redis.call('HGET', KEYS[1], 'run_id')
if not run_id then
  redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'lease_until', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {ARGV[1], 0, 1}
end
if redis.call('HGET', KEYS[1], 'enqueued') == '1' then
  return {run_id, 1, 0}
end
if tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0') < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'lease_until', ARGV[2])
  return {run_id, 0, 1}
end
return {run_id, 0, 0}
"""
_ADVANCE_NEWEST = """
local created = redis.call('HGET', KEYS[1], 'created_at')
if (not created) or tonumber(created) <= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'version_id', ARGV[1], 'created_at', ARGV[2])
  return 1
end
return 0
"""
_ACQUIRE = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


_ISSUE = """
local previous = redis.call('HGET', KEYS[1], 'run_id')
local token = redis.call('HINCRBY', KEYS[1], 'token', 1)
redis.call('HSET', KEYS[1], 'run_id', ARGV[1])
return {token, previous or ''}
"""
_ACTIVE = "{" + ", ".join(f"['{s}'] = true" for s in RunStatus if s.active) + "}"
# KEYS: the run's record, the secret's fence ('' when unfenced), the run's in-flight hash
# ARGV: token (0: no token check), item, lease end (ms), ttl (s)
_ENTER = f"""
local raw = redis.call('HGET', KEYS[1], 'status')
if not raw then return '{Admission.ENDED}' end
local status = cjson.decode(raw)
if status == '{RunStatus.PAUSED}' then return '{Admission.PAUSED}' end
local active = {_ACTIVE}
if not active[status] then return '{Admission.ENDED}' end
if tonumber(ARGV[1]) > 0 then
  local newest = tonumber(redis.call('HGET', KEYS[2], 'token') or '0')
  if newest ~= tonumber(ARGV[1]) then return '{Admission.SUPERSEDED}' end
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return '{Admission.ADMITTED}'
"""


def _guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StateStoreUnavailable(f"redis unavailable: {exc}") from None


class RedisIntakeState:
    def __init__(self, client: redis.Redis, lease_seconds: float = 30) -> None:
        self.redis = client
        self.lease_seconds = lease_seconds
        self._advance = client.register_script(_ADVANCE_NEWEST)
        self._claim = client.register_script(_CLAIM)

    def claim(self, secret_arn: str, version_id: str, run_id: str) -> Claim:
        now = time.time()
        run, enqueued, mine = _guard(
            self._claim,
            keys=[f"{PREFIX}claim:{secret_arn}:{version_id}"],
            args=[run_id, repr(now + self.lease_seconds), repr(now), CLAIM_TTL_SECONDS],
        )
        return Claim(
            run_id=run.decode() if isinstance(run, bytes) else str(run),
            enqueued=bool(enqueued),
            mine=bool(mine),
        )

    def mark_enqueued(self, secret_arn: str, version_id: str) -> None:
        _guard(self.redis.hset, f"{PREFIX}claim:{secret_arn}:{version_id}", "enqueued", "1")

    def newest(self, secret_arn: str) -> NewestVersion | None:
        version, created = _guard(
            self.redis.hmget, f"{PREFIX}newest:{secret_arn}", "version_id", "created_at"
        )
        if version is None or created is None:
            return None
        return NewestVersion(version.decode(), float(created))

    def advance_newest(self, secret_arn: str, version: NewestVersion) -> None:
        _guard(
            self._advance,
            keys=[f"{PREFIX}newest:{secret_arn}"],
            args=[version.version_id, repr(version.created_at)],
        )


class RedisSecretLocks:
    def __init__(self, client: redis.Redis, ttl_seconds: float = 600) -> None:
        self.redis = client
        self.ttl_ms = int(ttl_seconds * 1000)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def _key(self, secret_arn: str) -> str:
        return f"{PREFIX}lock:{secret_arn}"

    def acquire(self, secret_arn: str, owner: str) -> bool:
        return bool(_guard(self._acquire, keys=[self._key(secret_arn)], args=[owner, self.ttl_ms]))

    def renew(self, secret_arn: str, owner: str) -> bool:
        return bool(_guard(self._renew, keys=[self._key(secret_arn)], args=[owner, self.ttl_ms]))

    def release(self, secret_arn: str, owner: str) -> None:
        _guard(self._release, keys=[self._key(secret_arn)], args=[owner])


class RedisFences:
    """Fences on Redis: ``issue`` and ``enter`` are one Lua call each (atomic)."""

    def __init__(self, client: redis.Redis, ttl_seconds: int = 30 * 24 * 3600) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._issue = client.register_script(_ISSUE)
        self._enter = client.register_script(_ENTER)

    @staticmethod
    def _fence(secret_arn: str) -> str:
        return f"{PREFIX}fence:{secret_arn}"

    @staticmethod
    def _inflight(run_id: str) -> str:
        return f"{PREFIX}run:{run_id}:inflight"

    def issue(self, secret_arn: str, run_id: str) -> tuple[int, str | None]:
        token, previous = _guard(self._issue, keys=[self._fence(secret_arn)], args=[run_id])
        previous = previous.decode() if isinstance(previous, bytes) else str(previous)
        return int(token), previous or None

    def enter(
        self,
        run_id: str,
        item: str,
        *,
        secret_arn: str | None = None,
        token: int = 0,
        lease_seconds: float = 600,
    ) -> Admission:
        until = int((time.time() + lease_seconds) * 1000)
        fence = self._fence(secret_arn) if secret_arn else f"{PREFIX}fence:-"
        result = _guard(
            self._enter,
            keys=[f"{PREFIX}run:{run_id}", fence, self._inflight(run_id)],
            args=[token if secret_arn else 0, item, until, self.ttl],
        )
        return Admission(result.decode() if isinstance(result, bytes) else str(result))

    def leave(self, run_id: str, item: str) -> None:
        _guard(self.redis.hdel, self._inflight(run_id), item)

    def in_flight(self, run_id: str) -> list[str]:
        entries = _guard(self.redis.hgetall, self._inflight(run_id))
        now = time.time() * 1000
        live = [k.decode() for k, until in entries.items() if float(until) > now]
        expired = [k for k, until in entries.items() if float(until) <= now]
        if expired:
            _guard(self.redis.hdel, self._inflight(run_id), *expired)
        return sorted(live)

    def is_newest(self, secret_arn: str, token: int) -> bool:
        newest = _guard(self.redis.hget, self._fence(secret_arn), "token")
        return newest is not None and int(newest) == token
