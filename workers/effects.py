"""The executor table: one function per primitive operation verb, each safe to call again.

Writes go through the step ledger so that a retried or recovered step never writes twice:
    create   durable "sent" mark, then POST with a marker in the entity; a later attempt that finds
             the mark looks for the marker and adopts the entity it finds instead of posting again
    update   read first; skipped when InLoox already has the values (so a re-send is a no-op), or when the
             ledger says it was done (a retry from the start: what a person changed since stays)
    delete   a 404 means done; found "done" in the ledger, not sent again
    invoke, notify, http   at most once: after an unknown outcome they stop and ask a person
Reads (get, query) have no effect to protect and simply run again.

A run's first step, when it is a create with a marker field or an update, is marked "sent" with the
run's creation (workers/jobs.py), one round trip less: a later attempt that finds the mark looks in
InLoox first, which is all an early mark costs should the run stop before sending (a limit, a crash).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import redis

from engine import diff_snapshots
from inloox import Client, InLooxError, NotFound, OutcomeUnknown, contains, raw, together
from inloox.connections import exchanges
from workers import failpoints, ledger
from workers.outbound import OutboundPolicy, OutboundRefused, http, notify

# Where a created entity carries its marker, per entity set (a text field InLoox stores as given).
MARKER_FIELDS = {
    "TimeEntry": "DescriptionText", "Task": "DescriptionHTML", "Project": "DescriptionText",
    "LineItem": "DescriptionText", "Document": "DescriptionHTML", "Planning": "DescriptionHTML",
}


# What a gateway in front of InLoox answers when InLoox's own answer broke off (502) or did not come in time
# (504): like a lost answer, it says nothing of whether InLoox applied the write. (A 503 says InLoox is not
# taking requests, mostly: some proxies, Envoy's among them, answer 503 to a request whose server closed the
# connection before answering, when it may have applied it; see `_write`.)
GATEWAY_ANSWERS = (502, 504)
# A 503 that took this long to come is taken for a router in front of InLoox that gave up waiting for it (Heroku's
# router answers 503 after 30 s, Azure Front Door after its origin timeout), while InLoox may go on with the request
# and apply it later; one that came sooner is InLoox, or a proxy with no server to ask, not taking requests. Routers
# wait longer than this; InLoox's own 503 comes at once. (Past INLOOX_TIMEOUT no answer comes: a lost answer.)
SLOW_503_SECONDS = 2.0


class NotSettled(OutcomeUnknown):
    """A create whose answer was lost is not in InLoox yet, but may still arrive: look for it again
    after `retry_after` seconds rather than send it again now."""


class NeedsAttention(Exception):
    """The step may or may not have happened and cannot be checked: a person must decide."""


@dataclass
class StepContext:
    """What a step may use: the InLoox client, Redis (for the ledger) and the outbound policy.

    `fresh`: the run was created a moment ago and never attempted, so the ledger holds nothing of
    it (its idempotency keys are its own) and need not be read. `after`: ledger writes that go to
    Redis with the step's record, in one round trip (the caller executes them); a "done" that is
    lost with a crash only makes the next attempt check InLoox, which the "sent" mark asks for anyway.
    `lock`: held by the run's executor (workers/jobs.py), which renews and releases it.
    """

    client: Client
    connection: redis.Redis
    outbound: OutboundPolicy
    fresh: bool = False
    after: list[Callable[[object], None]] = field(default_factory=list)
    lock: object = None  # the run's lock (redis-py's Lock), given back with the run's last status
    marked: str | None = None  # the idempotency key marked "sent" with the run's creation (workers/jobs.py)
    settle_seconds: float = 60.0  # how long a write whose answer was lost may take to appear (INLOOX_SETTLE_SECONDS)

    def earlier(self, key: str) -> dict | None:
        """The ledger entry of an earlier attempt at this operation, or None."""
        return None if self.fresh else ledger.entry(self.connection, key)

    def mark_done(self, key: str, output) -> None:
        """Record "done" with the step's record (see `after`)."""
        self.after.append(lambda pipe: ledger.mark_done(pipe, key, output))


def checkable_write(operation: dict) -> bool:
    """True for a write whose "sent" mark a later attempt checks in InLoox instead of asking a person:
    a create on a set with a marker field, an update (read before it is sent). Only these may be marked
    before the run reaches them; invoke, notify and http found "sent" would wait for a person."""
    entity_set = (operation.get("params") or {}).get("entity_set") or (operation.get("args") or {}).get("entity_set")
    return operation["verb"] == "update" or operation["verb"] == "create" and entity_set in MARKER_FIELDS


def checked_again(verb: str, params: dict) -> bool:
    """True for a step whose next attempt asks InLoox before writing anything again: a read, a create that
    carries its marker, an update (read first), a delete (a 404 is done). After an error InLoox answered
    (a 500: the write may have half happened) such a step may be tried again by itself; invoke, notify and
    http may not (found "sent", they wait for a person)."""
    return verb in ("get", "query", "delete") or checkable_write({"verb": verb, "params": params})


