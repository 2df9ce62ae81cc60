"""The poller's state per entity set of the current workspace, for `/metrics`, the dashboard and the CLI.

The poller writes `poll:<Set>:last` (a hash: when the poll started and ended, by which poller, how
(feed or scan), how often, seconds, requests, rows, events) after each complete poll or scan,
`poll:watched` (JSON: the sets its rules watch now) when that changes, and `poll:recent` (the last
RECENT_POLLS "<poller> <when>" entries, newest first: which poller owned the workspace when, for
operators chasing a stuck or double poll); the cursor and the held floods are the poller's own
keys (see `workers.poller.snapshots`, `workers.poller.poll`). `poll:trouble` (a hash: entity set, or
WHOLE for all of the workspace's polls, → JSON {since, at, error}) says which polls fail now and why
(an InLoox that refuses the workspace's token, say): written at each failure, cleared by the next
complete poll.

Lag is how stale our view of InLoox is: now − the start of the last complete poll of the set.
Whatever changed before that start has been seen; an idle account keeps it under a few intervals
(`every`: the set's interval now, longer while it is quiet, see workers/poller/pace.py), and it grows
beyond that only when polls fail or fall behind.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

import redis

from engine.edm import parse_datetime
from inloox.changes import CHANGE_FEEDS, scan_requests
from workers import metrics
from workers.workspaces import key

TROUBLE = "poll:trouble"
WHOLE = "*"  # every poll of the workspace failed before any set's own (InLoox would not say who we are, say)
ERROR_CHARS = 300  # of a failure's text kept (an InLoox answer's text is in it: another party's bytes)

# Enough to see a handover, or two pollers taking turns: about a minute of an active workspace's
# polls, half an hour of an idle one's. Every workspace keeps its own list: 200 took ~9 KB each.
RECENT_POLLS = 50


@dataclass(frozen=True)
class PollRun:
    """How one poll or scan of a set went: its start, duration and cost, and how often the set is polled."""

    started: datetime
    seconds: float
    requests: int
    method: str = "feed"  # feed | scan
    every: float = 0.0  # seconds until the next poll of this set (its interval now: it backs off while quiet)
    quiet: float = 0.0  # seconds the set had been quiet (no change, no activity in its workspace) at the start


def record_poll(connection: redis.Redis, result, run: PollRun, *, poller: str = "") -> None:
    """Keep what one complete poll of `result.entity_set` did, and count it (and any held changes)."""
    ended = run.started.timestamp() + run.seconds
    with connection.pipeline(transaction=False) as pipe:
        pipe.lpush(key("poll:recent"), f"{poller} {run.started.isoformat(timespec='milliseconds')}")
        pipe.ltrim(key("poll:recent"), 0, RECENT_POLLS - 1)
        pipe.hset(key(f"poll:{result.entity_set}:last"), mapping={
            "at": datetime.fromtimestamp(ended, run.started.tzinfo).isoformat(), "started": run.started.isoformat(),
            "poller": poller, "method": run.method, "every": f"{run.every:g}", "quiet": f"{run.quiet:.0f}",
            "seconds": f"{run.seconds:.3f}",
            "requests": run.requests, "rows": result.rows, "events": len(result.accepted), "held": result.held})
        metrics.count(pipe, "polls", entity_set=result.entity_set)
        pipe.hdel(key(TROUBLE), result.entity_set, WHOLE)  # polling works again (one command more in this round trip)
        if result.held:
            metrics.count(pipe, "held_changes", result.held, entity_set=result.entity_set)
        pipe.execute()


def record_trouble(connection: redis.Redis, entity_set: str, error: BaseException, *, now: datetime) -> None:
    """Keep that polling `entity_set` (WHOLE: the workspace) failed now, and why, until a poll of it completes; count
    it. `since` stays the first failure's time. Redis away (the failure itself, perhaps): the log says it."""
    # Printable characters only: a terminal shows it (`flask poller status`), and InLoox's answer may be in it.
    text = "".join(c if c.isprintable() else " " for c in f"{type(error).__name__}: {error}")
    text = text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS - 1] + "…"
    try:
        earlier = _trouble(connection.hget(key(TROUBLE), entity_set))
        since = earlier.get("since") or now.isoformat()
        with connection.pipeline(transaction=False) as pipe:
            pipe.hset(key(TROUBLE), entity_set, json.dumps({"since": since, "at": now.isoformat(), "error": text}))
            metrics.count(pipe, "poll_failures", entity_set=entity_set)
            pipe.execute()
    except redis.RedisError:
        pass


