"""The disk a web process's workspace exports hold, bounded: EXPORT_DISK_BYTES for all of them at once.

An export is written to a nameless temporary file (web/workspaces_api.py) and waitress sends that file from its I/O
loop. The export's heavy turn (web/heavy.py) ends once the file is written, but the file stays on disk until its
download ends: a client that reads slowly (or a byte at a time, never quiet long enough for waitress to drop it)
keeps up to EXPORT_MAX_BYTES (2 GiB) there, and one export after another, of one workspace or of many, each kept
another, until the disk every workspace's temporary files share was full.

So each archive's bytes are counted against the process's budget as they are written, and given back when its file
is closed. The file's own close is where: waitress closes it once sent, or when the client is gone (its channel
closes its buffers), and werkzeug's test client and a HEAD request through the response's close. Flask's
`response.call_on_close` is never called for a file werkzeug passes through to the server (`direct_passthrough`),
so it would have kept the count for good under waitress. A file dropped unclosed is closed by the collector, which
gives its count back too.

The count is this process's own (each of `web.server --processes N` keeps its own, as each has its own files).
"""
from __future__ import annotations

import io
import os
import tempfile
import threading

from flask import current_app

_EXTENSION = "export_disk"


class OverBudget(Exception):
    """The archive's bytes do not fit in what this process's other exports leave of EXPORT_DISK_BYTES now; nothing
    is kept (429: their downloads end, the room comes back)."""


class LargerThanBudget(OverBudget):
    """The archive alone is larger than EXPORT_DISK_BYTES: no retry can fit it (409)."""


class Budget:
    """The bytes of export archives this process holds on disk, against a limit read at each write (the app's
    setting)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.held = 0

    def take(self, count: int, own: int, limit: int) -> None:
        """Count `count` more bytes of an archive that holds `own` already; OverBudget when they do not fit."""
        with self._lock:
            if own + count > limit:
                raise LargerThanBudget(f"the archive grew past {limit:,} bytes, the most this web server keeps on "
                                       f"disk for exports (EXPORT_DISK_BYTES)")
            if self.held + count > limit:
                raise OverBudget(f"exports still being downloaded from this web server hold {self.held - own:,} of "
                                 f"the {limit:,} bytes it keeps on disk for exports (EXPORT_DISK_BYTES), too few are "
                                 f"left for this archive")
            self.held += count

    def give_back(self, count: int) -> None:
        with self._lock:
            self.held -= count


def budget() -> Budget:
    """The app's budget (one app per web process)."""
    return current_app.extensions.setdefault(_EXTENSION, Budget())


class HeldFile(io.BufferedRandom):
    """A nameless temporary file whose bytes count against `budget` from their write until the file is closed."""

    def __init__(self, budget_: Budget, limit: int):
        fd, path = tempfile.mkstemp()
        try:
            os.unlink(path)  # nameless, as tempfile.TemporaryFile: its space goes back when it is closed
            raw = io.FileIO(fd, "w+b")
        except BaseException:
            os.close(fd)
            raise
        super().__init__(raw)
        self._budget, self._limit, self.held = budget_, limit, 0

    def write(self, data) -> int:
        count = memoryview(data).nbytes
        self._budget.take(count, self.held, self._limit)  # before it reaches the disk
        self.held += count
        return super().write(data)

    def close(self) -> None:
        try:
            super().close()
        finally:
            held, self.held = getattr(self, "held", 0), 0  # once, however often close is called
            if held:
                self._budget.give_back(held)
