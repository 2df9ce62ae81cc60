"""Crash points for tests: a process that kills itself at a named place in the code.

For tests only, like FoundationDB's and TiKV's failpoints: production never sets ENGINE_FAILPOINTS,
and then `hit` is one look-up in an empty frozenset. The crash tests (tests/integration/
test_crash_points.py) start a worker with, e.g.,

    ENGINE_FAILPOINTS=after_answer        dies at the first `hit("after_answer")`
    ENGINE_FAILPOINTS=after_answer@2      dies at the second one (earlier hits pass)
    ENGINE_FAILPOINTS=a,b@3               either (comma separated)

and the process dies there with SIGKILL (no cleanup, no `finally`, no atexit: as in a crash).
The variable is read once, at import.

The points (see docs/execution.md, "Crash points"):
    before_send     a write's ledger "sent" mark is stored, the request not yet sent (workers/effects.py
                    _write: every ledger write, a create's POST first in the crash tests' rule)
    after_answer    the write's answer came back, its "done" not yet recorded (same place)
    between_steps   a step was recorded, the next not yet started (workers/jobs.py)
    during_notify   a notification was sent, its step not yet recorded (workers/jobs.py)
"""
from __future__ import annotations

import os
import signal
import threading

ENVIRONMENT = "ENGINE_FAILPOINTS"


def _parse(text: str) -> dict[str, int]:
    """"a,b@3" -> {"a": 1, "b": 3}: the hit (1-based) at which each point kills."""
    points: dict[str, int] = {}
    for item in text.split(","):
        name, _, nth = item.strip().partition("@")
        if name:
            points[name] = int(nth) if nth else 1
    return points


_NTH = _parse(os.environ.get(ENVIRONMENT, ""))
ARMED = frozenset(_NTH)  # empty unless a test set ENGINE_FAILPOINTS
_hits: dict[str, int] = {}
_lock = threading.Lock()


def hit(name: str, *, when: bool = True) -> None:
    """Kill this process (SIGKILL) if `name` is armed and this is its Nth hit; else do nothing.

    `when=False` does not count as a hit (a place shared by several kinds of step, e.g. only
    notifications).
    """
    if name not in ARMED or not when:
        return
    with _lock:
        _hits[name] = count = _hits.get(name, 0) + 1
    if count == _NTH[name]:
        os.write(2, f"failpoint {name}: SIGKILL (hit {count})\n".encode())  # the test reads where it died
        os.kill(os.getpid(), signal.SIGKILL)
