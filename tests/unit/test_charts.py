"""The dashboard's server-side SVG charts (web/charts.py): buckets, points drawn, hover texts."""
from __future__ import annotations

import re

import pytest

from web.charts import HEIGHT, Series, Window, bars, lines

NOW = 28_998_885  # Unix minutes: 2025-02-19 02:45 UTC


@pytest.mark.parametrize(("hours", "minutes", "count"), [(1, 1, 60), (6, 5, 72), (24, 10, 144)])
def test_a_window_ends_with_the_bucket_of_now_aligned_to_round_times(hours, minutes, count):
    window = Window.last(hours, now_minute=NOW)
    assert (window.minutes, window.count) == (minutes, count)
    assert window.first % minutes == 0
    assert window.end - minutes < NOW <= window.end  # now is in the last bucket
    assert window.end - window.first + 1 <= hours * 60


def test_buckets_sum_counts_or_keep_the_highest_sample_and_leave_out_other_minutes():
    window = Window.last(24, now_minute=NOW)  # ten-minute buckets; the last is 02:40–02:50
    points = {NOW: 2.0, NOW - 3: 1.0, NOW - 10: 4.0, window.first - 1: 99.0}
    assert window.bucketed(points, sum)[-2:] == [4.0, 3.0]
    assert window.bucketed(points, max)[-2:] == [4.0, 2.0]
    assert window.bucketed(points, sum).count(None) == 142


def titles(svg: str) -> list[str]:
    return re.findall(r"<title>(.*?)</title>", svg)


def test_bars_draw_one_rect_per_non_empty_bucket_with_its_figures_on_hover():
    window = Window.last(24, now_minute=NOW)
    svg = bars([Series("runs finished", {NOW: 3, NOW - 1: 2, NOW - 60: 1}), Series("failed", {NOW: 1})], window)
    assert svg.startswith('<svg class="chart chart-bars" data-points="3"')
    assert titles(svg) == ["Feb 19 01:40–01:50 UTC · runs finished: 1", "Feb 19 02:40–02:50 UTC · runs finished: 5",
                           "Feb 19 02:40–02:50 UTC · failed: 1"]
    assert "no data" not in svg


def test_lines_draw_a_dot_per_sample_and_break_where_samples_are_missing():
    window = Window.last(1, now_minute=NOW)
    svg = lines([Series("Task", {NOW - 5: 40, NOW - 4: 41.5, NOW: 3})], window, unit=" s")
    assert 'data-points="3"' in svg and svg.count("<circle") == 3
    assert titles(svg) == ["Feb 19 02:40 UTC · Task: 40 s", "Feb 19 02:41 UTC · Task: 41.5 s",
                           "Feb 19 02:45 UTC · Task: 3 s"]
    [path] = re.findall(r'<path d="([^"]+)"', svg)
    assert [step[0] for step in path.split()] == ["M", "L", "M"]


def test_a_chart_without_data_says_so_and_labels_are_escaped():
    svg = lines([Series("<Task>", {})], Window.last(6, now_minute=NOW))
    assert 'data-points="0"' in svg and "no data in this window yet" in svg
    assert "&lt;Task&gt;" in svg and "<Task>" not in svg


def axis(svg: str) -> list[str]:
    """The time axis' labels, left to right."""
    return re.findall(rf'<text x="[\d.]+" y="{HEIGHT - 5}" text-anchor="\w+">([^<]*)</text>', svg)


@pytest.mark.parametrize(("hours", "now", "labels"), [
    (1, NOW, ["Feb 19 01:46 UTC", "02:16 UTC", "now"]),  # one day: its date once
    (24, NOW + 11 * 60 + 15, ["Feb 18 14:10 UTC", "Feb 19 02:10 UTC", "now"]),  # past midnight: the new date
])
def test_the_time_axis_says_the_date_where_it_starts_and_where_the_day_changes(hours, now, labels):
    assert axis(bars([Series("runs finished", {now: 1})], Window.last(hours, now_minute=now))) == labels
