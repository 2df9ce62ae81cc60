"""Relative times with the exact time on hover (web/times.py)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from web.times import ago, relative

NOW = datetime(2025, 4, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "just now"), (4.9, "just now"), (42, "42 s ago"), (59.9, "59 s ago"), (60, "1 min ago"),
    (3 * 60 + 59, "3 min ago"), (2 * 3600 + 1, "2 h ago"), (86400, "1 day ago"), (3 * 86400, "3 days ago"),
    (-300, "in 5 min"),  # another host's clock ahead of ours
])
def test_a_difference_is_said_in_its_largest_unit(seconds, shown):
    assert relative(seconds) == shown


@pytest.mark.parametrize("value", [
    "2025-04-01T11:57:00+00:00",  # a run's created_at
    "2025-04-01T13:57:00+02:00",  # another offset, shown in UTC
    datetime(2025, 4, 1, 11, 57),  # naive: UTC
    (NOW - timedelta(minutes=3)).timestamp(),  # the event log's accepted_at
])
def test_a_time_shows_how_long_ago_with_the_exact_utc_time_on_hover(value):
    assert ago(value, now=NOW) == ('<time datetime="2025-04-01T11:57:00+00:00" '
                                   'title="2025-04-01 11:57:00 UTC">3 min ago</time>')


def test_no_time_shows_nothing_and_other_text_as_it_is():
    assert ago(None, now=NOW) == "" and ago("", now=NOW) == ""
    assert ago("<soon>", now=NOW) == "&lt;soon&gt;"
