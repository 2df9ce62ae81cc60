"""Real processes for integration tests: free ports, waiting on conditions, owned subprocesses."""
from __future__ import annotations

import atexit
import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _log_folder() -> Path:
    """Where this test process's children write their output: one folder, removed when the process ends.

    A log file of each process a test started (several per test) stayed in /tmp for good: some 500 a run of the
    suite. A failing test prints the output it needs (its teardown's captured output) before the folder goes.
    """
    folder = Path(tempfile.mkdtemp(prefix="engine-tests-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, message: str = "condition", interval: float = 0.05):
    """Poll `predicate` until it returns something truthy; return that, or fail naming `message`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - the predicate may fail until the thing is up
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}" + (f" (last error: {last_error!r})" if last_error else ""))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _die_with_parent() -> None:
    """In the child: SIGTERM it when the test process that started it dies, however it dies.

    A process group of its own keeps a child from Ctrl+C meant for pytest, but a pytest killed
    (SIGKILL, a CI time-out) runs no teardown: its workers and servers would live on, and a later
    test's Valkey on a reused port would meet an old test's worker. Linux's PR_SET_PDEATHSIG ends
    them with their parent (the thread that started them: tests start processes on the main thread).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


def running_processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every process that runs. A zombie does not count: one whose
    parent died waits, dead, for init to reap it, which here takes seconds."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()  # after the name, which may hold spaces
        if fields[0] != "Z":
            found.append((int(stat.parent.name), int(fields[1]), int(fields[2])))
    return found


def group_runs(pgid: int) -> bool:
    """A process of group `pgid` still runs (zombies aside)."""
    return any(group == pgid for _, _, group in running_processes())


class Process:
    """A child process whose output goes to a log file, killed (with its group) on stop().

    `env` is added to this process's environment; a value of None removes that variable.
    """

    def __init__(self, args: list[str], *, name: str, env: dict | None = None, cwd: Path = ROOT):
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=_log_folder())[1])
        # A value of None removes an inherited variable (e.g. REDIS_URL from the developer's shell).
        merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env = {name: value for name, value in merged.items() if value is not None}
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                args, cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @classmethod
    def python(cls, *args: str, name: str, env: dict | None = None) -> "Process":
        """Run `python <args>` with this interpreter (the project's virtualenv)."""
        return cls([sys.executable, *args], name=name, env=env)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_port(self, port: int, timeout: float = 20.0) -> None:
        """Wait until the process listens on `port`; fail with its output if it died first."""
        def ready():
            if not self.alive():
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.output()[-4000:]}")
            return port_open(port)
        wait_until(ready, timeout, f"{self.name} to listen on port {port}")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left of it after `timeout` (0: at once).

        Also when the process itself is gone: what it started may still run in its group (a server
        a web forked, whose first server a test killed), and would outlive the test.
        """
        self._signal_group(signal.SIGTERM if timeout else signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.popen.poll()  # reap the process itself
            if not group_runs(self.popen.pid):
                break
            time.sleep(0.05)
        self._signal_group(signal.SIGKILL)
        if self.alive():
            self.popen.wait(5)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)  # its group: the process started a session of its own
        except ProcessLookupError:
            pass
