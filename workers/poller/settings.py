"""The POLL_* settings: how often the poller polls, scans and sweeps, and how long its leases last.

Read once, when the poller's loops are set up (workers/poller/process.py), into one frozen value that
its rounds, leases and paces share; a value that is not a number stops the process as it starts.
POLL_SCAN_SECONDS may give an entity set a scan interval of its own (`60 Contact=30`): a scan costs a
request per 100 rows however little changed, so a large set may be scanned less often than the rest.
A name there that is not a set the poller can watch is refused rather than ignored: a typo would
otherwise leave its set at the default without a word.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from inloox.changes import Scan, observation
from workers.poller.pace import Pace


@dataclass(frozen=True)
class PollerSettings:
    """How often to poll, scan and sweep, and how long a lease lasts without renewal."""

    interval: float = 2.0
    sweep_every: float = 300.0
    lease_seconds: float = 15.0
    scan_every: float = 60.0
    scan_floor: float = 10.0
    scan_every_set: Mapping[str, float] = field(default_factory=dict)  # per entity set, over scan_every
    idle_after: float = 60.0  # seconds of quiet before a set backs off (0: never)
    max_interval: float = 30.0  # a change feed's ceiling
    scan_max: float = 600.0  # a scan's ceiling
    threads: int = 8  # workspaces polled at the same time (POLL_THREADS)
    overlap: float = 5.0  # seconds a feed's poll reads back before its cursor, for late commits (POLL_OVERLAP_SECONDS)

    def scan_interval(self, entity_set: str) -> float:
        """Seconds between two scans of `entity_set`: its own setting or the default, never below the floor."""
        return max(self.scan_floor, self.scan_every_set.get(entity_set, self.scan_every))

    def pace(self, entity_set: str) -> Pace:
        """How `entity_set` is paced: a change feed from POLL_INTERVAL, a scan from its scan interval."""
        if isinstance(observation(entity_set), Scan):
            return Pace(self.scan_interval(entity_set), self.idle_after, self.scan_max)
        return Pace(self.interval, self.idle_after, self.max_interval)


def parse_scan_seconds(text: str) -> tuple[float, dict[str, float]]:
    """`"60 Contact=30 Portfolio=600"` → (60.0, {"Contact": 30.0, "Portfolio": 600.0}); ValueError if unreadable."""
    default, per_set = 60.0, {}
    for word in text.replace(",", " ").split():
        name, _, seconds = word.rpartition("=")
        try:
            value = float(seconds)
        except ValueError:
            raise ValueError(f"POLL_SCAN_SECONDS: {word!r} is not seconds or <EntitySet>=<seconds>") from None
        if name and observation(name) is None:
            raise ValueError(f"POLL_SCAN_SECONDS: {name!r} is not an entity set the poller can watch")
        if name:
            per_set[name] = value
        else:
            default = value
    return default, per_set


def poller_settings(config: Mapping[str, str]) -> PollerSettings:
    """The POLL_* settings; a value that is not a number stops the process with its name (SystemExit)."""
    try:
        scan_every, scan_every_set = parse_scan_seconds(config["POLL_SCAN_SECONDS"])
        return PollerSettings(interval=float(config["POLL_INTERVAL"]),
                              sweep_every=float(config["POLL_SWEEP_SECONDS"]),
                              lease_seconds=float(config["POLL_LEASE_SECONDS"]),
                              scan_every=scan_every, scan_every_set=scan_every_set,
                              scan_floor=float(config["POLL_SCAN_FLOOR_SECONDS"]),
                              idle_after=float(config["POLL_IDLE_AFTER_SECONDS"]),
                              max_interval=float(config["POLL_MAX_INTERVAL"]),
                              scan_max=float(config["POLL_SCAN_MAX_SECONDS"]),
                              threads=int(config["POLL_THREADS"]),
                              overlap=_bounded_seconds("POLL_OVERLAP_SECONDS", config["POLL_OVERLAP_SECONDS"]))
    except ValueError as exc:
        raise SystemExit(f"Error: a POLL_* setting: {exc}") from None


def _bounded_seconds(name: str, text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 <= seconds <= 3600:  # nan fails too; past an hour every poll rereads an hour of changes
        raise ValueError(f"{name}: {text!r} is not seconds from 0 to 3600")
    return seconds
