"""Times on the dashboard: "3 min ago", with the exact UTC time on hover (a `<time>` element's title)."""
from __future__ import annotations

from datetime import datetime, timezone

from markupsafe import Markup, escape

from engine.edm import parse_datetime

# (seconds in the unit, its name) from the largest; a difference is shown in the largest unit it fills.
UNITS = ((86400, "day"), (3600, "h"), (60, "min"), (1, "s"))


def ago(value, *, now: datetime) -> Markup:
    """`<time datetime="ISO" title="YYYY-MM-DD HH:MM:SS UTC">3 min ago</time>`; a text that is no time as it is.

    `value` is a datetime, an ISO 8601 text (as run records keep it) or Unix seconds (as the event
    log and deliveries do).
    """
    when = as_datetime(value)
    if when is None:
        return escape(value if isinstance(value, str) else "")
    exact = when.strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup(f'<time datetime="{escape(when.isoformat())}" title="{exact}">'
                  f'{relative((now - when).total_seconds())}</time>')


def relative(seconds: float) -> str:
    """How long ago `seconds` were, in words ("just now", "42 s ago", "3 min ago", "2 days ago", "in 5 min")."""
    past = seconds >= 0
    seconds = abs(seconds)
    if seconds < 5:
        return "just now"
    size, name = next((size, name) for size, name in UNITS if seconds >= size)
    count = int(seconds // size)
    if name == "day" and count != 1:
        name = "days"
    return f"{count} {name} ago" if past else f"in {count} {name}"


def as_datetime(value) -> datetime | None:
    """`value` as an aware UTC datetime (naive ones are UTC), or None when it is no time (None, "", other text)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, timezone.utc)
    if isinstance(value, str):
        value = parse_datetime(value)
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
