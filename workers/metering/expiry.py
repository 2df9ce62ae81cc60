"""Expiry of counter keys, set once in a while rather than with every count.

A count (HINCRBY) on a day's usage hash or a series' hour hash used to carry an EXPIRE each time:
half of the commands an idle workspace's polls cost to count. A process now sets a key's TTL the
first time it counts on it and again after RESET_SECONDS; a key deleted and made again meanwhile (a
workspace deleted and purged, workers/registry) has its TTL back within RESET_SECONDS.
"""
from __future__ import annotations

import threading
import time

RESET_SECONDS = 3600.0
_MAX_KEYS = 100_000  # forgotten all at once beyond this: a TTL set again is harmless

_set_at: dict[str, float] = {}
_lock = threading.Lock()


def expire(target, key: str, ttl: int) -> None:
    """Queue `EXPIRE key ttl` on `target` unless this process did within RESET_SECONDS."""
    if due(key):
        target.expire(key, ttl)


def due(key: str) -> bool:
    """True (and noted as set now) when this process has not set `key`'s TTL within RESET_SECONDS: the caller
    sets it (a script that counts on the key does it there, `expire` queues it)."""
    now = time.monotonic()
    with _lock:
        if now - _set_at.get(key, -RESET_SECONDS) < RESET_SECONDS:
            return False
        if len(_set_at) >= _MAX_KEYS:
            _set_at.clear()
        _set_at[key] = now
    return True
