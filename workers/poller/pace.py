"""How often a watched set is polled: at its active interval while things happen, less often while nothing does.

A set is quiet since the later of the last change the poller saw in it and the last activity of
its workspace (workers/activity.py: an event accepted from any source, a person on the dashboard).
Quiet for less than `idle_after` seconds, it is polled at its active interval (POLL_INTERVAL for
change feeds, its scan interval for scans); after that the interval doubles every `idle_after`
seconds of quiet, up to a ceiling:

    quiet (s)      0–60   60–120   120–180   180–240   240+        (idle_after 60)
    feed  (s)         2        4         8        16     30        (POLL_INTERVAL 2, POLL_MAX_INTERVAL 30)
    scan  (s)        60      120       240       480    600        (POLL_SCAN_SECONDS 60, POLL_SCAN_MAX_SECONDS 600)

So a change in a set active in the last two minutes is seen within 4 s plus a poll, and one in a
set idle for hours within the ceiling plus a poll. Any change or activity brings the set back to
its active interval at once. Pure: the time is passed in.
"""
from __future__ import annotations

from dataclasses import dataclass

_MAX_DOUBLINGS = 32  # beyond any ceiling; keeps 2 ** n small


@dataclass(frozen=True)
class Pace:
    """A set's backoff curve: its active interval, the quiet time before backing off, and the ceiling."""

    active: float
    idle_after: float = 60.0
    ceiling: float = 30.0

    def interval(self, quiet: float) -> float:
        """Seconds between polls of a set quiet for `quiet` seconds (never below `active`, never above the ceiling)."""
        ceiling = max(self.active, self.ceiling)
        if quiet < self.idle_after or self.idle_after <= 0:
            return self.active
        doublings = min(_MAX_DOUBLINGS, int(quiet // self.idle_after))
        return min(ceiling, self.active * 2 ** doublings)


@dataclass
class SetPace:
    """One watched set's timing in a poller: when it last saw life, when its last poll started, when the next is due.

    Times are epoch seconds, since activity stamps come from other processes.
    """

    pace: Pace
    lively_at: float  # the later of its last change and its workspace's last activity
    started_at: float | None = None  # the last poll's start; None before the first
    due_at: float = 0.0

    def interval(self, now: float) -> float:
        """The interval that applies now."""
        return self.pace.interval(max(0.0, now - self.lively_at))

    def due(self, now: float) -> bool:
        return now >= self.due_at

    def started(self, now: float) -> float:
        """A poll starts now: the next is due one interval later; returns that interval."""
        every = self.interval(now)
        self.started_at, self.due_at = now, now + every
        return every

    def lively(self, at: float) -> None:
        """Something happened at `at`: back to the active interval at once (counted from the last poll's start)."""
        if at <= self.lively_at:
            return
        self.lively_at = at
        if self.started_at is not None:
            self.due_at = min(self.due_at, self.started_at + self.pace.active)
