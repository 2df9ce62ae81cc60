"""The adaptive poll interval (workers/poller/pace.py): time is passed in, never slept on."""
from __future__ import annotations

import pytest

from workers.poller.pace import Pace, SetPace

FEED = Pace(active=2, idle_after=60, ceiling=30)
SCAN = Pace(active=60, idle_after=60, ceiling=600)


@pytest.mark.parametrize("quiet, expected", [
    (0, 2), (59.9, 2), (60, 4), (119, 4), (120, 8), (180, 16), (240, 30), (3600, 30), (10 ** 9, 30),
])
def test_a_quiet_feed_doubles_its_interval_every_idle_period_up_to_the_ceiling(quiet, expected):
    assert FEED.interval(quiet) == expected


@pytest.mark.parametrize("quiet, expected", [(0, 60), (60, 120), (120, 240), (180, 480), (240, 600), (86400, 600)])
def test_a_quiet_scan_backs_off_from_its_own_interval_to_ten_minutes(quiet, expected):
    assert SCAN.interval(quiet) == expected


def test_the_issue_targets_hold_on_the_default_curve():
    # Active in the last minute: polled every 2 s; idle for an hour: every 30 s (a poll on top stays under 35 s).
    assert max(FEED.interval(q) for q in range(0, 61)) <= 5
    assert FEED.interval(3600) <= 30


def test_no_backoff_when_idle_after_is_zero_and_never_below_the_active_interval():
    assert Pace(active=2, idle_after=0, ceiling=30).interval(3600) == 2
    assert Pace(active=60, idle_after=60, ceiling=30).interval(3600) == 60  # a ceiling below the scan interval


def test_a_set_polled_while_quiet_is_due_one_backed_off_interval_later():
    pace = SetPace(FEED, lively_at=1000.0)
    assert pace.due(1000.0)
    assert pace.started(1300.0) == 30
    assert not pace.due(1329.0) and pace.due(1330.0)


def test_activity_brings_a_quiet_set_back_to_its_active_interval_at_once():
    pace = SetPace(FEED, lively_at=1000.0)
    pace.started(1300.0)  # next due at 1330
    pace.lively(1310.0)  # a webhook to the workspace
    assert pace.due(1310.0)  # 1300 + 2 has passed
    assert pace.started(1310.0) == 2


def test_old_activity_changes_nothing():
    pace = SetPace(FEED, lively_at=1000.0)
    pace.started(1300.0)
    pace.lively(900.0)
    assert not pace.due(1310.0)
