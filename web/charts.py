"""The dashboard's charts as server-side SVG: bars for counts, lines for sampled gauges.

No JavaScript, nothing fetched, no build step: each chart is an `<svg class="chart">` drawn here from
per-minute series (workers/series.py), with one <rect> or <circle> of class `point` per data point and a
<title> the browser shows on hover. `data-points` on the svg says how many points it drew.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from markupsafe import Markup, escape

WINDOWS = {1: 1, 6: 5, 24: 10}  # hours a chart shows → minutes per bar or point (at most 144 of them)
PALETTE = ("#3b6ea8", "#1b7f3b", "#a15c00", "#6a3ea8", "#00838f", "#5d4037", "#757575")  # in turn
BAD = "#b00020"  # failures and throttling, as the pages' own red
WIDTH, HEIGHT = 720, 180
DAY = 24 * 60  # minutes: windows of whole days are labelled by date
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 24, 20  # margins around the plot; the legend sits in the top one


@dataclass(frozen=True)
class Window:
    """The minutes a chart shows: `count` buckets of `minutes` each, aligned to whole multiples of `minutes`."""

    first: int  # the first bucket's first minute (Unix time // 60)
    minutes: int
    count: int

    @classmethod
    def last(cls, hours: int, *, now_minute: int) -> Window:
        """The last `hours` (one of WINDOWS) up to `now_minute`, whose bucket is the last one."""
        minutes = WINDOWS[hours]
        count = hours * 60 // minutes
        return cls(now_minute - now_minute % minutes - (count - 1) * minutes, minutes, count)

    @property
    def end(self) -> int:
        """The last minute of the last bucket."""
        return self.first + self.minutes * self.count - 1

    def bucketed(self, points: dict[int, float], combine: Callable[[list[float]], float]) -> list[float | None]:
        """One value per bucket: `combine` of its minutes' values, None where it has none."""
        grouped: list[list[float]] = [[] for _ in range(self.count)]
        for minute, value in points.items():
            index = (minute - self.first) // self.minutes
            if 0 <= index < self.count:
                grouped[index].append(value)
        return [combine(values) if values else None for values in grouped]

    def label(self, index: int) -> str:
        """The bucket's time: "Dec 04 14:20 UTC" for a minute, "Dec 04 14:20–14:30 UTC" for longer."""
        start = self.first + index * self.minutes
        if self.minutes >= DAY:  # a bar per day (the Usage page)
            return _date(start)
        text = f"{_day(start)} {_clock(start)}"
        return f"{text}–{_clock(start + self.minutes)} UTC" if self.minutes > 1 else f"{text} UTC"


@dataclass(frozen=True)
class Series:
    """One series as drawn: its name in the legend, its values per minute, and a colour (else the next of PALETTE)."""

    label: str
    points: dict[int, float]
    colour: str = ""


def bars(series: list[Series], window: Window, *, unit: str = "") -> Markup:
    """Counts per bucket as bars, each series drawn over the one before (a subset in front of its whole).

    `unit` follows each value in the hover text, as given (" s", "%").
    """
    values = [window.bucketed(s.points, sum) for s in series]
    scale = _Scale(values)
    slot = scale.width / window.count
    shapes = []
    for colour, each, column in zip(_colours(series), series, values):
        for index, value in enumerate(column):
            if not value:
                continue
            x, y = LEFT + index * slot, scale.y(value)
            tip = f"{window.label(index)} · {each.label}: {_number(value)}{unit}"
            shapes.append(f'<rect class="point" x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(1.0, slot - 1):.1f}" '
                          f'height="{scale.bottom - y:.1f}" fill="{colour}"><title>{escape(tip)}</title></rect>')
    return _svg(series, window, scale, shapes, kind="bars")


