"""Intake state and per-secret locks on Redis.

- ``rotator:claim:{arn}:{version}`` hash {run_id, enqueued}: one run per secret version (per
  arrival: ``{version}@{run it follows}`` when AWSCURRENT comes back to a version that had a run);
- ``rotator:newest:{arn}`` hash {version_id, created_at, run_id, claim}: the newest version
  accepted, the run applying it and the claim that run was recorded under; only moved forward
  (a Lua compare-and-set), unless AWSCURRENT itself moved back to an older version;
- ``rotator:lock:{arn}`` string = owning run id, with an expiry the owner renews.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from worker.core.ports import Claim, NewestVersion
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
if ARGV[4] == '1' or (not created) or tonumber(created) <= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'version_id', ARGV[1], 'created_at', ARGV[2], 'run_id', ARGV[3],
             'claim', ARGV[5])
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
        key = f"{PREFIX}newest:{secret_arn}"
        version, created, run_id, claim = _guard(
            self.redis.hmget, key, "version_id", "created_at", "run_id", "claim"
        )
        if version is None or created is None:
            return None
        return NewestVersion(
            version.decode(), float(created), (run_id or b"").decode(), (claim or b"").decode()
        )

    def advance_newest(
        self, secret_arn: str, version: NewestVersion, *, moved_back: bool = False
    ) -> None:
        _guard(
            self._advance,
            keys=[f"{PREFIX}newest:{secret_arn}"],
            args=[
                version.version_id,
                repr(version.created_at),
                version.run_id,
                "1" if moved_back else "0",
                version.claim,
            ],
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
