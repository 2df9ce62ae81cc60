"""The request log: every request to /api/odata/, so tests can count what reached "InLoox"."""
from __future__ import annotations

import collections
import threading

# Enough for any test and most benchmarks; the oldest entries go first beyond it.
MAX_ENTRIES = 200_000


class RequestLog:
    """Entries `{method, path, query, status, body, at, fault}` in arrival order; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries = collections.deque(maxlen=MAX_ENTRIES)

    def append(self, entry: dict) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[dict]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
