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

And one workspace keeps one archive on disk at a time (per process): its next export waits for the download of the
one before to end (429). Without it, one customer's exports downloaded slowly took the whole budget, and every
other customer's export was refused until they ended.

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


class Downloading(OverBudget):
    """The workspace has an archive of this process's on disk already, its download not ended (429)."""


class LargerThanBudget(OverBudget):
    """The archive alone is larger than EXPORT_DISK_BYTES, or than the most an export writes: no retry can fit it
    (409)."""


class Budget:
    """The bytes of export archives this process holds on disk, against a limit read at each write (the app's
    setting)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.held = 0
        self._files: set[str] = set()  # the workspaces with an archive on disk

    def open(self, workspace: str) -> None:
        """Count the workspace's one archive on disk; Downloading when it has one already."""
        with self._lock:
            if workspace in self._files:
                raise Downloading(f"an export of workspace {workspace!r} is still being downloaded from this web "
                                  f"server (one at a time)")
            self._files.add(workspace)

    def closed(self, workspace: str, count: int) -> None:
        """The workspace's archive is gone: its `count` bytes given back."""
        with self._lock:
            self._files.discard(workspace)
            self.held -= count

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


def budget() -> Budget:
    """The app's budget (one app per web process)."""
    return current_app.extensions.setdefault(_EXTENSION, Budget())


class HeldFile(io.BufferedRandom):
    """A workspace's archive in a nameless temporary file, counted against `budget` (its bytes from their write) until
    the file is closed, and refused past `max_bytes` (LargerThanBudget). Downloading when the workspace has one
    already.

    `held` is the one count of the archive's bytes: the budget's, its bound's and the answer's Content-Length.
    """

    def __init__(self, budget_: Budget, limit: int, workspace: str, *, max_bytes: int):
        budget_.open(workspace)
        try:
            fd, path = tempfile.mkstemp()
            try:
                os.unlink(path)  # nameless, as tempfile.TemporaryFile: its space goes back when it is closed
                raw = io.FileIO(fd, "w+b")
            except BaseException:
                os.close(fd)
                raise
            super().__init__(raw)
        except BaseException:
            budget_.closed(workspace, 0)  # no file: the workspace's turn back
            raise
        self._budget, self._limit, self._workspace, self.held, self._open = budget_, limit, workspace, 0, True
        self._max_bytes = max_bytes

    def write(self, data) -> int:
        count = memoryview(data).nbytes
        if self.held + count > self._max_bytes:
            raise LargerThanBudget(f"the archive grew past {self._max_bytes:,} bytes, the most an export writes")
        self._budget.take(count, self.held, self._limit)  # before it reaches the disk
        self.held += count
        return super().write(data)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if getattr(self, "_open", False):  # once, however often close is called
                self._open = False
                self._budget.closed(self._workspace, self.held)
