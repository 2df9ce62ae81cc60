"""workers/cores.py: a process pinned to one core keeps every thread of it there, those started before too."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import os, threading
    from workers import cores
    started = threading.Event()
    threading.Thread(target=lambda: (started.set(), threading.Event().wait()), daemon=True).start()
    started.wait()
    cores.pin({index})
    print(sorted({{tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")}}))
""")


def _pinned(index) -> list[tuple[int, ...]]:
    # In a process of its own: pinning the test process would hold the rest of the suite to one core.
    out = subprocess.run([sys.executable, "-c", CHILD.format(index=index)], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return eval(out)  # noqa: S307 - our own child's repr of a list of tuples of ints


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinities and two cores")
def test_every_thread_keeps_to_the_core_given_or_the_one_it_runs_on():
    cores = sorted(os.sched_getaffinity(0))
    assert _pinned(1) == [(cores[1],)]
    assert _pinned(len(cores)) == [(cores[0],)]  # in turn: the n-th after the last is the first again
    [here] = _pinned(None)
    assert len(here) == 1 and here[0] in cores

