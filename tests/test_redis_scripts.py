"""Lua scripts sent on a connection each thread keeps (worker/adapters/redis_scripts.py), on a
real Valkey: the same replies and errors as redis-py's Script, recovering from a flushed script
cache and a dropped connection."""

from __future__ import annotations

import threading

import pytest
import redis

from worker.adapters.redis_scripts import LuaScript, ThreadConnections
from worker.adapters.run_store import redis_client

COUNT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAILS = "return redis.error_reply('refused: ' .. ARGV[1])"


def test_the_process_client_keeps_one_connection_per_thread(redis_url: str, unique: str) -> None:
    client = redis_client(redis_url)
    assert isinstance(client, ThreadConnections)
    count = LuaScript(client, COUNT)
    assert count(keys=[unique], args=[2]) == 2
    assert count(keys=[unique], args=[3]) == 5
    mine = client.thread_connection()
    assert client.thread_connection() is mine  # reused, call after call

    theirs: list[object] = []

    def other_thread() -> None:
        count(keys=[unique], args=[1])
        theirs.append(client.thread_connection())

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert theirs and theirs[0] is not mine
    assert int(client.get(unique) or 0) == 6


def test_a_flushed_script_cache_is_loaded_again(redis_url: str, unique: str) -> None:
    client = redis_client(redis_url)
    count = LuaScript(client, COUNT)
    assert count(keys=[unique], args=[1]) == 1
    client.script_flush()  # a restart or an operator's SCRIPT FLUSH: NOSCRIPT on the next call
    assert count(keys=[unique], args=[1]) == 2
    assert count(keys=[unique], args=[1]) == 3


def test_a_dropped_connection_is_replaced(redis_url: str, unique: str) -> None:
    client = redis_client(redis_url)
    count = LuaScript(client, COUNT)
    assert count(keys=[unique], args=[1]) == 1
    dropped = client.thread_connection()
    dropped.send_command("CLIENT", "ID")
    redis.Redis.from_url(redis_url).client_kill_filter(_id=dropped.read_response())
    assert count(keys=[unique], args=[1]) == 2  # sent once more, on a new connection
    assert client.thread_connection() is not dropped
    assert count(keys=[unique], args=[1]) == 3


def test_a_scripts_own_error_is_raised_and_the_connection_kept(redis_url: str, unique: str) -> None:
    client = redis_client(redis_url)
    fails, count = LuaScript(client, FAILS), LuaScript(client, COUNT)
    with pytest.raises(redis.ResponseError, match="refused: no"):
        fails(keys=[unique], args=["no"])
    kept = client.thread_connection()
    assert count(keys=[unique], args=[4]) == 4
    assert client.thread_connection() is kept


def test_any_other_client_goes_through_redis_pys_script(redis_url: str, unique: str) -> None:
    plain = redis.Redis.from_url(redis_url)
    count = LuaScript(plain, COUNT)
    assert count(keys=[unique], args=[5]) == 5
    plain.script_flush()
    assert count(keys=[unique], args=[1]) == 6
