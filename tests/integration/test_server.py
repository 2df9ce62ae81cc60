"""`python -m web.server --processes N`: several servers on one port, stopped and failing as one web."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import requests

from tests.support.processes import Process, free_port, port_open, running_processes, wait_until
from tests.support.stack import WEBHOOK_SECRET, deliver

# The cores this test may use, as a server started from it finds them (web/server.py pins to one of them).
CORES = sorted(os.sched_getaffinity(0))


def _web(stack, processes: int, *options: str) -> tuple[Process, int]:
    port = free_port()
    process = Process.python("-m", "web.server", "--port", str(port), "--threads", "4", "--processes", str(processes),
                             *options, name="web", env={**stack.env, "WEBHOOK_SECRET_FORMS": WEBHOOK_SECRET})
    stack.processes.append(process)  # stopped (its process group) with the stack, whatever the test did
    process.wait_for_port(port, timeout=60)
    return process, port


def _affinities(pid: int) -> set[tuple[int, ...]]:
    """The cores each thread of `pid` may run on: one tuple for a process whose threads all keep to the same."""
    return {tuple(sorted(os.sched_getaffinity(int(t.name)))) for t in Path(f"/proc/{pid}/task").iterdir()}


def _forked(parent: int) -> list[int]:
    """The live child processes of `parent`: the servers it forked (it serves too)."""
    return [pid for pid, ppid, _ in running_processes() if ppid == parent]


@pytest.mark.timeout(120)
def test_two_servers_accept_webhooks_on_one_port_and_stop_together_on_sigterm(stack):
    web, port = _web(stack, 2)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: len(_forked(web.popen.pid)) == 1, 30, "a second server process")
    for i in range(20):  # new connections each: the kernel hands them to either server
        assert deliver(base, {"title": f"Task {i}"}, f"msg_{i}").status_code == 202
    assert deliver(base, {"title": "Task 0"}, "msg_0").status_code == 200  # a redelivery, whichever server
    forked = _forked(web.popen.pid)
    if len(CORES) > 1:  # each server, all its threads, on a core of its own (workers/cores.py)
        [[first], [second]] = [list(_affinities(pid)) for pid in (web.popen.pid, *forked)]
        assert len(first) == len(second) == 1 and first != second
    os.kill(forked[0], signal.SIGSTOP)  # the first server, the one the supervisor started, serves too
    assert deliver(base, {"title": "Task 20"}, "msg_20").status_code == 202
    os.kill(forked[0], signal.SIGCONT)
    assert len(requests.get(f"{base}/events", timeout=5).json()["events"]) == 21  # each accepted once

    os.kill(web.popen.pid, signal.SIGTERM)  # a supervisor stops the web's main process only

    assert web.popen.wait(30) == 0
    assert not port_open(port)
    assert not [pid for pid in forked if Path(f"/proc/{pid}").exists()]


@pytest.mark.timeout(120)
def test_a_forked_server_that_dies_takes_the_web_down_for_its_supervisor_to_see(stack):
    web, port = _web(stack, 3)
    wait_until(lambda: len(_forked(web.popen.pid)) == 2, 30, "two forked server processes")
    first, second = _forked(web.popen.pid)

    os.kill(first, signal.SIGKILL)

    assert web.popen.wait(30) != 0  # not a web at a fraction of its capacity that nobody notices
    assert "exited" in web.output()
    assert not port_open(port)
    assert not Path(f"/proc/{second}").exists()  # stopped and reaped by the first server


@pytest.mark.timeout(120)
def test_the_first_server_dying_takes_the_forked_ones_with_it(stack):
    web, port = _web(stack, 2)
    wait_until(lambda: len(_forked(web.popen.pid)) == 1, 30, "a second server process")
    forked = _forked(web.popen.pid)

    os.kill(web.popen.pid, signal.SIGKILL)  # no chance to stop the others itself

    web.popen.wait(30)
    # The port first: a server's main thread shows as a zombie while its other threads still hold it.
    wait_until(lambda: not port_open(port), 30, "no server on the port")
    # Then the forked ones: waitress closes its socket first, then lets its threads finish.
    wait_until(lambda: not [pid for pid in forked if _alive(pid)], 30, "the forked servers to exit")


@pytest.mark.timeout(120)
def test_a_burst_of_stop_signals_still_stops_a_server(stack):
    """Ctrl+C reaches every server of the web, then its supervisor's SIGTERM, then the first server's
    own: stop signals arrive together. A server handling one when the next came must still stop (a
    lock taken in the signal handler once left a server deadlocked in it, holding the port)."""
    web, port = _web(stack, 2)
    wait_until(lambda: len(_forked(web.popen.pid)) == 1, 30, "a second server process")
    [forked] = _forked(web.popen.pid)

    for _ in range(100):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                os.kill(forked, signum)
            except ProcessLookupError:
                break

    wait_until(lambda: not _alive(forked), 20, "the signalled server to exit")
    web.popen.wait(30)
    wait_until(lambda: not port_open(port), 30, "no server on the port")


def _alive(pid: int) -> bool:
    """`pid` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2:].split()[0] != "Z"


@pytest.mark.timeout(60)
def test_one_process_serves_health_as_before(stack):
    web, port = _web(stack, 1)
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json() == {"status": "ok"}
    if len(CORES) > 1:  # a lone server keeps to the core it started on; with --no-pin the kernel moves it
        assert len(_affinities(web.popen.pid)) == 1 and len(next(iter(_affinities(web.popen.pid)))) == 1
        free, port = _web(stack, 1, "--no-pin")
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert _affinities(free.popen.pid) == {tuple(CORES)}