def marker(key: str) -> str:
    """The text a created entity carries so that a later attempt can find it."""
    return f"[automation {key}]"


def create(ctx: StepContext, params: dict, key: str) -> dict:
    """POST an entity exactly once (see the module docstring)."""
    entity_set, values = params["entity_set"], dict(params["values"])
    field = MARKER_FIELDS.get(entity_set)
    earlier = ctx.earlier(key)
    if earlier and earlier["state"] == "done":
        return earlier["output"]
    if earlier and earlier["state"] == "sent":
        found = _find_marked(ctx, entity_set, field, key)
        if found is not None:
            ctx.mark_done(key, found)
            return found
        _settled(ctx, earlier, entity_set)
    if field:
        values[field] = _with_marker(values.get(field), key, html=field.endswith("HTML"))
    return _write(ctx, key, lambda: ctx.client.create(entity_set, values), looked_for=field is not None)


def update(ctx: StepContext, params: dict, key: str) -> dict:
    """PATCH only the fields that differ; nothing is sent when InLoox has the values already, or had them once."""
    earlier = ctx.earlier(key)
    if earlier and earlier["state"] == "done":
        # It landed (or was found in place): a person's retry from the start must not send it again, over what
        # a person changed since (docs/execution.md). Only a "sent" mark is checked in InLoox again.
        return earlier["output"]
    entity_set, target, values = params["entity_set"], params["key"], params["values"]
    current = ctx.client.get(entity_set, target, select=list(values))
    changes = diff_snapshots(current, values, values)
    if not changes:
        ctx.mark_done(key, {"unchanged": True})
        return {"unchanged": True}
    return _write(ctx, key, lambda: ctx.client.update(entity_set, target, dict(values)) or {"updated": True})


def delete(ctx: StepContext, params: dict, key: str) -> dict:
    """DELETE; an entity that is already gone counts as deleted. Done once, it is not sent again."""
    earlier = ctx.earlier(key)
    if earlier and earlier["state"] == "done":
        # A retry from the start asks its queries again: a key read from `steps.<id>` may now name another entity
        # (the next one a query finds, the first being gone), which a second DELETE would remove too.
        return earlier["output"]
    try:
        ctx.client.delete(params["entity_set"], params["key"])
    except NotFound:
        output = {"deleted": False, "already_gone": True}
    else:
        output = {"deleted": True}
    ctx.mark_done(key, output)  # with the step's record: a crash before it sends the DELETE again, as before
    return output


def invoke(ctx: StepContext, params: dict, key: str):
    """A bound action or function, at most once."""
    call = ctx.client.action if params.get("method", "POST") == "POST" else ctx.client.function
    return _once(ctx, key, lambda: call(params["entity_set"], params["key"], params["operation"],
                                        params.get("parameters") or {}))


def get(ctx: StepContext, params: dict, key: str) -> dict:
    """One entity by key."""
    return ctx.client.get(params["entity_set"], params["key"])


def query(ctx: StepContext, params: dict, key: str) -> dict:
    """Entities matching the rule's filter; `value` is the list (as in OData)."""
    rows = ctx.client.query(params["entity_set"], filter=raw(params["filter"]) if params.get("filter") else None,
                            select=params.get("select"), orderby=params.get("orderby"), top=params.get("top"))
    return {"value": list(rows)}


def send_notification(ctx: StepContext, params: dict, key: str) -> dict:
    """A chat/email/webhook notification through Apprise, at most once."""
    return _once(ctx, key, _timed(lambda: notify(ctx.outbound, params["url"], params["text"], params.get("title", ""))
                                  or {"sent": True}))


def send_http(ctx: StepContext, params: dict, key: str) -> dict:
    """An outbound HTTP request, at most once."""
    return _once(ctx, key, _timed(lambda: http(ctx.outbound, params["method"], params["url"],
                                               headers=params.get("headers"), body=params.get("body"))))


EXECUTORS: dict[str, Callable[[StepContext, dict, str], object]] = {
    "create": create, "update": update, "delete": delete, "invoke": invoke,
    "get": get, "query": query, "notify": send_notification, "http": send_http,
}


