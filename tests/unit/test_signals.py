"""A long-running process's stop signal (workers/signals.py) cannot deadlock the process on its way out."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.processes import ROOT

# The main thread holds the Event's own lock, as it does for a moment each time it waits on the
# Event, when SIGTERM and then Ctrl+C's SIGINT arrive: a handler that set the Event itself would
# wait for that lock forever.
INSIDE_THE_LOCK = textwrap.dedent("""
    import os, signal
    from workers.signals import stop_event

    stop = stop_event()
    with stop._cond:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    print("stopping" if stop.wait(5) else "never told")
""")


def test_signals_arriving_while_the_main_thread_holds_the_events_lock_still_stop_the_process():
    try:
        done = subprocess.run([sys.executable, "-c", INSIDE_THE_LOCK], cwd=ROOT, capture_output=True, text=True,
                              timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError("the process deadlocked in its stop-signal handler") from None
    assert done.stdout.strip() == "stopping", done.stderr
