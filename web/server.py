"""The web process: the app under waitress, set so that a slow client holds a connection, never a thread.

    python -m web.server [--host 127.0.0.1] [--port 8000] [--threads 16] [--processes 1]

waitress reads each whole request (headers and body) on its I/O loop before one of its threads sees
it; a client that announces a body and sends part of it holds one of `connection_limit` connection
slots until `channel_timeout` seconds pass without a byte (checked every `cleanup_interval`).
Under gunicorn's threaded worker, 20 such connections held every thread and /healthz timed out
(issue 19; docs/deploy.md, "What stands in front of the web"). SIGTERM (a supervisor's stop) ends
it as Ctrl+C does: requests in flight finish, then the process exits 0.

One process holds one GIL: waitress's parsing, Flask and the handlers share one core, about 1,100
webhooks a second here (bench/acks.py). `--processes N` binds the port once and forks N servers
that accept from it, each with its own app, Redis pool and threads (nothing is shared but the
socket). The parent only supervises: SIGTERM stops every server; should one exit on its own, the
others are stopped and the parent exits with its code, so the supervisor (honcho, systemd) sees
the web down rather than serving at a fraction.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import sys
import time

import waitress

CONNECTION_LIMIT = 1000  # idle or slow connections are cheap on the I/O loop (poll, not select)
CHANNEL_TIMEOUT = 10  # seconds a connection may send nothing before it is closed
CLEANUP_INTERVAL = 5  # how often waitress looks for such connections
MAX_REQUEST_BODY = 16 * 1024 * 1024  # each route limits its own body far below this (64 KiB, 2 MiB)
BACKLOG = 1024  # connections the kernel holds until a server accepts them (waitress's own default)
STOP_SECONDS = 10  # how long a stopping parent waits for its servers to finish their requests


def settings(host: str, port: int, threads: int) -> dict:
    """waitress's settings for the app (tests and benches start it with these too)."""
    return {"host": host, "port": port, "threads": threads, **_common()}


def _common() -> dict:
    return {"connection_limit": CONNECTION_LIMIT, "channel_timeout": CHANNEL_TIMEOUT, "backlog": BACKLOG,
            "cleanup_interval": CLEANUP_INTERVAL, "asyncore_use_poll": True,
            "max_request_body_size": MAX_REQUEST_BODY, "ident": None}


def _stop(signum, frame):
    raise KeyboardInterrupt  # waitress's loop closes its sockets and lets its threads finish on it


def serve(options: dict) -> None:
    """Build the app and serve it with waitress `options` until SIGTERM or Ctrl+C."""
    from app import create_app  # the factory imports every blueprint, this module among its neighbours

    app = create_app()
    # waitress warns "Task queue depth is N" on every request that finds all threads busy: under a
    # burst that is one JSON log line per webhook (4 % of the web's CPU at 1,000/s, bench/acks.py)
    # saying only that requests wait their turn, which their latency shows.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, _stop)
    waitress.serve(app, **options)


def listener(host: str, port: int) -> socket.socket:
    """The port, bound once for every server process (they listen and accept on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def prefork(sock: socket.socket, count: int, threads: int) -> int:
    """Fork `count` servers on `sock` and supervise them; the exit code for the whole web."""
    parent = os.getpid()
    children = set()
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            _serve_child(sock, threads, parent)
        children.add(pid)
    sock.close()  # the parent never accepts: a connection it held would wait for nobody
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    code = _wait_first(children, stopping)
    _stop_all(children)
    return code


def _serve_child(sock: socket.socket, threads: int, parent: int) -> None:
    """In a forked server: die with the parent, serve on the shared socket, never return."""
    code = 0
    try:
        _die_with(parent)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        serve({"sockets": [sock], "threads": threads, **_common()})
    except BaseException:  # noqa: BLE001 - a forked child must never return into the parent's code
        logging.getLogger(__name__).exception("web server process failed")
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _die_with(parent: int) -> None:
    """SIGTERM this server when the parent dies however it dies (Linux), so none keeps the port."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: a server outliving a SIGKILLed parent is stopped with its process group
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _wait_first(children: set[int], stopping: list) -> int:
    """Until SIGTERM/SIGINT (0) or until a server exits by itself (its exit code, at least 1)."""
    while not stopping:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 1
        if pid in children:
            children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            print(f"web server process {pid} exited ({code}); stopping the others", file=sys.stderr, flush=True)
            return code if code > 0 else 1
        time.sleep(0.2)
    return 0


def _stop_all(children: set[int]) -> None:
    """SIGTERM every server, give them STOP_SECONDS to finish their requests, then SIGKILL."""
    for pid in children:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while children and time.monotonic() < deadline:
        for pid in list(children):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                children.discard(pid)
        time.sleep(0.1)
    for pid in children:
        _signal(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the app with waitress.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=16, help="request threads per process")
    parser.add_argument("--processes", type=int, default=1, help="server processes sharing the port (one per core)")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.processes == 1:
        serve(settings(args.host, args.port, args.threads))
        return
    import app  # noqa: F401 - imported once before forking, so the servers share its pages

    sys.exit(prefork(listener(args.host, args.port), args.processes, args.threads))


if __name__ == "__main__":
    main()