def _write(ctx: StepContext, key: str, send: Callable[[], object], *, looked_for: bool = False):
    """Mark "sent", send, mark "done"; InLoox's clear refusals unmark so a retry may send again.

    `looked_for`: a later attempt that finds the write "sent" looks for it in InLoox (a create with its marker),
    so even a 503 keeps the mark: it costs that look, where a 503 after InLoox applied the create (a proxy's
    answer to a connection its server closed) made a second entity. A slow 503 (SLOW_503_SECONDS) is kept as a
    lost answer: a router that gave up waiting says nothing of what InLoox did, which may still apply the create
    after the look, so it is sent again only INLOOX_SETTLE_SECONDS after the 503, as after a gateway's 502 or 504; a
    quick 503 (InLoox down for maintenance) is looked for and sent again at once, or every short outage would cost
    each create a minute. Steps that cannot be looked for are sent again after a 503, as before: kept "sent",
    they would stop for a person after every outage.
    """
    if key != ctx.marked:
        ledger.mark_sent(ctx.connection, key)
    failpoints.hit("before_send")  # tests only (inert unless ENGINE_FAILPOINTS is set)
    sent = time.monotonic()
    try:
        output = send()
    except OutcomeUnknown:
        # Keep "sent" (the next attempt checks InLoox before writing again), noting that the answer
        # was lost: InLoox may still hold the request, so a create waits for it to settle.
        ledger.mark_lost(ctx.connection, key)
        raise
    except InLooxError as exc:
        # The 503's own time, from the client's send: a wait for the request budget before it is no router's.
        took = exc.seconds if exc.seconds is not None else time.monotonic() - sent
        if exc.status in GATEWAY_ANSWERS or looked_for and exc.status == 503 and took >= SLOW_503_SECONDS:
            # A gateway answered for InLoox, which took the request: it may have applied it, or still will.
            # Kept as a lost answer, so that the next attempt looks for it (it used to be sent again: twice).
            ledger.mark_lost(ctx.connection, key)
        elif exc.retryable and not (looked_for and exc.status == 503) or \
                exc.status is not None and 400 <= exc.status < 500:
            # InLoox said no, or nothing reached it. A 3xx is no refusal (a 303 See Other follows a POST that
            # landed): kept "sent", so that a person's retry looks for the write before sending it again.
            ledger.clear(ctx.connection, key)
        raise
    except OutboundRefused:
        ledger.clear(ctx.connection, key)  # refused before sending, or the receiver said no
        raise
    failpoints.hit("after_answer")  # tests only
    ctx.mark_done(key, output)
    return output


def _once(ctx: StepContext, key: str, send: Callable[[], object]):
    """Like _write, but a step found "sent" cannot be checked, so it is not sent again."""
    earlier = ctx.earlier(key)
    if earlier and earlier["state"] == "done":
        return earlier["output"]
    if earlier and earlier["state"] == "sent":
        raise NeedsAttention("an earlier attempt may have done this already and it cannot be checked; "
                             "retry the run from this step once you have looked")
    return _write(ctx, key, send)


def _timed(send: Callable[[], object]) -> Callable[[], object]:
    """`send`, recording how long each call takes with InLoox's answer times (inloox.connections.exchanges).

    The worker's in-flight limit (workers/consumer/in_flight.py) reads them to tell events waiting
    for answers from a process busy with its own CPU; a slow receiver outside InLoox (Slack, Teams,
    a webhook) is waited for just the same, and unseen it would look like a busy CPU. (InLoox's
    client records its own requests.)
    """
    def timed():
        with exchanges.exchange():  # also out of the worker's gate while waiting (workers/consumer/gate.py)
            return send()
    # In a batch run together, on a thread of its own (together.blocking): a receiver the customer chose may
    # take its whole timeout, and the batch's other calls (other workspaces' too) go on meanwhile.
    return lambda: together.blocking(timed)


def _settled(ctx: StepContext, earlier: dict, entity_set: str) -> None:
    """Raise NotSettled while the earlier attempt may still be applied by InLoox.

    An answer lost to our read timeout does not mean InLoox dropped the request: it may still hold it
    in a queue and apply it later. Its marker not being there yet is no proof, so the create is
    sent again only INLOOX_SETTLE_SECONDS after the answer was lost (test_acceptance). A "sent" mark
    without a lost answer (a worker that died, an error InLoox answered) is not waited for.
    """
    if not earlier.get("answer_lost"):
        return  # never sent (a worker died first), or answered: nothing can still be on its way
    lost = datetime.fromisoformat(earlier["at"])
    left = ctx.settle_seconds - (datetime.now(timezone.utc) - lost).total_seconds()
    if left > 0:
        raise NotSettled(f"the earlier create of {entity_set} may still reach InLoox: looking again in {left:.0f}s "
                         "before sending it again", retry_after=left)


def _find_marked(ctx: StepContext, entity_set: str, field: str | None, key: str) -> dict | None:
    if field is None:
        raise NeedsAttention(f"{entity_set} has no field to carry a marker, and an earlier attempt "
                             "may have created it; check InLoox, then retry the run from this step")
    rows = list(ctx.client.query(entity_set, filter=contains(field, marker(key)), top=2))
    return rows[0] if rows else None


def _with_marker(text: str | None, key: str, *, html: bool) -> str:
    tag = f"<p>{marker(key)}</p>" if html else marker(key)
    return f"{text}{'' if html else chr(10)}{tag}" if text else tag
