"""The rotator's Lua scripts, sent the short way: EVALSHA written and read on a connection the
calling thread keeps.

redis-py's path for one command (a connection out of the pool and back under its lock, the
retry wrapper, the observability hooks) cost about 140 µs of the worker's CPU per call with 8
task threads contending for the GIL, against about 75 µs for the same EVALSHA on a connection
the thread keeps (measured on Valkey, one process). The admission right before every object's
change is such a call, once per object; so are a batch's writes. The reply is redis-py's own
(its connection and parser), and so are the errors: a script the server does not know
(NOSCRIPT, after a restart or a SCRIPT FLUSH) is loaded and sent once more; a broken connection
is dropped and the call sent once more on a new one, as redis-py's default retry does; a
timeout is not retried (the script may have run) and reaches the caller as redis-py's
``TimeoutError``.

A client made by ``redis_client`` (worker/adapters/run_store.py) is a ``ThreadConnections``; a
script on any other ``redis.Redis`` (a test's) goes through redis-py's ``Script`` unchanged.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
from redis.exceptions import NoScriptError


class ThreadConnections(redis.Redis):
    """``redis.Redis`` that also gives each thread a connection of its own for ``LuaScript``
    (made with the pool's settings; closed when the thread ends, or on a fork)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._threads = threading.local()

    def thread_connection(self, *, fresh: bool = False) -> Any:
        held = getattr(self._threads, "held", None)
        if held is not None and held[0] == os.getpid() and not fresh:
            return held[1]
        if held is not None:
            held[1].disconnect()
        pool = self.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)
        self._threads.held = (os.getpid(), connection)
        return connection


class LuaScript:
    """A script called as redis-py's ``Script`` is: ``script(keys=[...], args=[...])``."""

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.client = client
        self.script = client.register_script(source)  # computes the SHA1; loads on first use

    def __call__(self, *, keys: list[Any], args: list[Any]) -> Any:
        if not isinstance(self.client, ThreadConnections):
            return self.script(keys=keys, args=args)
        command = ("EVALSHA", self.script.sha, len(keys), *keys, *args)
        connection = self.client.thread_connection()
        try:
            return _send(connection, command)
        except NoScriptError:
            _send(connection, ("SCRIPT", "LOAD", self.script.script))
        except redis.ConnectionError:  # a connection the server or the network dropped
            connection = self.client.thread_connection(fresh=True)
        return _send(connection, command)


def _send(connection: Any, command: tuple[Any, ...]) -> Any:
    """One command and its reply. Anything but the server's own error reply leaves the
    connection closed: a reply may still be on its way, and must never be read as another's."""
    try:
        connection.send_command(*command)
        return connection.read_response()
    except redis.ResponseError:  # (NOSCRIPT, or the script's own error): the connection is fine
        raise
    except BaseException:
        connection.disconnect()
        raise