def lines(series: list[Series], window: Window, *, unit: str = "") -> Markup:
    """Sampled values as lines with a dot per bucket (the highest sample of the bucket: the worst minute)."""
    values = [window.bucketed(s.points, max) for s in series]
    scale = _Scale(values)
    slot = scale.width / window.count
    shapes = []
    for colour, each, column in zip(_colours(series), series, values):
        dots, path, pen_down = [], [], False
        for index, value in enumerate(column):
            if value is None:
                pen_down = False  # a gap in the samples is a gap in the line
                continue
            x, y = LEFT + (index + 0.5) * slot, scale.y(value)
            path.append(f"{'L' if pen_down else 'M'}{x:.1f},{y:.1f}")
            pen_down = True
            tip = f"{window.label(index)} · {each.label}: {_number(value)}{unit}"
            dots.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}">'
                        f'<title>{escape(tip)}</title></circle>')
        if path:
            shapes.append(f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        shapes.extend(dots)
    return _svg(series, window, scale, shapes, kind="lines")


class _Scale:
    """The plot's vertical scale: 0 at the bottom, a round number at the top."""

    def __init__(self, values: Iterable[list[float | None]]):
        self.top = _round_up(max((v for column in values for v in column if v), default=0))
        self.bottom = HEIGHT - BOTTOM
        self.width = WIDTH - LEFT - RIGHT

    def y(self, value: float) -> float:
        return self.bottom - (self.bottom - TOP) * value / self.top


def _svg(series: list[Series], window: Window, scale: _Scale, shapes: list[str], *, kind: str) -> Markup:
    points = sum('class="point"' in shape for shape in shapes)
    label = ", ".join(s.label for s in series)
    parts = [f'<svg class="chart chart-{kind}" data-points="{points}" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(label)}">',
             *_axes(window, scale), *_legend(series), *shapes]
    if not points:
        parts.append(f'<text x="{LEFT + scale.width / 2:.0f}" y="{(TOP + scale.bottom) / 2:.0f}" '
                     'text-anchor="middle" class="empty">no data in this window yet</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _axes(window: Window, scale: _Scale) -> list[str]:
    right = WIDTH - RIGHT
    parts = []
    for value in (0, scale.top / 2, scale.top):
        y = scale.y(value)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#ddd"/>')
        if value != scale.top / 2:  # half of a count's scale may be no count ("2.5 runs")
            parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{_number(value)}</text>')
    span = window.minutes * window.count
    for minute, anchor in ((window.first, "start"), (window.first + span // 2, "middle")):
        x = LEFT + (minute - window.first) * scale.width / span
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 5}" text-anchor="{anchor}">{_tick(window, minute)}</text>')
    parts.append(f'<text x="{LEFT + scale.width:.1f}" y="{HEIGHT - 5}" text-anchor="end">now</text>')
    return parts


def _tick(window: Window, minute: int) -> str:
    """An axis label: the date for day bars; else the time, with its day on the first label and where the
    day changed since it (a 24-hour window crosses midnight)."""
    if window.minutes >= DAY:
        return _date(minute)
    if minute != window.first and minute // DAY == window.first // DAY:
        return f"{_clock(minute)} UTC"
    return f"{_day(minute)} {_clock(minute)} UTC"


def _legend(series: list[Series]) -> list[str]:
    parts, x = [], LEFT
    for colour, each in zip(_colours(series), series):
        parts.append(f'<rect x="{x}" y="6" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="15">{escape(each.label)}</text>')
        x += 14 + 7 * len(each.label) + 16  # about 7 px a character at the chart's font size
    return parts


def _colours(series: list[Series]) -> list[str]:
    return [each.colour or PALETTE[index % len(PALETTE)] for index, each in enumerate(series)]


def _round_up(value: float) -> float:
    """The smallest of 1, 2, 5 × 10ⁿ (n ≥ 0) at least `value`: the top of the scale."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if factor * step >= value:
                return factor * step
        step *= 10


def _number(value: float) -> str:
    return f"{value:.4g}" if value != int(value) else str(int(value))


def _date(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, timezone.utc).strftime("%Y-%m-%d")


def _day(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, timezone.utc).strftime("%b %d")


def _clock(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, timezone.utc).strftime("%H:%M")
