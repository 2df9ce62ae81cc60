"""Schedule ticks as a pure function of (cron, time zone, last, now): on time, missed, catch-up."""
from datetime import datetime, timedelta, timezone

import pytest

from engine.schedules import due_ticks, latest_tick, ticks_between

UTC = timezone.utc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_tick_since_the_last_look_is_due():
    assert due_ticks("* * * * *", "UTC", last=at("2025-04-01 10:00:30"), now=at("2025-04-01 10:01:02")) \
        == [at("2025-04-01 10:01:00")]


def test_nothing_is_due_between_ticks():
    assert due_ticks("* * * * *", "UTC", last=at("2025-04-01 10:01:00"), now=at("2025-04-01 10:01:59")) == []


def test_a_tick_exactly_at_now_is_due_and_not_again_later():
    first = due_ticks("0 9 * * *", "UTC", last=at("2025-04-01 08:59:58"), now=at("2025-04-01 09:00:00"))
    again = due_ticks("0 9 * * *", "UTC", last=at("2025-04-01 09:00:00"), now=at("2025-04-01 09:00:05"))
    assert (first, again) == ([at("2025-04-01 09:00:00")], [])


def test_first_sight_of_a_rule_fires_nothing():
    assert due_ticks("* * * * *", "UTC", last=None, now=at("2025-04-01 10:00:00")) == []


def test_the_cron_is_read_in_the_triggers_time_zone():
    # 09:00 in Berlin is 07:00 UTC in summer time
    assert due_ticks("0 9 * * 1-5", "Europe/Berlin", last=at("2025-04-01 06:59:00"), now=at("2025-04-01 07:00:10")) \
        == [at("2025-04-01 07:00:00")]


DOWNTIME = {"last": at("2025-04-01 06:00:00"), "now": at("2025-04-03 12:00:00")}  # two days without a scheduler


@pytest.mark.parametrize("catch_up, expected", [
    ("skip", []),
    ("latest", [at("2025-04-03 07:00:00")]),  # only the most recent of the three missed 09:00 Berlin ticks
])
def test_catch_up_after_downtime(catch_up, expected):
    assert due_ticks("0 9 * * *", "Europe/Berlin", catch_up=catch_up, **DOWNTIME) == expected


@pytest.mark.parametrize("catch_up", ["skip", "latest"])
def test_an_on_time_tick_after_downtime_fires_alone(catch_up):
    # missed ticks all night, and the 10:00 tick is 20 s old: it fires, the missed ones do not
    due = due_ticks("0 * * * *", "UTC", last=at("2025-04-01 01:30:00"), now=at("2025-04-01 10:00:20"),
                    catch_up=catch_up)
    assert due == [at("2025-04-01 10:00:00")]


def test_latest_does_not_fire_a_tick_already_handled():
    assert due_ticks("0 9 * * *", "UTC", last=at("2025-04-01 09:00:00"), now=at("2025-04-01 12:00:00"),
                     catch_up="latest") == []


def test_a_late_scheduler_still_fires_within_the_grace():
    due = due_ticks("0 9 * * *", "UTC", last=at("2025-04-01 08:59:00"), now=at("2025-04-01 09:01:30"),
                    grace=timedelta(minutes=2))
    assert due == [at("2025-04-01 09:00:00")]


def test_ticks_between_is_exclusive_then_inclusive_and_handles_the_dst_gap():
    # 02:30 does not exist in Berlin on 2025-03-30; croniter moves it to 03:00 (01:00 UTC)
    ticks = ticks_between("30 2 * * *", "Europe/Berlin", at("2025-03-29 01:30:00"), at("2025-03-31 00:30:00"))
    assert ticks == [at("2025-03-30 01:00:00"), at("2025-03-31 00:30:00")]
    assert latest_tick("30 2 * * *", "Europe/Berlin", at("2025-03-31 00:30:00")) == at("2025-03-31 00:30:00")
