"""Rotation schedules: when a binding's key is due for rotation, and whether now is a time to do it.

A binding may say ``rotate_every = "90d"`` (units s, m, h, d) and, optionally, ``window = "<5-field
cron, UTC>"`` with ``window_duration = "3h"`` (default 1h): a window opens at each time the cron
expression names and stays open for the duration. ``decide`` turns (policy, key age, now, whether a
key rotation of the secret is unfinished) into one of five states; only ``due`` starts a rotation.
Pure: the key's age comes from IAM through the caller, time is passed in.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from enum import StrEnum

from croniter import CroniterError, croniter

DEFAULT_WINDOW_DURATION = 3600.0
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ScheduleState(StrEnum):
    NO_POLICY = "no_policy"  # the binding has no rotate_every
    NOT_DUE = "not_due"  # the key is younger than rotate_every
    DUE = "due"  # older, and inside a window (or there is none): the schedule starts a rotation
    WAITING_FOR_WINDOW = "waiting_for_window"  # older, but no window is open now
    ROTATING = "rotating"  # a key rotation of the secret has not ended: never a second one


@dataclass(frozen=True)
class SchedulePolicy:
    rotate_every: float | None = None  # seconds
    window: str | None = None  # 5-field cron, UTC
    window_duration: float = DEFAULT_WINDOW_DURATION  # seconds

    @property
    def active(self) -> bool:
        return self.rotate_every is not None


@dataclass(frozen=True)
class ScheduleVerdict:
    state: ScheduleState
    next_window_start: float | None  # the open window's start while one is open, else the next


MAX_INTERVAL_SECONDS = 100 * 365 * 86400.0


def parse_interval(text: str, what: str = "duration") -> float:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"45s"`` -> seconds (> 0). Raises ValueError."""
    if not isinstance(text, str):
        raise ValueError(f'{what} must be a string such as "90d"')
    value = text.strip().lower()
    if len(value) < 2 or value[-1] not in _UNITS:
        raise ValueError(f'{what} {text!r}: use a number and a unit s, m, h or d (e.g. "90d")')
    try:
        seconds = float(value[:-1]) * _UNITS[value[-1]]
    except ValueError:
        raise ValueError(f"{what} {text!r}: use a number and a unit s, m, h or d") from None
    if not math.isfinite(seconds):
        raise ValueError(f"{what} {text!r} must be a finite number")
    if not seconds > 0:
        raise ValueError(f"{what} {text!r} must be more than zero")
    if seconds > MAX_INTERVAL_SECONDS:  # past it, dates overflow (Python's and the platform's)
        raise ValueError(f"{what} {text!r} is longer than 100 years")
    return seconds


def check_window(expression: str) -> str:
    """A 5-field cron expression (minute hour day month weekday, UTC). Raises ValueError."""
    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise ValueError(
            f"window {expression!r} must be a 5-field cron expression "
            '(minute hour day-of-month month day-of-week, UTC), e.g. "0 2 * * SUN"'
        )
    if not croniter.is_valid(expression):
        raise ValueError(f"window {expression!r} is not a valid cron expression")
    try:  # valid fields may still name no date at all (30 February, 31 April)
        croniter(expression, _utc(0)).get_next(dt.datetime)
    except CroniterError:
        raise ValueError(f"window {expression!r} never opens: it names no date") from None
    return expression


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def window_at(expression: str, duration: float, now: float) -> tuple[bool, float]:
    """(is a window open at ``now``, the open window's start or else the next one's)."""
    # the last start at or before now (croniter's get_prev is strictly before its base)
    last = croniter(expression, _utc(now + 1)).get_prev(dt.datetime).timestamp()
    if last <= now < last + duration:
        return True, last
    return False, croniter(expression, _utc(now)).get_next(dt.datetime).timestamp()


def decide(
    policy: SchedulePolicy, *, key_age: float | None, now: float, rotating: bool
) -> ScheduleVerdict:
    """The binding's state now. An unknown key age is never due: nothing starts on a guess."""
    next_start = None
    is_open = True
    if policy.window is not None:
        is_open, next_start = window_at(policy.window, policy.window_duration, now)
    if rotating:
        return ScheduleVerdict(ScheduleState.ROTATING, next_start)
    if policy.rotate_every is None:
        return ScheduleVerdict(ScheduleState.NO_POLICY, next_start)
    if key_age is None or key_age < policy.rotate_every:
        return ScheduleVerdict(ScheduleState.NOT_DUE, next_start)
    if not is_open:
        return ScheduleVerdict(ScheduleState.WAITING_FOR_WINDOW, next_start)
    return ScheduleVerdict(ScheduleState.DUE, next_start)
