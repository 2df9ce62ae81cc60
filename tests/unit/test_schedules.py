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


# Daylight saving time: 2025-10-26 in Berlin (03:00 CEST back to 02:00 CET) and 2025-11-02 in New York
# (02:00 EDT back to 01:00 EST); 2025-03-30 and 2025-03-09 forward.

@pytest.mark.parametrize("cron, tz, day, once", [
    ("30 2 * * *", "Europe/Berlin", "2025-10-26", at("2025-10-26 00:30:00")),  # 02:30 CEST, not 02:30 CET too
    ("30 1 * * *", "America/New_York", "2025-11-02", at("2025-11-02 05:30:00")),  # 01:30 EDT, not 01:30 EST too
    ("0 2 * * 0", "Europe/Berlin", "2025-10-26", at("2025-10-26 00:00:00")),
])
def test_a_fixed_time_the_clocks_pass_twice_fires_once_at_its_first_pass(cron, tz, day, once):
    start, end = at(f"{day} 00:00:00") - timedelta(hours=6), at(f"{day} 00:00:00") + timedelta(hours=18)
    assert ticks_between(cron, tz, start, end) == [once]
    # Each scheduler round asks for a few seconds only: no round in the repeated hour finds the second pass.
    rounds = [once - timedelta(hours=1) + timedelta(seconds=5 * n) for n in range(4 * 720)]  # 5 s apart, 4 hours
    fired = [t for last, now in zip(rounds, rounds[1:]) for t in due_ticks(cron, tz, last=last, now=now)]
    assert fired == [once]
    # Nor does catch-up, nor the next tick a scheduler waits for, seen from inside the repeated hour.
    inside = once + timedelta(hours=1, minutes=15)
    assert latest_tick(cron, tz, inside) == once
    assert due_ticks(cron, tz, last=once, now=inside + timedelta(hours=2), catch_up="latest") == []


def test_the_next_tick_from_the_first_pass_of_the_repeated_hour_is_the_next_day():
    # What `rules list` shows and `rules run --tick` fires: the tick the scheduler will fire, not the second pass.
    from engine.schedules import _next
    assert _next("30 2 * * *", "Europe/Berlin", at("2025-10-26 00:45:00")) == at("2025-10-27 01:30:00")


@pytest.mark.parametrize("cron, tz, start, expected", [
    # An expression that follows elapsed time fires in both passes, every 30 minutes / every hour as on any day.
    ("*/30 * * * *", "Europe/Berlin", "2025-10-25 23:45:00",
     ["2025-10-26 00:00", "2025-10-26 00:30", "2025-10-26 01:00", "2025-10-26 01:30", "2025-10-26 02:00"]),
    ("0 * * * *", "America/New_York", "2025-11-02 04:30:00",
     ["2025-11-02 05:00", "2025-11-02 06:00", "2025-11-02 07:00"]),
    # Spring forward: 02:30 does not exist; it fires once, at 03:00 (Berlin 01:00 UTC, New York 07:00 UTC).
    ("30 2 * * *", "Europe/Berlin", "2025-03-29 06:00:00", ["2025-03-30 01:00", "2025-03-31 00:30"]),
    ("30 2 * * *", "America/New_York", "2025-03-08 12:00:00", ["2025-03-09 07:00", "2025-03-10 06:30"]),
    # Weekdays at 09:00 keep 09:00 local across each change: one hour earlier in UTC after it.
    ("0 9 * * 1-5", "Europe/Berlin", "2025-03-28 06:00:00", ["2025-03-28 08:00", "2025-03-31 07:00"]),
    ("0 9 * * 1-5", "America/New_York", "2025-10-31 06:00:00", ["2025-10-31 13:00", "2025-11-03 14:00"]),
])
def test_schedules_across_daylight_saving_changes(cron, tz, start, expected):
    begin = at(start)
    end = at(expected[-1] + ":00")
    assert ticks_between(cron, tz, begin, end) == [at(t + ":00") for t in expected]


@pytest.mark.parametrize("value", ["0", "1e-9", "-5", "1e12", "86400", "nan", "inf", "five"])
def test_a_schedule_interval_that_would_spin_or_fire_every_missed_tick_stops_the_process_saying_so(value):
    # 0 or 1e-9: the loop never waited, a core spun. 1e12: the grace (two intervals) took in every tick missed while
    # no scheduler ran, so `catch_up: skip` fired them all (a week of a minutely rule: 10,080 runs), and the loop
    # waited 30,000 years for its next round.
    from workers.scheduler import settings_from
    with pytest.raises(SystemExit, match=f"SCHEDULE_INTERVAL={value!r}"):
        settings_from({"SCHEDULE_INTERVAL": value})


@pytest.mark.parametrize("value, interval", [("0.5", 0.5), ("5", 5.0), ("300", 300.0)])
def test_a_schedule_interval_in_bounds_is_taken(value, interval):
    from workers.scheduler import settings_from
    assert settings_from({"SCHEDULE_INTERVAL": value}).interval == interval
