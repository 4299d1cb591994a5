"""Schedules: parsing the binding keys, windows in UTC cron, and the five states."""

from __future__ import annotations

import datetime as dt

import pytest

from worker.domain.bindings import parse_bindings
from worker.domain.errors import ConfigError
from worker.domain.schedule import (
    SchedulePolicy,
    ScheduleState,
    decide,
    parse_interval,
    window_at,
)

DAY = 86400.0


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def binding(extra: str) -> str:
    return f'[[bindings]]\nname = "b"\nsecret = "s"\nconnection_prefix = "p"\n{extra}\n'


def test_binding_keys_parse_into_a_policy() -> None:
    (b,) = parse_bindings(
        binding('rotate_every = "90d"\nwindow = "0 2 * * SUN"\nwindow_duration = "3h"')
    )
    assert b.schedule == SchedulePolicy(90 * DAY, "0 2 * * SUN", 3 * 3600)
    (plain,) = parse_bindings(binding(""))
    assert not plain.schedule.active


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('rotate_every = "90"', "unit s, m, h or d"),
        ('rotate_every = "0d"', "more than zero"),
        ('rotate_every = "3w"', "unit s, m, h or d"),
        ('rotate_every = "1d"\nwindow = "0 2 * *"', "5-field cron"),
        ('rotate_every = "1d"\nwindow = "0 25 * * *"', "not a valid cron"),
        ('rotate_every = "1d"\nwindow = "0 2 * * * *"', "5-field cron"),
        ('rotate_every = "1d"\nwindow = "0 2 30 2 *"', "never opens"),
        ('rotate_every = "1d"\nwindow = "0 2 31 4 *"', "never opens"),
        ('rotate_every = "infd"', "finite"),
        ('rotate_every = "1e12d"', "longer than 100 years"),
        ('window = "0 2 * * *"', "need 'rotate_every'"),
        ('rotate_every = "1d"\nwindow_duration = "1h"', "needs 'window'"),
    ],
)
def test_bad_schedule_keys_name_the_line(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_bindings(binding(extra))
    assert "line 5" in str(info.value) or "line 6" in str(info.value)


def test_intervals() -> None:
    assert parse_interval("45s") == 45
    assert parse_interval("30m") == 1800
    assert parse_interval("12h") == 43200
    assert parse_interval("1.5d") == 1.5 * DAY
    assert parse_interval("36500d") == 36500 * DAY
    for huge in ("1e20s", "99999999999999999999d", "1e400d"):
        with pytest.raises(ValueError, match=r"longer than 100 years|finite"):
            parse_interval(huge, "--since")
    (leap,) = parse_bindings(binding('rotate_every = "1d"\nwindow = "0 2 29 2 *"'))
    assert leap.schedule.window == "0 2 29 2 *", "29 February comes every fourth year"


def test_a_window_is_open_from_its_start_for_its_duration() -> None:
    sunday_2am = at("2026-11-29T02:00:00")  # a Sunday
    open_, start = window_at("0 2 * * SUN", 3 * 3600, sunday_2am)
    assert open_ and start == sunday_2am
    open_, start = window_at("0 2 * * SUN", 3 * 3600, sunday_2am + 3 * 3600 - 1)
    assert open_ and start == sunday_2am
    open_, start = window_at("0 2 * * SUN", 3 * 3600, sunday_2am + 3 * 3600)
    assert not open_ and start == sunday_2am + 7 * DAY
    open_, start = window_at("0 2 * * SUN", 3 * 3600, sunday_2am - 60)
    assert not open_ and start == sunday_2am


def test_the_five_states() -> None:
    now = at("2026-11-26T12:00:00")
    every = SchedulePolicy(rotate_every=90 * DAY)
    assert decide(SchedulePolicy(), key_age=400 * DAY, now=now, rotating=False).state == (
        ScheduleState.NO_POLICY
    )
    assert decide(every, key_age=10 * DAY, now=now, rotating=False).state == ScheduleState.NOT_DUE
    assert decide(every, key_age=91 * DAY, now=now, rotating=False).state == ScheduleState.DUE
    assert decide(every, key_age=None, now=now, rotating=False).state == ScheduleState.NOT_DUE
    assert decide(every, key_age=91 * DAY, now=now, rotating=True).state == ScheduleState.ROTATING
    hours_away = SchedulePolicy(90 * DAY, "0 18 * * *", 3600)
    verdict = decide(hours_away, key_age=91 * DAY, now=now, rotating=False)
    assert verdict.state == ScheduleState.WAITING_FOR_WINDOW
    assert verdict.next_window_start == at("2026-11-26T18:00:00")
    inside = SchedulePolicy(90 * DAY, "0 11 * * *", 2 * 3600)
    verdict = decide(inside, key_age=91 * DAY, now=now, rotating=False)
    assert verdict.state == ScheduleState.DUE and verdict.next_window_start == at(
        "2026-11-26T11:00:00"
    )
