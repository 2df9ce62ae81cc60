"""Accepting an event durably: its dedup claim and its entry in the event log, in one step.

Every source (webhooks, chat, the poller, the scheduler) hands its events over here, so "accepted"
means the same everywhere: the event is in the workspace's event log (workers/eventlog.py) before
we answer the sender. Claim and entry are written by one Lua script, and the source's own
bookkeeping (`also`, e.g. the poller's snapshot) in the same MULTI/EXEC: a failure leaves nothing
behind, so a sender's retry is never turned into a "duplicate" of an event that was not stored.
The bookkeeping lands only with the event's claim (`_ALSO`): Redis runs every command of a MULTI
even when one of them fails, and bookkeeping that landed beside an append Redis refused marked seen
a change or a tick whose event was never stored.
"""
from __future__ import annotations

from typing import Callable

import redis
from redis.client import Pipeline

from engine.events import Event
from workers import eventlog, metrics, scripts, workspaces

# The source's bookkeeping (`also`'s commands, as ARGV: each one's word count, then its words), run only when the
# event's dedup claim (KEYS[1]) exists: the append before it in the same MULTI writes the claim after the entry, and
# finds it for a duplicate. Queued as plain commands, they ran even when Redis refused the append (the log's key of
# another type): the poller's snapshot said the change was seen, a schedule's last look passed the tick, and neither
# was ever delivered once the log was mended.
_ALSO = scripts.script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local at = 1
while at <= #ARGV do
  local words = tonumber(ARGV[at])
  redis.call(unpack(ARGV, at + 1, at + words))
  at = at + words + 1
end
return 1
""")


def submit_event(connection: redis.Redis, event: Event, *, dedup_key: str, dedup_ttl: int,
                 also: Callable[[Pipeline], None] | None = None, backlog_limit: int = 0, per_second: float = 0.0,
                 per_day: int = 0, latest: float = 0.0) -> bool:
    """Log `event` for the current workspace once per `dedup_key`: True if accepted now, False for a duplicate.

    `dedup_key` is a full Redis key (the source builds it with `workspaces.key`). `also` adds the
    source's own bookkeeping to the same transaction; it is applied for a duplicate too (a source
    that saw the same change twice must still catch up).
    Raises redis.RedisError when Redis fails (also while it loads its data after a restart): then
    nothing was stored and a retry can succeed. With a `backlog_limit` (a source whose sender retries:
    webhooks), raises eventlog.BacklogFull, nothing stored, while the workspace has that many events and
    runs waiting (not with `also`); with `per_second`, eventlog.TooFast while its events come faster than that;
    with `per_day`, eventlog.DayFull once it accepted that many events today; with `latest` (a time.time(), not with
    `also` either), eventlog.TooLate, nothing stored, when Redis would store it after then (a chat's patience).
    """
    if also is None:
        return accept_event(connection, event, dedup_key=dedup_key, dedup_ttl=dedup_ttl, backlog_limit=backlog_limit,
                            per_second=per_second, per_day=per_day, latest=latest) is not None
    if latest:
        raise ValueError("submit_event: `latest` is not checked with `also`")
    with connection.pipeline(transaction=True) as pipe:
        eventlog.append(pipe, event.to_dict(), dedup_key=dedup_key, dedup_ttl=dedup_ttl, counted=_counted(event))
        scripts.call(pipe, _ALSO, keys=[dedup_key], args=_words(connection, also))
        return bool(pipe.execute()[0])


def _words(connection: redis.Redis, also: Callable[[Pipeline], None]) -> list:
    """The commands `also` queues, as `_ALSO` takes them: each one's word count, then its words."""
    with connection.pipeline(transaction=False) as recorder:
        also(recorder)
        return [word for args, _ in recorder.command_stack for word in (len(args), *args)]


def accept_event(connection: redis.Redis, event: Event, *, dedup_key: str, dedup_ttl: int, backlog_limit: int = 0,
                 per_second: float = 0.0, per_day: int = 0, latest: float = 0.0) -> int | None:
    """`submit_event` without `also`: None for a duplicate; when accepted now, the events the workspace accepted today
    with this one (the append script's count, with `per_day`; 0 without). What the usage alert of `per_day` reads
    (web/hooks.py): a count read before the append let a redelivery, not counted, set the alert off."""
    reply = eventlog.append(connection, event.to_dict(), dedup_key=dedup_key, dedup_ttl=dedup_ttl,
                            counted=_counted(event), backlog_limit=backlog_limit, per_second=per_second,
                            per_day=per_day, latest=latest)
    if not reply:
        return None
    return reply[1] if isinstance(reply, tuple) else 0


def _counted(event: Event) -> tuple[str, str]:
    """The (accepted, duplicate) counter fields of `event` (the append script counts its outcome)."""
    labels = {"workspace": workspaces.current().name, "source": event.source, "kind": event.kind}
    return (metrics.field("events", {**labels, "outcome": "accepted"}),
            metrics.field("events", {**labels, "outcome": "duplicate"}))
