"""Intake state and per-secret locks on Redis.

- ``rotator:claim:{arn}:{version}`` hash {run_id, enqueued}: one run per secret version (per
  arrival: ``{version}@{run it follows}`` when AWSCURRENT comes back to a version that had a run);
- ``rotator:newest:{arn}`` hash {version_id, created_at, run_id, claim}: the newest version
  accepted, the run applying it and the claim that run was recorded under; only moved forward
  (a Lua compare-and-set), unless AWSCURRENT itself moved back to an older version;
- ``rotator:lock:{arn}`` string = owning run id, with an expiry the owner renews;
- ``rotator:fence:{arn}`` hash {token, run_id}: the newest fencing token of the secret and its run;
- ``rotator:run:{id}:inflight`` hash "<item>\x1f<entrant>" -> "<lease end ms>|<holder>|<epoch>":
  changes admitted, not left. One entry per entrant (a thread of a holder), so two deliveries of
  one batch switching the same object at once each hold their own: the first to end leaves only
  its own, and a newer run still waits for the other.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from typing import Any

import redis

from worker.adapters.redis_scripts import LuaScript
from worker.adapters.run_store_scripts import ACTIVE
from worker.domain.errors import StateStoreUnavailable
from worker.domain.model import RunStatus
from worker.domain.ports import Admission, Claim, NewestVersion

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


_ISSUE = """
local previous = redis.call('HGET', KEYS[1], 'run_id')
local token = redis.call('HINCRBY', KEYS[1], 'token', 1)
redis.call('HSET', KEYS[1], 'run_id', ARGV[1])
return {token, previous or ''}
"""
# KEYS: the run's record, the secret's fence ('' when unfenced), the run's in-flight hash, the
#       labels epoch, the labels-moving mark
# ARGV: token (0: no token check), item, lease end (ms), ttl (s), '1' to require an active run,
#       '1' for an item exclusive of other processes ('2': of other entrants), now (ms), this
#       process's holder id, the labels epoch the
#       caller read the labels under ('' when it did not), the entrant, the run's sending of its
#       objects the caller's batch belongs to ('0': not checked)
# An in-flight entry is "<lease end ms>|<holder>|<labels epoch>"; it counts while its lease runs
# and its holder's heartbeat key (rotator:alive:<holder>) exists, so a killed worker's entries die
# within seconds.
_ENTER = f"""
local run = redis.call('HMGET', KEYS[1], 'status', 'dispatch')
local raw = run[1]
if not raw then return '{Admission.ENDED}' end
local status = cjson.decode(raw)
if ARGV[5] == '1' then
  if status == '{RunStatus.PAUSED}' then return '{Admission.PAUSED}' end
  local active = {ACTIVE}
  if not active[status] then return '{Admission.ENDED}' end
end
if tonumber(ARGV[1]) > 0 then
  local newest = tonumber(redis.call('HGET', KEYS[2], 'token') or '0')
  if newest ~= tonumber(ARGV[1]) then return '{Admission.SUPERSEDED}' end
end
if ARGV[11] ~= '0' and tonumber(run[2] or '0') ~= tonumber(ARGV[11]) then
  return '{Admission.REDISPATCHED}'
end
if ARGV[6] ~= '0' then
  local entries = redis.call('HGETALL', KEYS[3])
  for i = 1, #entries, 2 do
    local field, held = entries[i], entries[i + 1]
    local cut = string.find(field, '\\31', 1, true)
    if (cut and string.sub(field, 1, cut - 1) or field) == ARGV[2] then
      local sep = string.find(held, '|', 1, true)
      local lease_end = tonumber(string.sub(held, 1, sep - 1))
      local holder = string.sub(held, sep + 1)
      local tail = string.find(holder, '|', 1, true)
      if tail then holder = string.sub(holder, 1, tail - 1) end
      local other = holder ~= ARGV[8]
      if ARGV[6] == '2' then other = not cut or string.sub(field, cut + 1) ~= ARGV[10] end
      if lease_end > tonumber(ARGV[7]) and other
         and redis.call('EXISTS', '{PREFIX}alive:' .. holder) == 1 then
        return '{Admission.BUSY}'
      end
    end
  end
