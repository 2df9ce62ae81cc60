"""Durations in rules: `90s`, `10m`, `2h`, `3d`, `1w`, or a number of seconds."""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
PATTERN = r"^\s*\d+(\.\d+)?\s*[smhdw]\s*$"  # the same grammar, for the JSON Schema
WORDS = "a duration: a number and one of the units s, m, h, d, w (90s, 10m, 2h, 3d, 1w), or a number of seconds"
_SPELT_OUT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(sec|second|min|minute|hr|hour|day|week)s?\s*$", re.IGNORECASE)
_SHORT = {"sec": "s", "second": "s", "min": "m", "minute": "m", "hr": "h", "hour": "h", "day": "d", "week": "w"}


def parse_duration(value: Any) -> timedelta | None:
    """A timedelta from `10m`-style text or seconds; None when it is neither."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _delta(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    m = _DURATION.match(value)
    return _delta(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def short_form(text: str) -> str | None:
    """`10m` for a duration whose unit is spelt out (`10 minutes`, `2 hrs`), else None."""
    m = _SPELT_OUT.match(text)
    return f"{m.group(1)}{_SHORT[m.group(2).lower()]}" if m else None


def _delta(seconds: float) -> timedelta | None:
    # `9999999999w` and `1e400` are written as durations are, but timedelta holds at most 999,999,999 days
    # (and no infinity): its OverflowError was a 500 wherever a duration is read (a rule upload, ?since=).
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        return None


def format_duration(delta: timedelta) -> str:
    """The shortest exact `2h`/`90s` form of a timedelta."""
    seconds = delta.total_seconds()
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"
