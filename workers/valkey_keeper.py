"""What the Valkey keeper (workers/valkey_keeper.sh) cannot do as a shell, each a Python that ends soon.

    python -S -m workers.valkey_keeper start BINARY CONFIG   # in the keeper's child: becomes Valkey
    python -S -m workers.valkey_keeper stop PORT             # at the stack's stop: returns once no one else uses it

The keeper lives as long as the stack, so it is a shell (~1.8 MB of RSS) rather than a Python (~10.5 MB,
issue 22); these run for a moment each, at Valkey's (re)start and at the stop. Standard library only.
"""
from __future__ import annotations

import os
import signal
import sys
import time

# honcho kills whatever still runs 5 s after the first process of the stack stopped; Valkey must
# be stopped (and its AOF flushed) before that.
STOP_GRACE_SECONDS = 3.5


def start(binary: str, config: str) -> None:
    """Become Valkey, in a session of its own and its configuration's folder; never returns."""
    keeper = os.getppid()
    os.setsid()  # out of reach of the stack's stop signal: the keeper stops it last
    os.chdir(os.path.dirname(os.path.abspath(config)))
    _stop_with_parent()
    if os.getppid() != keeper:  # the keeper died before it could be told to take Valkey with it
        os._exit(1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)  # a shell's background job ignores SIGINT; Valkey sets its own
    os.execv(binary, [binary, config])


def stop(port: int) -> int:
    """Wait while another client is connected to Valkey, at most STOP_GRACE_SECONDS; 0."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the stack's second stop signal: the keeper stops Valkey after this
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline and other_clients(port):
        time.sleep(0.1)
    return 0


def other_clients(port: int) -> int:
    """Clients connected to Valkey besides this question (0 when it does not answer)."""
    import socket

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
    # In its own session Valkey no longer gets the stack's stop signal, so should the keeper be
    # killed outright (honcho's SIGKILL), Linux sends Valkey SIGTERM (PR_SET_PDEATHSIG, kept across
    # the exec) rather than leaving it to hold the port.
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def main(argv: list[str]) -> int:
    if argv[:1] == ["start"] and len(argv) == 3:
        start(argv[1], argv[2])
    if argv[:1] == ["stop"] and len(argv) == 2:
        return stop(int(argv[1]))
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