end
if ARGV[9] ~= '' then
  local labels = redis.call('MGET', KEYS[4], KEYS[5])  -- the epoch, and the moving mark
  if (labels[1] or '0') ~= ARGV[9] or labels[2] then return '{Admission.STALE}' end
end
local entry = ARGV[2] .. '\\31' .. ARGV[10]
redis.call('HSET', KEYS[3], entry, ARGV[3] .. '|' .. ARGV[8] .. '|' .. ARGV[9])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return '{Admission.ADMITTED}'
"""
# moved on by ``labels_moved`` whenever the rotator moves a secret's labels (kept, like the fences);
# the mark holds admissions while a key rotation moves AWSCURRENT (``labels_moving``)
LABELS_EPOCH_KEY = f"{PREFIX}labels-epoch"
LABELS_MOVING_KEY = f"{PREFIX}labels-moving"
ENTRANT_SEP = "\x1f"  # between an in-flight entry's item and its entrant (no name holds it)
HEARTBEAT_SECONDS = 5.0  # a process that holds changes in flight says it is alive this often
ALIVE_TTL_MS = 15_000  # and is taken for dead this long after its last word


def _guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StateStoreUnavailable(f"redis unavailable: {exc}") from None


class RedisIntakeState:
    def __init__(self, client: redis.Redis, lease_seconds: float = 30) -> None:
        self.redis = client
        self.lease_seconds = lease_seconds
        self._advance = LuaScript(client, _ADVANCE_NEWEST)
        self._claim = LuaScript(client, _CLAIM)

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
        self._acquire = LuaScript(client, _ACQUIRE)
        self._renew = LuaScript(client, _RENEW)
        self._release = LuaScript(client, _RELEASE)

    def _key(self, secret_arn: str) -> str:
        return f"{PREFIX}lock:{secret_arn}"

    def acquire(self, secret_arn: str, owner: str) -> bool:
        return bool(_guard(self._acquire, keys=[self._key(secret_arn)], args=[owner, self.ttl_ms]))

    def renew(self, secret_arn: str, owner: str) -> bool:
        return bool(_guard(self._renew, keys=[self._key(secret_arn)], args=[owner, self.ttl_ms]))

    def release(self, secret_arn: str, owner: str) -> None:
        _guard(self._release, keys=[self._key(secret_arn)], args=[owner])


class RedisFences:
    """Fences on Redis: ``issue`` and ``enter`` are one Lua call each (atomic).

    Each process is one *holder*: its in-flight entries name it, and a daemon thread keeps its
    heartbeat key alive while it runs, so changes of a killed worker stop counting as in flight
    within ALIVE_TTL_MS instead of blocking abort, pause and newer runs for a whole lease."""

    def __init__(self, client: redis.Redis, ttl_seconds: int = 30 * 24 * 3600) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._issue = LuaScript(client, _ISSUE)
        self._enter = LuaScript(client, _ENTER)
        self._heartbeat: threading.Thread | None = None
        self._starting = threading.Lock()

    @staticmethod
    def _fence(secret_arn: str) -> str:
        return f"{PREFIX}fence:{secret_arn}"

    @staticmethod
    def _inflight(run_id: str) -> str:
        return f"{PREFIX}run:{run_id}:inflight"

    def _beat(self) -> None:
        _guard(self.redis.set, f"{PREFIX}alive:{self.holder}", "1", px=ALIVE_TTL_MS)

    def _keep_alive(self) -> None:
        """Start the heartbeat once, before this process first holds anything (a worker's
        threads all get here at once with its first batches: one of them starts it)."""
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        with self._starting:
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        self._beat()

        def beat_forever() -> None:
            while True:
                time.sleep(HEARTBEAT_SECONDS)
                with contextlib.suppress(StateStoreUnavailable, redis.RedisError):
                    self._beat()

        self._heartbeat = threading.Thread(target=beat_forever, name="rotator-alive", daemon=True)
        self._heartbeat.start()

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
        require_active: bool = True,
        exclusive: bool = False,
        labels_epoch: int | None = None,
        dispatch: int = 0,
        apart: bool = False,
    ) -> Admission:
        self._keep_alive()
        now = time.time()
        fence = self._fence(secret_arn) if secret_arn else f"{PREFIX}fence:-"
        args = [token if secret_arn else 0, item, int((now + lease_seconds) * 1000), self.ttl]
        shared = 1 if exclusive else 2 if apart else 0
        args += [int(require_active), shared, int(now * 1000), self.holder]
        args += ["" if labels_epoch is None else str(labels_epoch), self._entrant(), dispatch]
        keys = [f"{PREFIX}run:{run_id}", fence, self._inflight(run_id), LABELS_EPOCH_KEY]
        keys.append(LABELS_MOVING_KEY)
        result = _guard(self._enter, keys=keys, args=args)
        return Admission(result.decode() if isinstance(result, bytes) else str(result))

    def leave(self, run_id: str, *items: str) -> None:
        """Ends this thread's entries of ``items`` (a thread enters and leaves its own)."""
        if items:
            entrant = self._entrant()
            fields = [f"{item}{ENTRANT_SEP}{entrant}" for item in items]
            _guard(self.redis.hdel, self._inflight(run_id), *fields)

    def _entrant(self) -> str:
        return f"{self.holder}:{threading.get_ident()}"

    def in_flight(self, run_id: str) -> list[str]:
        """Items whose lease runs and whose holder is alive (expired or orphaned ones are
        dropped on the way)."""
        return sorted({item for item, _epoch in self._live(run_id)})

    def in_flight_before(self, epoch: int) -> list[str]:
        """(A scan of every run's in-flight hash: a key's retirement asks, once.)"""
        pattern = self._inflight("*")
        flying = []
        for key in _guard(lambda: list(self.redis.scan_iter(match=pattern, count=1000))):
            run_id = key.decode()[len(f"{PREFIX}run:") : -len(":inflight")]
            flying += [
                f"{run_id}:{item}" for item, at in self._live(run_id) if at not in ("", str(epoch))
            ]
        return sorted(set(flying))

    def _live(self, run_id: str) -> list[tuple[str, str]]:
        """(item, labels epoch it was admitted under, '' for none) of the live entries."""
        entries = _guard(self.redis.hgetall, self._inflight(run_id))
        now = time.time() * 1000
        live: list[tuple[str, str]] = []
        dead: list[bytes] = []
        for item, value in entries.items():
            until, _, rest = value.decode().partition("|")
            holder, _, epoch = rest.partition("|")
            alive = not holder or _guard(self.redis.exists, f"{PREFIX}alive:{holder}")
            if float(until) > now and alive:
                live.append((item.decode().partition(ENTRANT_SEP)[0], epoch))
            else:
                dead.append(item)
        if dead:
            _guard(self.redis.hdel, self._inflight(run_id), *dead)
        return live

    def labels_epoch(self) -> int:
        return int(_guard(self.redis.get, LABELS_EPOCH_KEY) or 0)

    def labels_moving(self, seconds: float) -> None:
        _guard(self.redis.set, LABELS_MOVING_KEY, "1", px=max(1, int(seconds * 1000)))

    def labels_moved(self) -> int:
        def moved() -> int:
            pipe = self.redis.pipeline()
            pipe.incr(LABELS_EPOCH_KEY)
            pipe.delete(LABELS_MOVING_KEY)
            return int(pipe.execute()[0])

        return int(_guard(moved))

    def is_newest(self, secret_arn: str, token: int) -> bool:
        newest = _guard(self.redis.hget, self._fence(secret_arn), "token")
        return newest is not None and int(newest) == token
