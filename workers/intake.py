"""Accepting an event durably: its dedup claim and its entry in the event log, in one step.

Every source (webhooks, chat, the poller, the scheduler) hands its events over here, so "accepted"
means the same everywhere: the event is in the workspace's event log (workers/eventlog.py) before
we answer the sender. Claim and entry are written by one Lua script, and the source's own
bookkeeping (`also`, e.g. the poller's snapshot) in the same MULTI/EXEC: a failure leaves nothing
behind, so a sender's retry is never turned into a "duplicate" of an event that was not stored.
"""
from __future__ import annotations

from typing import Callable

import redis
from redis.client import Pipeline

from engine.events import Event
from workers import eventlog, metrics, workspaces


def submit_event(connection: redis.Redis, event: Event, *, dedup_key: str, dedup_ttl: int,
                 also: Callable[[Pipeline], None] | None = None, backlog_limit: int = 0, per_second: float = 0.0,
                 per_day: int = 0) -> bool:
    """Log `event` for the current workspace once per `dedup_key`: True if accepted now, False for a duplicate.

    `dedup_key` is a full Redis key (the source builds it with `workspaces.key`). `also` adds the
    source's own bookkeeping to the same transaction; it is applied for a duplicate too (a source
    that saw the same change twice must still catch up).
    Raises redis.RedisError when Redis fails (also while it loads its data after a restart): then
    nothing was stored and a retry can succeed. With a `backlog_limit` (a source whose sender retries:
    webhooks), raises eventlog.BacklogFull, nothing stored, while the workspace has that many events and
    runs waiting (not with `also`); with `per_second`, eventlog.TooFast while its events come faster than that;
    with `per_day`, eventlog.DayFull once it accepted that many events today.
    """
    if also is None:
        return accept_event(connection, event, dedup_key=dedup_key, dedup_ttl=dedup_ttl, backlog_limit=backlog_limit,
                            per_second=per_second, per_day=per_day) is not None
    with connection.pipeline(transaction=True) as pipe:
        eventlog.append(pipe, event.to_dict(), dedup_key=dedup_key, dedup_ttl=dedup_ttl, counted=_counted(event))
        also(pipe)
        return bool(pipe.execute()[0])


def accept_event(connection: redis.Redis, event: Event, *, dedup_key: str, dedup_ttl: int, backlog_limit: int = 0,
                 per_second: float = 0.0, per_day: int = 0) -> int | None:
    """`submit_event` without `also`: None for a duplicate; when accepted now, the events the workspace accepted today
    with this one (the append script's count, with `per_day`; 0 without). What the usage alert of `per_day` reads
    (web/hooks.py): a count read before the append let a redelivery, not counted, set the alert off."""
    reply = eventlog.append(connection, event.to_dict(), dedup_key=dedup_key, dedup_ttl=dedup_ttl,
                            counted=_counted(event), backlog_limit=backlog_limit, per_second=per_second,
                            per_day=per_day)
    if not reply:
        return None
    return reply[1] if isinstance(reply, tuple) else 0


def _counted(event: Event) -> tuple[str, str]:
    """The (accepted, duplicate) counter fields of `event` (the append script counts its outcome)."""
    labels = {"workspace": workspaces.current().name, "source": event.source, "kind": event.kind}
    return (metrics.field("events", {**labels, "outcome": "accepted"}),
            metrics.field("events", {**labels, "outcome": "duplicate"}))
