"""The poller's state per entity set of the current workspace, for `/metrics` and the dashboard: cursor, lag, last poll, held floods.

The poller writes `poll:<Set>:last` (a hash: when, by which poller, seconds, requests, rows, events)
after each poll, and `poll:recent` (the last RECENT_POLLS "<poller> <when>" entries, newest first:
which poller owned the workspace when, for operators chasing a stuck or double poll);
the cursor and the held floods are the poller's own keys (see `workers.snapshots`, `workers.poll`).
"""
from __future__ import annotations

from datetime import datetime, timezone

import redis

from engine.edm import parse_datetime
from inloox.changes import CHANGE_FEEDS
from workers import metrics
from workers.workspaces import key

RECENT_POLLS = 200


def record_poll(connection: redis.Redis, result, *, seconds: float, requests: int, now: datetime,
                poller: str = "") -> None:
    """Keep what one poll of `result.entity_set` did, and count it (and any held changes)."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.lpush(key("poll:recent"), f"{poller} {now.isoformat()}")
        pipe.ltrim(key("poll:recent"), 0, RECENT_POLLS - 1)
        pipe.hset(key(f"poll:{result.entity_set}:last"), mapping={
            "at": now.isoformat(), "poller": poller, "seconds": f"{seconds:.3f}", "requests": requests, "rows": result.rows,
            "events": len(result.accepted), "held": result.held})
        metrics.count(pipe, "polls", entity_set=result.entity_set)
        if result.held:
            metrics.count(pipe, "held_changes", result.held, entity_set=result.entity_set)
        pipe.execute()


def poll_status(connection: redis.Redis, *, now: datetime) -> list[dict]:
    """One entry per entity set the poller has seen: cursor, lag in seconds (now − cursor), last poll, held."""
    names = list(CHANGE_FEEDS)
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.get(key(f"poll:{name}:cursor"))
            pipe.llen(key(f"poll:{name}:held"))
            pipe.hlen(key(f"poll:{name}:snap"))
            pipe.hgetall(key(f"poll:{name}:last"))
        replies = pipe.execute()
    status = []
    for index, name in enumerate(names):
        cursor, held, known, last = replies[4 * index:4 * index + 4]
        if cursor is None:
            continue
        cursor = cursor.decode()
        stamp = parse_datetime(cursor)
        lag = (now - stamp.replace(tzinfo=stamp.tzinfo or timezone.utc)).total_seconds() if stamp else None
        status.append({"entity_set": name, "cursor": cursor, "lag_seconds": lag, "held": held, "known": known,
                       "last": {k.decode(): v.decode() for k, v in last.items()}})
    return status
