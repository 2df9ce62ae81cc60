"""Crash points for tests: a process that kills itself at a named place in the code.

For tests only, like FoundationDB's and TiKV's failpoints: production never sets ENGINE_FAILPOINTS,
and then `hit` is one look-up in an empty frozenset. The crash tests (tests/integration/
test_crash_points.py) start a worker with, e.g.,

    ENGINE_FAILPOINTS=after_answer        dies at the first `hit("after_answer")`
    ENGINE_FAILPOINTS=after_answer@2      dies at the second one (earlier hits pass)
    ENGINE_FAILPOINTS=a,b@3               either (comma separated)

and the process dies there with SIGKILL (no cleanup, no `finally`, no atexit: as in a crash).
A point can raise instead, as a bug would, each time its subject contains a text:

    ENGINE_FAILPOINTS=handle_event~poison  raises FailpointError for every event whose id has "poison"

A point can freeze the process instead (SIGSTOP: every thread stops there, as if descheduled at
that instruction), so that a test changes the world meanwhile (kills Valkey, sends SIGTERM) and
then continues it with SIGCONT:

    ENGINE_FAILPOINTS=freeze:rq_turn      stops at the first hit (`freeze:rq_turn@2`: the second)

A point can hold the thread that hits it instead, every time, until the file named by
ENGINE_FAILPOINTS_RELEASE exists, while the process's other threads go on (a web request kept
in progress, holding its waitress thread, while the test sends others):

    ENGINE_FAILPOINTS=hold:heavy_request  each hit waits for the release file (stderr: "failpoint heavy_request: held")

The variables are read once, at import.

The points (see docs/execution.md, "Crash points"):
    before_send     a write's ledger "sent" mark is stored, the request not yet sent (workers/effects.py
                    _write: every ledger write, a create's POST first in the crash tests' rule)
    after_answer    the write's answer came back, its "done" not yet recorded (same place)
    between_steps   a step was recorded, the next not yet started (workers/jobs.py)
    during_notify   a notification was sent, its step not yet recorded (workers/jobs.py)
    handle_event    an event is about to be matched (workers/jobs.py handle; subject: the event id)
    runs_stored     an event's runs are stored, the first live one's lease taken, none executed yet
                    (workers/jobs.py handle)
    runs_ending     a batch of events' runs were executed, their statuses not stored yet (workers/jobs.py Ending)
    consumer_turn   the event consumer starts a turn of its loop (workers/consumer/; subject: the worker's name)
    poll_round      a poller starts a round (workers/poller/loop.py run; subject: the poller's id)
    scheduler_loop  a poller's schedules loop starts (workers/poller/process.py Polling.schedule; subject: "start N."
                    for its Nth start in the process)
    schedule_workspace  the schedules loop fires a workspace's due ticks (workers/scheduler.py _fire; subject:
                    the workspace's name)
    rq_start        the worker's RQ loop is about to start (registration; its stop handlers not yet
                    installed: workers/worker.py bootstrap)
    rq_turn         RQ's loop starts a turn (its check for suspension: workers/worker.py)
    rq_wait         RQ's loop starts to wait for a job (before it writes its state "idle": workers/worker.py)
    rq_schedule_turn  RQ's scheduler thread starts a turn (workers/rq_schedule.py ThreadScheduler.work)
    delivery_sent   a change-feed delivery's attempt was made (answered or not), its outcome not yet recorded
                    (workers/deliveries.py)
    chat_confirmed  a chat confirmation took its held plan, its event not yet submitted (web/commands.py confirm)
    heavy_request   a heavy request (a replay, an export …: web/heavy.py WHAT) starts its work on a web thread,
                    its turn taken
"""
from __future__ import annotations

import os
import signal
import threading
import time

ENVIRONMENT = "ENGINE_FAILPOINTS"
RELEASE = "ENGINE_FAILPOINTS_RELEASE"  # the file whose existence lets held threads go on


class FailpointError(RuntimeError):
    """Raised by a point armed to raise: stands for any bug met while handling something."""


def _parse(text: str) -> tuple[dict[str, int], dict[str, str], frozenset[str], frozenset[str]]:
    """"a,b@3,c~x,freeze:d,hold:e" -> ({"a": 1, "b": 3, "d": 1, "e": 1}, {"c": "x"}, {"d"}, {"e"}): the hit
    (1-based) at which each point kills or freezes; what raises; which freeze; which hold (every hit)."""
    points: dict[str, int] = {}
    raising: dict[str, str] = {}
    freezing: set[str] = set()
    holding: set[str] = set()
    for item in text.split(","):
        name, tilde, subject = item.strip().partition("~")
        if tilde:
            raising[name] = subject
            continue
        name, _, nth = name.partition("@")
        if name.startswith("freeze:"):
            name = name.removeprefix("freeze:")
            freezing.add(name)
        if name.startswith("hold:"):
            name = name.removeprefix("hold:")
            holding.add(name)
        if name:
            points[name] = int(nth) if nth else 1
    return points, raising, frozenset(freezing), frozenset(holding)


_NTH, _RAISING, _FREEZING, _HOLDING = _parse(os.environ.get(ENVIRONMENT, ""))
ARMED = frozenset(_NTH) | frozenset(_RAISING)  # empty unless a test set ENGINE_FAILPOINTS
_hits: dict[str, int] = {}
_lock = threading.Lock()


def hit(name: str, *, when: bool = True, subject: str = "") -> None:
    """Kill this process (SIGKILL), or freeze it (SIGSTOP), if `name` is armed and this is its Nth hit; else do nothing.

    `when=False` does not count as a hit (a place shared by several kinds of step, e.g. only
    notifications). A point armed to raise raises FailpointError when `subject` has its text.
    """
    if name not in ARMED or not when:
        return
    if name in _RAISING:
        if _RAISING[name] in subject:
            raise FailpointError(f"failpoint {name} raised for {subject}")
        return
    with _lock:
        _hits[name] = count = _hits.get(name, 0) + 1
    if name in _HOLDING:  # every hit: the test counts the lines, then creates the release file
        os.write(2, f"failpoint {name}: held (hit {count})\n".encode())
        release = os.environ.get(RELEASE, "")
        while not (release and os.path.exists(release)):
            time.sleep(0.02)
        return
    if count != _NTH[name]:
        return
    if name in _FREEZING:  # the test sees the process stopped (state T) and continues it (SIGCONT)
        os.write(2, f"failpoint {name}: SIGSTOP (hit {count})\n".encode())
        # To this thread: sent to the process, the kernel may hand the stop to another thread (the main one, idle in
        # a select), and this one runs on meanwhile, long enough to send a request the point was to come before.
        signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
        return
    os.write(2, f"failpoint {name}: SIGKILL (hit {count})\n".encode())  # the test reads where it died
    os.kill(os.getpid(), signal.SIGKILL)
