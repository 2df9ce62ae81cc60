"""Schedule ticks: which ticks of a cron expression are due now, given when we last looked (pure).

The scheduler (`workers/scheduler.py`) remembers per rule the time up to which it has handled
ticks (`last`) and asks `due_ticks` what to fire. A tick is *on time* while it is at most `grace`
old; older ones were missed (no scheduler ran) and the trigger's `catch_up` decides:
    skip     fire none of the missed ticks, only those on time (the default)
    latest   when no tick is on time, fire the most recent missed tick once
No `last` (the rule was never seen) fires nothing: the scheduler starts counting from now.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from croniter import croniter

if TYPE_CHECKING:
    from .rules import Rule

DEFAULT_GRACE = timedelta(minutes=2)  # how late a tick may still fire as on time (a slow or restarted scheduler)
_JUST_AFTER = timedelta(microseconds=1)  # croniter's get_prev is strict; this makes "at or before"


def ticks_between(cron: str, tz: str, after: datetime, until: datetime) -> list[datetime]:
    """The ticks t with after < t <= until, read in time zone `tz`, as aware UTC date-times."""
    ticks = croniter(cron, after.astimezone(ZoneInfo(tz)))
    found = []
    while (tick := ticks.get_next(datetime)) <= until:
        found.append(tick.astimezone(timezone.utc))
    return found


def latest_tick(cron: str, tz: str, at: datetime) -> datetime:
    """The most recent tick at or before `at`, as an aware UTC date-time."""
    local = (at + _JUST_AFTER).astimezone(ZoneInfo(tz))
    return croniter(cron, local).get_prev(datetime).astimezone(timezone.utc)


def due_ticks(cron: str, tz: str, *, last: datetime | None, now: datetime, catch_up: str = "skip",
              grace: timedelta = DEFAULT_GRACE) -> list[datetime]:
    """The ticks to fire now, oldest first (see the module docstring); all times aware."""
    if last is None or now <= last:
        return []
    on_time = ticks_between(cron, tz, max(last, now - grace), now)
    if on_time or catch_up != "latest":
        return on_time
    missed = latest_tick(cron, tz, now - grace)
    return [missed] if missed > last else []


@dataclass(frozen=True)
class NextTick:
    """A schedule rule's next tick: when (aware, UTC) and the time zone its cron expression is read in."""

    at: datetime
    timezone: str

    @property
    def local(self) -> datetime:
        """The tick in the rule's time zone."""
        return self.at.astimezone(ZoneInfo(self.timezone))


def next_tick(rule: "Rule", after: datetime) -> NextTick | None:
    """The soonest tick strictly after `after` of the rule's schedule triggers, or None without one."""
    found = [NextTick(_next(t.cron, t.timezone, after), t.timezone) for t in rule.triggers if t.cron]
    return min(found, key=lambda tick: tick.at, default=None)


def _next(cron: str, tz: str, after: datetime) -> datetime:
    return croniter(cron, after.astimezone(ZoneInfo(tz))).get_next(datetime).astimezone(timezone.utc)
