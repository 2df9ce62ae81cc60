"""WORKER_NICE: a worker gives way to the web on a shared machine, also where Linux groups processes by session."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.processes import wait_until

AUTOGROUP = Path("/proc/self/autogroup")


@pytest.mark.skipif(not AUTOGROUP.exists(), reason="no autogroup scheduling on this kernel")
def test_a_worker_in_a_session_of_its_own_lowers_its_scheduling_group(stack):
    # honcho and systemd start each process in a session of its own; with autogroup on, sessions share
    # the CPU equally and os.nice alone changed nothing between the worker and the web (a core each).
    worker = stack.worker()  # started in a new session, as honcho does
    group = Path(f"/proc/{worker.popen.pid}/autogroup")

    wait_until(lambda: group.read_text().split()[-1] == "10", 30, f"the worker's autogroup at nice 10 ({group})")
    assert Path(f"/proc/{worker.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()[16] == "10"  # its own nice too
