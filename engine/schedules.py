"""Schedule ticks: which ticks of a cron expression are due now, given when we last looked (pure).

The scheduler (`workers/scheduler.py`) remembers per rule the time up to which it has handled
ticks (`last`) and asks `due_ticks` what to fire. A tick is *on time* while it is at most `grace`
old; older ones were missed (no scheduler ran) and the trigger's `catch_up` decides:
    skip     fire none of the missed ticks, only those on time (the default)
    latest   when no tick is on time, fire the most recent missed tick once
No `last` (the rule was never seen) fires nothing: the scheduler starts counting from now.

Daylight saving time, as cron (Vixie/cronie) and Temporal's schedules have it: a time the clocks skip
(02:30 on the day they go forward) fires once, at the first instant after the gap (croniter's
03:00); a time the clocks pass twice (02:30 in Berlin on the day they go back) fires once, at its
first pass. An expression whose minute or hour field starts with `*` (`*/30 * * * *`, `0 * * * *`)
follows elapsed time instead and fires in both passes of that hour, every 30 minutes or every hour
as on any other day. Every tick is computed through `_ticks`, so the scheduler,
`next_tick` (`rules list`, `rules run --tick`) and catch-up agree on them.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Iterator
from zoneinfo import ZoneInfo

from croniter import croniter

if TYPE_CHECKING:
    from .rules import Rule

DEFAULT_GRACE = timedelta(minutes=2)  # how late a tick may still fire as on time (a slow or restarted scheduler)
_JUST_AFTER = timedelta(microseconds=1)  # croniter's get_prev is strict; this makes "at or before"


def _ticks(cron: str, tz: str, start: datetime, *, back: bool = False) -> Iterator[datetime]:
    """The ticks strictly after `start`, soonest first (`back`: strictly before it, latest first), as aware UTC
    date-times (see the module docstring)."""
    ticks = croniter(cron, start.astimezone(ZoneInfo(tz)))
    step = ticks.get_prev if back else ticks.get_next
    while True:
        tick = step(datetime).astimezone(timezone.utc)
        if not _second_pass(cron, tz, tick):
            yield tick


def _second_pass(cron: str, tz: str, tick: datetime) -> bool:
    """True for a fixed-time tick in the second pass of an hour the clocks went back through.

    croniter yields such a wall time twice, an hour apart: a daily 02:30 ran twice on the day the
    clocks go back (two tick ids, two runs, two sets of InLoox writes).
    """
    minute, hour = cron.split()[:2]
    if minute.startswith("*") or hour.startswith("*"):
        return False  # follows elapsed time: both passes are ticks of their own
    local = tick.astimezone(ZoneInfo(tz))  # from UTC, so `fold` says which pass this is
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def ticks_between(cron: str, tz: str, after: datetime, until: datetime) -> list[datetime]:
    """The ticks t with after < t <= until, read in time zone `tz`, as aware UTC date-times."""
    found = []
    for tick in _ticks(cron, tz, after):
        if tick > until:
            return found
        found.append(tick)


def latest_tick(cron: str, tz: str, at: datetime) -> datetime:
    """The most recent tick at or before `at`, as an aware UTC date-time."""
    return next(_ticks(cron, tz, at + _JUST_AFTER, back=True))


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
    return next(_ticks(cron, tz, after))
