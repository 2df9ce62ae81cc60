"""The poller processes' beat: each `python -m workers.poller` (and `python -m workers.scheduler`, a poller process
with only the schedules' loop) says every few seconds how its loops are, for /readyz.

A worker that polls (WORKER_POLLS=1) says it in its own beat, under its RQ name (workers/worker.py
CONSUMER_BEAT, workers/consumer_beat.py); these are the processes that run nothing but polling, which RQ's
registry does not know.

    pollers:beats   hash: poller id → {"state", "at" (epoch s), "host", "pid", "kind"} as JSON

A poller that stops takes its entry with it (`leave`). One that dies leaves it behind, and /readyz
says it went away once GONE_AFTER passed without a beat. Only a live poller forgets a dead one
(after FORGET_AFTER, when its workspaces were long taken over): while none runs, the dead ones
stay said. A deployment whose only pollers are its workers has no entry, and nothing to miss.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

import redis

BEATS_KEY = "pollers:beats"  # deployment-wide, as POLLERS_KEY (workers/poller/leases.py)
BEAT_SECONDS = 5.0
# Four beats missed. "at" is the poller's clock, read against the web's: hosts must agree within seconds.
GONE_AFTER = 20.0
FORGET_AFTER = 300.0
POLLING = "polling"  # the state of a poller whose loops all run


@dataclass(frozen=True)
class Beat:
    """A poller process's latest beat: its state ("polling", "poller failing", "scheduler stopped", …)."""

    name: str
    state: str
    at: float  # epoch s
    host: str = "?"
    pid: int = 0
    kind: str = "poller"  # "scheduler": `python -m workers.scheduler`

    def where(self) -> str:
        """The process as an operator finds it: `poller 3fa8b2c1 (host-1, pid 4242)`."""
        return f"{self.kind} {self.name} ({self.host}, pid {self.pid})"

    def trouble(self, now: float) -> str | None:
        """What is wrong with the process at `now` (epoch s), None when it polls."""
        if now - self.at > GONE_AFTER:
            return f"gone: no beat for {now - self.at:.0f}s"
        return None if self.state == POLLING else self.state


def beat(connection: redis.Redis, name: str, state: str, *, now: float, kind: str = "poller") -> None:
    """Say `state` for the poller `name` at `now` (epoch s), and forget pollers dead for FORGET_AFTER.

    Raises RedisError: the caller says it again at its next beat.
    """
    record = json.dumps({"state": state, "at": now, "host": socket.gethostname(), "pid": os.getpid(), "kind": kind})
    connection.hset(BEATS_KEY, name, record)
    dead = [b.name for b in read(connection) if now - b.at > FORGET_AFTER]
    if dead:
        connection.hdel(BEATS_KEY, *dead)


def leave(connection: redis.Redis, name: str) -> None:
    """The poller `name` stops: nothing is missing when it no longer beats."""
    connection.hdel(BEATS_KEY, name)


def read(connection: redis.Redis) -> list[Beat]:
    """Every poller process's latest beat, by name; raises RedisError."""
    return sorted((_decoded(name.decode(), raw) for name, raw in connection.hgetall(BEATS_KEY).items()),
                  key=lambda b: b.name)


def _decoded(name: str, raw: bytes) -> Beat:
    try:
        record = json.loads(raw)
        return Beat(name, str(record["state"]), float(record["at"]), str(record["host"]), int(record["pid"]),
                    "scheduler" if record.get("kind") == "scheduler" else "poller")
    except (ValueError, KeyError, TypeError):  # not written by `beat`: said, not a 500 of /readyz
        return Beat(name, f"unreadable beat {raw[:40]!r}", 0.0)  # forgotten by the live pollers