def troubles(connection: redis.Redis) -> dict[str, dict]:
    """Entity set (or WHOLE) → {since, at, error} of the polls failing now."""
    return _troubles(connection.hgetall(key(TROUBLE)))


def _troubles(stored: dict) -> dict[str, dict]:
    found = {k.decode(): _trouble(v) for k, v in stored.items()}
    return {name: trouble for name, trouble in found.items() if trouble}


def _trouble(raw: bytes | None) -> dict:
    """A stored trouble, or {} when there is none or it is damaged (the pages read its three texts; the next failure
    writes it whole again)."""
    try:
        found = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    whole = isinstance(found, dict) and all(isinstance(found.get(k), str) for k in ("since", "at", "error"))
    return found if whole else {}


def record_watched(connection: redis.Redis, entity_sets: Iterable[str]) -> None:
    """Replace the list of sets the rules watch now (sets no longer watched have no lag to show)."""
    connection.set(key("poll:watched"), json.dumps(sorted(entity_sets)))


def poll_status(connection: redis.Redis, *, now: datetime) -> list[dict]:
    """One entry per entity set the poller has seen: cursor, lag (now − start of the last complete poll), cost, held."""
    recorded = connection.get(key("poll:watched"))
    watched = set(json.loads(recorded)) if recorded is not None else set()
    names = sorted(set(CHANGE_FEEDS) | watched)
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.get(key(f"poll:{name}:cursor"))
            pipe.llen(key(f"poll:{name}:held"))
            pipe.hlen(key(f"poll:{name}:snap"))
            pipe.hgetall(key(f"poll:{name}:last"))
        pipe.hgetall(key(TROUBLE))
        *replies, failing = pipe.execute()
    failing = _troubles(failing)
    status = []
    for index, name in enumerate(names):
        cursor, held, known, last = replies[4 * index:4 * index + 4]
        if cursor is None and not held and not failing.get(name):  # never polled (a set failing from the start is)
            continue
        last = {k.decode(): v.decode() for k, v in last.items()}
        status.append({**_entry(name, cursor.decode() if cursor else None, held, known, last,
                                watched=name in watched or not recorded, now=now),
                       "failing": failing.get(name)})
    return status


def slowest(connection: redis.Redis, *, now: datetime) -> tuple[float | None, str | None]:
    """(lag, entity set) of the watched set polled longest ago (`lags`, as the gauges sample it), or (None, None) when
    none was polled: how stale a workspace's view of InLoox is, as its list and the dashboard's workspaces page show
    it, at one read per watched set rather than `poll_status`'s four of every set, for every workspace listed."""
    return max(((lag, name) for name, lag in lags(connection, now=now).items()), default=(None, None))


def lags(connection: redis.Redis, *, now: datetime) -> dict[str, float]:
    """Entity set → lag in seconds (now − the start of its last complete poll), for the sets watched now.

    What the gauges sample every minute for every workspace: the watched sets' start times only
    (one GET, then one HGET per set), not `poll_status`'s four reads of every set the poller knows.
    """
    recorded = connection.get(key("poll:watched"))
    if recorded is None:  # a poller from before `poll:watched`: every set it polled counts as watched
        return {e["entity_set"]: e["lag_seconds"] for e in poll_status(connection, now=now)
                if e["lag_seconds"] is not None}
    names = sorted(json.loads(recorded))
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(key(f"poll:{name}:last"), "started")
        started = pipe.execute()
    return {name: (now - at).total_seconds() for name, raw in zip(names, started)
            if raw is not None and (at := parse_datetime(raw.decode())) is not None}


def _entry(name: str, cursor: str | None, held: int, known: int, last: dict, *, watched: bool, now: datetime) -> dict:
    started = parse_datetime(last.get("started"))
    scan = last.get("method") == "scan"
    return {"entity_set": name, "cursor": cursor, "held": held, "known": known, "last": last, "watched": watched,
            "lag_seconds": (now - started).total_seconds() if watched and started else None,
            "method": last.get("method", "feed"), "every": float(last["every"]) if last.get("every") else None,
            "quiet_seconds": float(last["quiet"]) if last.get("quiet") else None,
            # A scan reads every row each time: its cost is the set's size in pages, not what changed.
            "requests_per_scan": scan_requests(known) if scan else None}
