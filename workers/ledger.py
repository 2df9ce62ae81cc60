"""The step ledger: what we know about each operation's write, by its idempotency key.

    step:<idempotency key>  {"state": "sent", "at": …}    the request may have reached InLoox
                            {"state": "done", "output": …} it did, and this is what it returned

"sent" is written *before* a write goes out. Finding it on a later attempt means an earlier one
may have landed (a crash, a lost answer), so the executor checks InLoox before sending again.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import redis

from workers import workspaces

LEDGER_TTL = 30 * 24 * 3600


def entry(connection: redis.Redis, key: str) -> dict | None:
    """The ledger entry of an operation, or None if it never started."""
    raw = connection.get(_key(key))
    return json.loads(raw) if raw is not None else None


def mark_sent(connection: redis.Redis, key: str) -> None:
    """Record, durably, that the write is about to be sent."""
    connection.set(_key(key), json.dumps({"state": "sent", "at": _now()}), ex=LEDGER_TTL)


def mark_done(connection: redis.Redis, key: str, output) -> None:
    """Record that the write landed, with its output for later steps and later attempts."""
    connection.set(_key(key), json.dumps({"state": "done", "output": output, "at": _now()}, default=str),
                   ex=LEDGER_TTL)


def clear(connection: redis.Redis, key: str) -> None:
    """Forget a "sent" mark when InLoox answered that it did nothing (429, 503, refused connection)."""
    connection.delete(_key(key))


def _key(key: str) -> str:
    return workspaces.key(f"step:{key}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
