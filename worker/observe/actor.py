"""Who a change is made for: the event id, the schedule, or the CLI user — for the audit trail.

``current()`` answers, in order: an explicit ``acting_as(...)`` scope (the schedule); the event id
the intake bound to the log context (``event:<id>``); the process default (``cli:<user>`` for the
command line, ``worker`` for a worker). A run records its actor when it is created (a key
rotation's table run takes its parent's), so the changes its tasks make later, in another process,
name who asked for them.
"""

from __future__ import annotations

import contextvars
import getpass
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

_explicit: contextvars.ContextVar[str | None] = contextvars.ContextVar("actor", default=None)
_default = "worker"


def cli_user() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (a container's nobody, say)
        return "cli:unknown"


def set_default(actor: str) -> None:
    global _default
    _default = actor


def current() -> str:
    explicit = _explicit.get()
    if explicit:
        return explicit
    event_id = structlog.contextvars.get_contextvars().get("event_id")
    if event_id:
        return f"event:{event_id}"
    return _default


def is_operator(name: str) -> bool:
    """Is ``name`` a person at the command line (``cli:<user>``)?"""
    return name.startswith("cli:")


@contextmanager
def acting_as(actor: str) -> Iterator[None]:
    token = _explicit.set(actor)
    try:
        yield
    finally:
        _explicit.reset(token)
