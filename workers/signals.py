"""How a long-running process learns that it should stop: SIGTERM (honcho, systemd) or SIGINT (Ctrl+C).

    stop = stop_event()     # a threading.Event, set soon after the first SIGTERM or SIGINT

The signal handler takes no lock: it writes a byte to a pipe, and a thread of the process, waiting
on the pipe, sets the Event. Python runs a handler in the main thread between two bytecodes, also
inside another run of itself (Ctrl+C reaches every process of `make run` and honcho's SIGTERM
follows at once) and while the main thread holds the Event's own lock (waiting on it); the lock
is not reentrant, so a handler that set the Event itself could deadlock the process on its way
out, holding its port. A web server did (web/server.py, tests/integration/test_server.py).
"""
from __future__ import annotations

import os
import signal
import threading


def stop_event() -> threading.Event:
    """An Event set by the process's first SIGTERM or SIGINT (its handler is installed here)."""
    stop = threading.Event()
    read, write = os.pipe()
    os.set_blocking(write, False)

    def handler(signum, frame):
        try:
            os.write(write, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of stop signals already: the Event is being set

    def follow():
        os.read(read, 1)
        stop.set()

    threading.Thread(target=follow, name="stop-signal", daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return stop
