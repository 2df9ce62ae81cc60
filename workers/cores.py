"""Where a long-running process runs: on one core, since its threads share one GIL.

    cores.pin()     # this process on the core it runs on now
    cores.pin(n)    # on the n-th (round) of the cores it may use: a server and the ones it forks,
                    # from cores.here(), so that a second web on the machine is likely to start elsewhere

A process's Python runs on one core at a time whatever the kernel allows, so a second core buys it
nothing but wake-ups across cores: each time the GIL passes between two of its threads (waitress's
I/O thread and a request thread, a poll round's loop and its pool), the thread taking it waits for
a core elsewhere to let go. One web server on 2 cores acknowledged 225-290 webhooks a second from 50
senders at 4-5 ms of CPU each, pinned 1,935 at 0.51 ms; a poller with 200 idle workspaces used 0.84
ms of CPU a second per workspace, pinned 0.57-0.60 (bench/RESULTS.md section 34).
"""
from __future__ import annotations

import ctypes
import os
import threading


def pin(index: int | None = None) -> None:
    """Keep this process on one core: the `index`-th (round) of those it may use, or the one it runs on now.

    Nothing happens where the kernel takes no CPU affinity (macOS) or with a single core.
    """
    try:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return
        core = {cores[(here() if index is None else index) % len(cores)]}
        for thread in _threads():  # an affinity is a thread's: those started already (a log writer) too
            os.sched_setaffinity(thread, core)
    except (AttributeError, OSError, ValueError):
        pass  # no affinities here, or the core is not among ours: the kernel places the process as before


def here() -> int:
    """Which of the cores this process may use it runs on now, counted from 0 (0 where that is not known)."""
    try:
        return sorted(os.sched_getaffinity(0)).index(ctypes.CDLL(None).sched_getcpu())
    except (AttributeError, OSError, ValueError):
        return 0


def _threads() -> list[int]:
    """This process's threads (Linux lists them in /proc), the calling one first; threads started later inherit."""
    try:
        return [0, *(int(tid) for tid in os.listdir("/proc/self/task") if int(tid) != threading.get_native_id())]
    except OSError:
        return [0]
