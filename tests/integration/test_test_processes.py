"""The tests' own process handling (tests/support/processes.py): nothing a test started outlives it."""
from __future__ import annotations

import time

from tests.support.processes import Process, group_runs, wait_until


def test_stop_ends_what_a_process_left_running_after_it_died():
    # As a web whose first server died, leaving a forked server running in its process group.
    process = Process(["sh", "-c", "sleep 300 & exit 0"], name="leaves-a-child")
    group = process.popen.pid
    wait_until(lambda: not process.alive(), 10, "the leader to exit")
    time.sleep(0.2)
    assert group_runs(group), "the child it left behind runs"

    process.stop()

    wait_until(lambda: not group_runs(group), 10, "nothing of the process group left")
