"""The tests' own process handling (tests/support/processes.py): nothing a test started outlives it."""
from __future__ import annotations

import os
import time

from tests.support.processes import Process, wait_until


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Members that are zombies (dead, not yet reaped by init) answer too: only running ones count.
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                text = open(f"/proc/{stat}/stat").read()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def test_stop_ends_what_a_process_left_running_after_it_died():
    # As a web whose first server died, leaving a forked server running in its process group.
    process = Process(["sh", "-c", "sleep 300 & exit 0"], name="leaves-a-child")
    group = process.popen.pid
    wait_until(lambda: not process.alive(), 10, "the leader to exit")
    time.sleep(0.2)
    assert _group_alive(group), "the child it left behind runs"

    process.stop()

    wait_until(lambda: not _group_alive(group), 10, "nothing of the process group left")
