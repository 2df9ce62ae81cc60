"""The per-minute series' keys, window and which counters feed them (workers/series.py), without Redis."""
from __future__ import annotations

import pytest

from workers import series

MINUTE = 29_000_000  # Unix minutes: 2025-02-19 21:20 UTC


def test_the_minutes_of_one_hour_share_a_hash_and_the_next_hour_has_its_own():
    hour_start = MINUTE - MINUTE % 60
    keys = {series.hour_key("ws:acme:", "runs", m) for m in range(hour_start, hour_start + 60)}
    assert keys == {f"ws:acme:series:runs:{hour_start // 60}"}
    assert series.hour_key("ws:acme:", "runs", hour_start + 60) == f"ws:acme:series:runs:{hour_start // 60 + 1}"


def test_an_hour_is_kept_until_its_last_minute_is_a_day_old():
    assert series.KEEP_SECONDS >= series.SPAN_MINUTES * 60 + 3600


def test_the_window_leaves_out_minutes_before_it_and_after_now_oldest_first():
    oldest_hour = {str(MINUTE - 1440).encode(): b"9", str(MINUTE - 1439).encode(): b"2"}
    this_hour = {str(MINUTE).encode(): b"1.5", str(MINUTE + 1).encode(): b"7"}  # a clock ahead of ours
    points = series.in_window([this_hour, oldest_hour], first=MINUTE - 1439, last=MINUTE)
    assert list(points.items()) == [(MINUTE - 1439, 2.0), (MINUTE, 1.5)]


@pytest.mark.parametrize(("name", "labels", "followed"), [
    ("runs", {"status": "succeeded"}, ("runs",)),
    ("runs", {"status": "shadow"}, ("runs",)),
    ("runs", {"status": "failed"}, ("runs", "failures")),
    ("runs", {"status": "queued"}, ()),  # not finished: counted again when it finishes
    ("runs", {"status": "retrying"}, ()),
    ("steps", {"status": "done"}, ()),
])
def test_finished_runs_and_failures_are_the_counters_kept_per_minute(name, labels, followed):
    assert series.counted(name, labels) == followed
