"""Claims, newest versions and per-secret locks on a real Valkey server."""

from __future__ import annotations

import time

import redis

from worker.core.ports import NewestVersion
from worker.redis_state import RedisIntakeState, RedisSecretLocks


def test_a_claim_is_leased_to_its_maker_until_enqueued(redis_url: str, unique: str) -> None:
    state = RedisIntakeState(redis.Redis.from_url(redis_url), lease_seconds=0.3)
    first = state.claim(f"arn-{unique}", "v1", "run-a")
    assert (first.run_id, first.enqueued, first.mine) == ("run-a", False, True)
    second = state.claim(f"arn-{unique}", "v1", "run-b")
    assert (second.run_id, second.enqueued, second.mine) == ("run-a", False, False)
    time.sleep(0.4)  # the first handler died: its lease runs out
    taken = state.claim(f"arn-{unique}", "v1", "run-c")
    assert (taken.run_id, taken.mine) == ("run-a", True)
    state.mark_enqueued(f"arn-{unique}", "v1")
    done = state.claim(f"arn-{unique}", "v1", "run-d")
    assert (done.run_id, done.enqueued, done.mine) == ("run-a", True, False)


def test_newest_only_moves_forward(redis_url: str, unique: str) -> None:
    state = RedisIntakeState(redis.Redis.from_url(redis_url))
    arn = f"arn-{unique}"
    assert state.newest(arn) is None
    state.advance_newest(arn, NewestVersion("v2", 20.0))
    state.advance_newest(arn, NewestVersion("v1", 10.0))
    assert state.newest(arn) == NewestVersion("v2", 20.0)
    state.advance_newest(arn, NewestVersion("v3", 20.0))  # a tie: the later acceptance wins
    assert state.newest(arn) == NewestVersion("v3", 20.0)


def test_locks_exclude_expire_and_belong_to_their_owner(redis_url: str, unique: str) -> None:
    locks = RedisSecretLocks(redis.Redis.from_url(redis_url), ttl_seconds=0.3)
    arn = f"arn-{unique}"
    assert locks.acquire(arn, "run-1")
    assert locks.acquire(arn, "run-1"), "re-entrant for its owner"
    assert not locks.acquire(arn, "run-2")
    locks.release(arn, "run-2")  # not the owner: no effect
    assert not locks.acquire(arn, "run-2")
    assert locks.renew(arn, "run-1") and not locks.renew(arn, "run-2")
    time.sleep(0.4)
    assert locks.acquire(arn, "run-2"), "an expired lock is free"
    locks.release(arn, "run-2")
    assert locks.acquire(arn, "run-3")
