"""Accepting an event durably: its dedup claim and its RQ job are written in one transaction.

Every source (webhooks, chat, the poller, the scheduler) hands its events over here, so "accepted"
means the same everywhere: the event is in Redis as an RQ job before we answer the sender. Claim
and job commit together (MULTI/EXEC), so a failure leaves neither behind: no claim that would turn
the sender's retry into a "duplicate" while the event itself was never stored.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import redis
from redis.client import Pipeline
from rq import Queue

from engine.events import Event
from workers import metrics, workspaces

HANDLE_EVENT = "workers.jobs.handle_event"  # by name: the web process never imports the job code


def submit_event(connection: redis.Redis, event: Event, *, dedup_key: str, dedup_ttl: int,
                 also: Callable[[Pipeline], None] | None = None) -> bool:
    """Enqueue `event` for the current workspace once per `dedup_key`: True if accepted now, False for a duplicate.

    `dedup_key` is a full Redis key (the source builds it with `workspaces.key`). The job goes on the
    workspace's queue and names the workspace, so the worker matches it against that one's rules only.
    `also` adds the source's own bookkeeping (the poller's snapshot) to the same transaction.
    Raises redis.RedisError when Redis fails; then nothing was stored and a retry can succeed.
    """
    workspace = workspaces.current()
    rq_queue = Queue(workspace.queue, connection=connection, serializer="json")
    with connection.pipeline() as pipe:
        try:
            pipe.watch(dedup_key)
            if pipe.exists(dedup_key):
                pipe.unwatch()
                _apply(connection, also)  # the source's bookkeeping must still catch up
                metrics.count(connection, "events", source=event.source, kind=event.kind, outcome="duplicate")
                return False
            pipe.multi()
            pipe.set(dedup_key, event.id, ex=dedup_ttl)
            rq_queue.enqueue_call(HANDLE_EVENT, args=[event.to_dict(), workspace.name], job_id=job_id(event),
                                  result_ttl=3600, failure_ttl=7 * 86400, pipeline=pipe)
            if also is not None:
                also(pipe)
            metrics.count(pipe, "events", source=event.source, kind=event.kind, outcome="accepted")
            pipe.execute()
        except redis.WatchError:
            _apply(connection, also)  # a concurrent delivery claimed the id between WATCH and EXEC
            metrics.count(connection, "events", source=event.source, kind=event.kind, outcome="duplicate")
            return False
    return True


def _apply(connection: redis.Redis, also: Callable[[Pipeline], None] | None) -> None:
    if also is not None:
        with connection.pipeline() as pipe:
            also(pipe)
            pipe.execute()


def job_id(event: Event) -> str:
    """The event's RQ job id, unique across workspaces (two accounts may send the same event id).

    RQ job ids allow only [A-Za-z0-9_-]; event ids may hold any character, so hash them.
    """
    return f"{workspaces.current().name}-event-" + hashlib.sha256(event.id.encode()).hexdigest()[:32]
