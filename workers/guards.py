"""Loop guards: how far a chain of our own writes may go, and how often a rule may hit one entity.

A rule that writes the field it triggers on would loop forever. Three guards stop that:
1. changes made by the engine's own InLoox user arrive as `chained` events, which rules ignore
   unless they say `allow_chained: true` (handled where runs start);
2. every write we make records its hop count on the entity it wrote (`wrote:<Set>:<key>`), so the
   chained event it causes carries hop + 1, and a chain stops at HOP_LIMIT;
3. a rule that runs more than RUN_LIMIT times on one entity within RUN_WINDOW seconds is paused
   and flagged until a person resumes it (`flask runs resume --rule ID`).
A rule's own `rate_limit` (at most n runs per window) is kept here too: runs over it wait.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from workers import metrics
from workers.round_trips.pipeline import set_key
from workers.workspaces import key as ws_key

HOP_LIMIT = 3
RUN_LIMIT = 10
RUN_WINDOW = 60
WROTE_TTL = 600  # a chained event arrives within a few polls of the write that caused it


def note_write(connection: redis.Redis, entity_set: str, key: str, hops: int) -> None:
    """Remember that we wrote this entity at chain depth `hops`."""
    set_key(connection, ws_key(f"wrote:{entity_set}:{key}"), hops, ex=WROTE_TTL)


def hops_of(connection: redis.Redis, entity_set: str, keys: Iterable[str]) -> dict[str, int]:
    """Chain depth of our latest write to each entity (0 where we wrote nothing recently)."""
    keys = list(keys)
    if not keys:
        return {}
    values = connection.mget([ws_key(f"wrote:{entity_set}:{k}") for k in keys])
    return {k: int(v) if v is not None else 0 for k, v in zip(keys, values)}


def writes_of(connection: redis.Redis, entity_set: str, keys: Iterable[str]) -> dict[str, tuple[int, float]]:
    """Our latest write to each entity that has a note: (chain depth, seconds since it was noted)."""
    keys = list(keys)
    if not keys:
        return {}
    with connection.pipeline(transaction=False) as pipe:
        for k in keys:
            pipe.get(ws_key(f"wrote:{entity_set}:{k}"))
            pipe.pttl(ws_key(f"wrote:{entity_set}:{k}"))
        replies = pipe.execute()
    return {k: (int(hops), WROTE_TTL - ttl / 1000) for k, hops, ttl in zip(keys, replies[::2], replies[1::2])
            if hops is not None and ttl > 0}


def forget_write(pipe, entity_set: str, key: str) -> None:
    """Use up the note of our write to this entity: it explained one change, the next one is a person's.

    Sets without a column naming who changed a row (the scanned ones) rely on the note alone;
    left in place, it would mark a person's edit within WROTE_TTL as ours.
    """
    pipe.delete(ws_key(f"wrote:{entity_set}:{key}"))


@dataclass(frozen=True)
class Admission:
    """What the guards read as a run of `rule_id` starts for one event (see `admission`)."""

    rule_id: str
    paused_key: str  # the rule's pause flag
    counter_key: str | None  # the rule's runs on the event's entity in this window; None: not counted
    entity: str  # "Set(key)" of the event, for the reason
    hops: int  # the event's chain depth
    too_deep: bool  # a chain of our own writes at HOP_LIMIT: refused whatever Redis says
    limit: int = RUN_LIMIT
    window: int = RUN_WINDOW


def admission(rule_id: str, event: dict, *, counted: bool = True) -> Admission:
    """What to read (and count) before a run of this rule starts for this event.

    workers.runs.create_run asks it in the script that stores the run (no round trip of its own);
    `refusal` asks it on its own. `counted=False`: the run is not counted as one more run on the event's
    entity (a for_each item's: its query's run was counted, and it is part of that one run).
    """
    hops = int((event.get("payload") or {}).get("hops", 0))
    too_deep = bool(event.get("chained")) and hops >= HOP_LIMIT
    counted = counted and event.get("entity_set") and not too_deep
    return Admission(rule_id, ws_key(f"rule:paused:{rule_id}"),
                     ws_key(f"rate:{rule_id}:{event['entity_set']}:{event['key']}") if counted else None,
                     f"{event.get('entity_set')}({event.get('key')})", hops, too_deep)


def refusal(connection: redis.Redis, rule_id: str, event: dict) -> str | None:
    """Why this rule must not run for this event (paused, chain too long, too frequent), or None.

    One round trip: the pause flag is read with the run counted (a run of a paused rule counts
    too, which changes nothing: the rule is paused already).
    """
    asked = admission(rule_id, event)
    with connection.pipeline(transaction=False) as pipe:
        pipe.get(asked.paused_key)
        if asked.counter_key:
            pipe.incr(asked.counter_key)
            pipe.expire(asked.counter_key, asked.window, nx=True)
        paused, *counted = pipe.execute()
    return verdict(connection, asked, paused, counted[0] if counted else None)


def verdict(connection: redis.Redis, asked: Admission, paused: bytes | None, count: int | None) -> str | None:
    """Why the run must not start, from what was read for `asked` (None: it may); counts the refusal."""
    if paused is not None:
        metrics.count(connection, "loops_stopped", reason="paused")
        return f"rule paused: {paused.decode()}"
    if asked.too_deep:
        metrics.count(connection, "loops_stopped", reason="hops")
        return f"chain of our own writes stopped at {asked.hops} hops"
    if count is None:
        return None
    return _too_frequent(connection, asked, count)


def _too_frequent(connection: redis.Redis, asked: Admission, count: int) -> str | None:
    if count <= asked.limit:
        return None
    reason = f"ran more than {asked.limit} times on {asked.entity} within {asked.window}s"
    connection.set(asked.paused_key, reason)
    metrics.count(connection, "loops_stopped", reason="frequency")
    return f"rule paused: {reason}"


def rate_wait(connection: redis.Redis, rule_id: str, rate: dict, *, now: float | None = None) -> float:
    """0 if the rule may start one more run now (and counts it), else seconds until it may.

    `rate` is the plan's `{"max": n, "per_seconds": s}`: at most n runs in each window of s seconds.
    """
    now = time.time() if now is None else now
    window = int(now // rate["per_seconds"])
    counter = ws_key(f"ratelimit:{rule_id}:{window}")
    with connection.pipeline() as pipe:
        pipe.incr(counter)
        pipe.expire(counter, int(rate["per_seconds"]) + 60)
        count = pipe.execute()[0]
    if count <= rate["max"]:
        return 0.0
    connection.decr(counter)  # refused runs do not use up the window
    return (window + 1) * rate["per_seconds"] - now


def resume_rule(connection: redis.Redis, rule_id: str) -> bool:
    """Lift a rule's pause; False if it was not paused."""
    return bool(connection.delete(ws_key(f"rule:paused:{rule_id}")))
