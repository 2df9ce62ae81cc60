"""Per-minute history of a few figures of each workspace, for the dashboard's charts: the last 24 hours.

    ws:<name>:series:<series>:<hour>   hash: field = the minute (Unix time // 60), value = its figure

One hash per series and hour (Unix time // 3600), expiring a day after its hour ended, so history
trims itself: no sweeper, no HDEL of old minutes, and a process that was down for a while leaves
nothing behind. An hour's 60 fields also stay a small listpack hash in Redis, where one hash of
1,440 minutes would not.

Counted series, sums per minute, added by `workers.metrics` with its batched counters (an event
costs an in-memory increment):
    runs         runs that finished (succeeded, failed, skipped, shadow)
    failures     runs that failed
    requests     requests sent to InLoox
    throttled    InLoox answered 429, or our shared limit deferred a run (workers/throttle.py)

Sampled series, a gauge read by one worker every SERIES_SAMPLE_SECONDS (workers/gauges.py):
    backlog          accepted events not handled yet (the event log)
    queued           RQ jobs waiting in the workspace's queue
    poll_lag:<Set>   seconds our view of the set is behind InLoox (workers/poller/status.py)
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import redis

from workers.metering import expiry
from workers.runs import TERMINAL

SPAN_MINUTES = 24 * 60
KEEP_SECONDS = SPAN_MINUTES * 60 + 3600  # an hour's hash outlives its last minute by the span


def hour_key(prefix: str, series: str, minute: int) -> str:
    """The hash holding `minute` of `series` in the workspace with key prefix `prefix`."""
    return f"{prefix}series:{series}:{minute // 60}"


def counted(name: str, labels: Mapping[str, str]) -> tuple[str, ...]:
    """The counted series a `workers.metrics` counter adds to (none for most counters)."""
    if name != "runs" or labels.get("status") not in TERMINAL:
        return ()
    return ("runs", "failures") if labels["status"] == "failed" else ("runs",)


def add(target, counts: Mapping[tuple[str, str], int], *, minute: int) -> None:
    """Queue on `target` the counts {(workspace, series): n} for `minute`."""
    for (workspace, series), amount in counts.items():
        hour = hour_key(f"ws:{workspace}:", series, minute)
        target.hincrby(hour, minute, amount)
        expiry.expire(target, hour, KEEP_SECONDS)


def record(target, prefix: str, gauges: Mapping[str, float], *, minute: int) -> None:
    """Queue on `target` one sample of each gauge for `minute` (a later sample of the minute replaces it)."""
    for series, value in gauges.items():
        hour = hour_key(prefix, series, minute)
        target.hset(hour, minute, f"{value:g}")
        target.expire(hour, KEEP_SECONDS)


def history(connection: redis.Redis, prefix: str, names: Iterable[str], *, now_minute: int,
            span: int = SPAN_MINUTES) -> dict[str, dict[int, float]]:
    """{series: {minute: value}} of the `span` minutes up to and including `now_minute` (one round trip)."""
    names = list(names)
    first = now_minute - span + 1
    hours = range(first // 60, now_minute // 60 + 1)
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            for hour in hours:
                pipe.hgetall(hour_key(prefix, name, hour * 60))
        replies = iter(pipe.execute())
    return {name: in_window([next(replies) for _ in hours], first=first, last=now_minute) for name in names}


def in_window(hashes: Iterable[Mapping[bytes, bytes]], *, first: int, last: int) -> dict[int, float]:
    """{minute: value} of the fields of `hashes` from minute `first` to `last`, oldest first.

    The oldest hour's hash still holds the minutes before the window, and a clock ahead of ours
    (another host's) may have written minutes after it: both are left out.
    """
    points = {int(minute): float(value) for fields in hashes for minute, value in fields.items()}
    return {minute: points[minute] for minute in sorted(points) if first <= minute <= last}
