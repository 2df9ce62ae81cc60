"""The write clock: UTC ISO timestamps with milliseconds that strictly increase per write.

Change detection orders rows by `*_UpdatedAt`; two writes in the same millisecond must still be
ordered, so the clock bumps by 1 ms instead of repeating a value. Frozen (admin API), it repeats one
value instead: InLoox stamps every row of one UPDATE statement (a bulk edit, an import) alike.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone


def format_ms(epoch_ms: int) -> str:
    """`2025-04-01T09:00:00.123Z` for milliseconds since the epoch."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


class Clock:
    """Hands out strictly increasing timestamps; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last_ms = 0
        self._frozen = False

    def now(self) -> str:
        """The next timestamp: the wall clock, or 1 ms after the previous one if that is later; while frozen,
        the one taken when it froze."""
        with self._lock:
            if not self._frozen:
                self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
            return format_ms(self._last_ms)

    def freeze(self, frozen: bool) -> None:
        """Freeze (every write from now on gets one stamp, after every earlier one) or thaw (the next write's
        stamp is after it again)."""
        with self._lock:
            if frozen and not self._frozen:
                self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
            self._frozen = frozen
