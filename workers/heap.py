"""What Python's cyclic collector walks in a long-running process: only what changed lately.

    heap.settle()   # once started: what start-up built is frozen, the young generation made larger
    heap.keep()     # from the process's housekeeping turn: settles again every SETTLE_SECONDS
    heap.release()  # (each settle does it) the C heap's free pages given back to the kernel

A worker or poller holds each workspace it follows for as long as it follows it: its context and
clients (~50 objects) and its compiled rules (~500 for the example rules). Those are built after
start-up, at the workspace's first event or poll, and they reach the collector's oldest generation,
which a full collection walks whole. A poller following 1,000 workspaces held ~800,000 such objects,
and every ~25 s a full collection stopped all its threads for 0.45-0.70 s (bench/RESULTS.md section
33). Frozen (`gc.freeze`), they are no longer walked; the collections that remain walk what came
after the last settle.

A frozen object is still freed by its reference count, as workspace contexts and rules are when
replaced or let go (neither holds a reference cycle). Only a cycle frozen before it became garbage
stays until the next RECLAIM_SECONDS pass, which unfreezes and walks everything once.

Each settle also gives back to the kernel the pages of the C heap left free between chunks still in use
(glibc's malloc_trim, ~0.03-0.2 ms): what start-up parsed and compiled on its way stayed counted in the
process's RSS otherwise, 2-3 MB of an idle worker's 65 (issue 22). A poller (or a worker that polls)
settles once more when each of its loops has made its first round, which builds the workspaces' contexts
and rules.
"""
from __future__ import annotations

import gc
import threading
import time

YOUNG_OBJECTS = 10_000  # the collector's first generation (Python's default: 700)
SETTLE_SECONDS = 60.0  # how often what the process built since is frozen: a walk of what is not yet
RECLAIM_SECONDS = 3600.0  # how often a full walk frees the cycles that became garbage while frozen

_lock = threading.Lock()  # two loops of one process may keep it (a worker that also polls)
_next_settle = 0.0
_next_reclaim = 0.0
_trim = None  # glibc's malloc_trim once looked up; False without it


def settle(*, reclaim: bool = False, now: float | None = None) -> None:
    """Collect what is not frozen (everything, with `reclaim`), then freeze what lives.

    Events' and polls' objects that live for a batch or two reach the oldest generation; a young
    generation of 10,000 objects instead of 700 collects the same garbage in fewer passes, and what
    it holds meanwhile is a few MB at most (worker: RESULTS section 32).
    """
    global _next_settle, _next_reclaim
    now = time.monotonic() if now is None else now
    with _lock:
        if reclaim or not _next_reclaim:  # the first settle walks everything anyway: it counts as one
            gc.unfreeze()
            _next_reclaim = now + RECLAIM_SECONDS
        gc.collect()
        gc.freeze()
        gc.set_threshold(YOUNG_OBJECTS, *gc.get_threshold()[1:])
        _next_settle = now + SETTLE_SECONDS
    release()


def release() -> None:
    """Give the C heap's free pages back to the kernel (glibc's malloc_trim).

    What the process freed (start-up's imports and rules, the collection just made) otherwise stays
    in the heap between chunks still used, each page of it counted in the process's RSS (issue 22).
    """
    global _trim
    if _trim is None:
        try:
            import ctypes

            _trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _trim = False  # not glibc (macOS, musl): nothing to trim this way
    if _trim:
        _trim(0)


def keep(now: float | None = None) -> None:
    """Settle when SETTLE_SECONDS have passed since the last time; reclaim every RECLAIM_SECONDS.

    Cheap between settles (a clock read); a settle walks what the last minute left alive.
    """
    now = time.monotonic() if now is None else now
    if now >= _next_settle:
        settle(reclaim=now >= _next_reclaim, now=now)
