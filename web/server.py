"""The web process: the app under waitress, set so that a slow client holds a connection, never a thread.

    python -m web.server [--host 127.0.0.1] [--port 8000] [--threads 16] [--processes 1] [--no-pin]

waitress reads each whole request (headers and body) on its I/O loop before one of its threads sees
it; a client that announces a body and sends part of it holds one of `connection_limit` connection
slots until `channel_timeout` seconds pass without a byte (checked every `cleanup_interval`). A full
server closes its quietest connection to accept the next (web/connections.py), so slots held open a
byte at a time hold up no sender.
Under gunicorn's threaded worker, 20 such connections held every thread and /healthz timed out
(issue 19; docs/deploy.md, "What stands in front of the web"). SIGTERM (a supervisor's stop) ends
it as Ctrl+C does: requests in flight finish, then the process exits 0.

One process holds one GIL: waitress's parsing, Flask and the handlers share one core, about 1,100
webhooks a second here (bench/acks.py). `--processes N` binds the port, builds the app once and
forks N - 1 more servers; all N accept from the port, the first (the process the supervisor
started) among them, so no Python process is spent on supervising alone (a parent that only
supervised was 41 of the web's 170 MB idle RSS). The app built before the fork is shared by
copy-on-write (`gc.freeze()` keeps the collector from writing to it); each server opens its own
Redis pool and threads at its first request. SIGTERM to the first server stops every server;
should another exit on its own, the first stops too and exits with its code; should the first
die, the kernel SIGTERMs the others: the supervisor (honcho, systemd) sees the web down rather
than serving at a fraction.

Each server process keeps to one core (workers/cores.py): the first and the ones it forks take the
cores they may use in turn, from the one the first runs on; a lone server, the core it starts on.
Unpinned, one server on 2 cores acknowledged 225-290 webhooks a second from 50 senders at 4-5 ms of
CPU each, pinned 1,935 at 0.51 ms; two servers 2,096-2,223 at 0.69-0.73 ms against 2,824-2,928 at
0.56-0.58 (bench/acks.py, bench/RESULTS.md section 34). `--no-pin` leaves the kernel to place them.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time

import waitress

from web import connections
from workers import cores

# Per process. Each open connection costs every request ~2 us of the I/O loop (it polls them all each turn:
# bench/RESULTS.md section 36); when full, the quietest is closed to make room (web/connections.py).
CONNECTION_LIMIT = 250
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


# Set by the first stop signal: a forked server exiting after it did not fail. A list, not a
# threading.Event: the signal handler runs again inside itself when signals come together, and an
# Event's lock, taken by the outer run, deadlocked the inner one (tests/integration/test_server.py).
STOPPING: list[bool] = []


def _stop(signum, frame):
    # The first signal stops the server; a second (Ctrl+C reaches every server, then the first one's
    # SIGTERM) would cut short the requests it is finishing. Nothing here takes a lock.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    STOPPING.append(True)
    raise KeyboardInterrupt  # waitress's loop closes its sockets and lets its threads finish on it


def serve(options: dict, app=None) -> None:
    """Serve `app` (built here when not given) with waitress `options` until SIGTERM or Ctrl+C."""
    app = build() if app is None else app
    signal.signal(signal.SIGTERM, _stop)
    waitress.serve(app, _server=connections.server, **options)


def build():
    """The app, as every server process serves it."""
    from app import create_app  # the factory imports every blueprint, this module among its neighbours

    app = create_app(commands=False)  # a server runs no `flask` command
    # waitress warns "Task queue depth is N" on every request that finds all threads busy: under a
    # burst that is one JSON log line per webhook (4 % of the web's CPU at 1,000/s, bench/acks.py)
    # saying only that requests wait their turn, which their latency shows.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    return app


def listener(host: str, port: int) -> socket.socket:
    """The port, bound once for every server process (they listen and accept on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def prefork(sock: socket.socket, count: int, threads: int, *, pinned: bool = True) -> int:
    """Serve on `sock` in this process and `count - 1` forked ones; the exit code for the whole web.

    `pinned`: each server on a core of its own (`cores.pin`), in turn from the one this one runs on."""
    options = {"sockets": [sock], "threads": threads, **_common()}
    app = build()  # before forking: the servers share its pages, and a broken setting stops the web once
    # The collector never walks what was built so far, so its pages stay shared: a full collection in
    # a forked server otherwise copies ~26 MB of them (issue 22, bench/RESULTS.md).
    gc.freeze()
    _return_free_heap()
    parent = os.getpid()
    signal.signal(signal.SIGTERM, _stop)  # before forking, for every server: a signal during start-up stops it too
    signal.signal(signal.SIGINT, _stop)
    forked = Forked()
    try:
        first = cores.here()  # where the kernel started this web: another web on the machine likely elsewhere
        for number in range(1, count):
            pid = os.fork()
            if pid == 0:
                if pinned:
                    cores.pin(first + number)
                _serve_child(app, options, parent)
            forked.pids.append(pid)
        if pinned:
            cores.pin(first)
        forked.watch()  # threads started after the last fork: a forked server starts with none
        serve(options, app)
    except BaseException as exc:  # noqa: BLE001 - whatever ends this server, the others are stopped
        if not isinstance(exc, KeyboardInterrupt):
            logging.getLogger(__name__).exception("web server process failed")
            forked.failed(1)
    finally:
        forked.stop()
    return forked.code


def _return_free_heap() -> None:
    """Give the C heap's free pages back to the kernel (glibc's malloc_trim), so that no server maps them.

    What start-up freed (~0.7 MB) stays in the heap otherwise, counted in each server's RSS (issue 22).
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc (macOS, musl): nothing to trim this way


def _serve_child(app, options: dict, parent: int) -> None:
    """In a forked server: die with the parent, serve on the shared socket, never return."""
    code = 0
    try:
        _die_with(parent)
        serve(options, app)
    except BaseException:  # noqa: BLE001 - a forked child must never return into the parent's code
        logging.getLogger(__name__).exception("web server process failed")
        code = 1
    finally:
        logging.shutdown()  # its lines not written yet (workers/logs.py LineWriter): os._exit runs no atexit
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


class Forked:
    """The forked servers, each reaped by a thread of its own that stops this one if it exits first."""

    def __init__(self):
        self.pids: list[int] = []
        self.threads: dict[int, threading.Thread] = {}
        self.code = 0  # the web's exit code: 0 when stopped by a signal, else the failed server's

    def watch(self) -> None:
        for pid in self.pids:
            if pid in self.threads:
                continue
            self.threads[pid] = threading.Thread(target=self._reap, args=(pid,), name=f"reap-{pid}", daemon=True)
            self.threads[pid].start()

    def _reap(self, pid: int) -> None:
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if not STOPPING:
            print(f"web server process {pid} exited ({code}); stopping the others", file=sys.stderr, flush=True)
            self.failed(code if code > 0 else 1)
            os.kill(os.getpid(), signal.SIGTERM)  # this server finishes its requests and returns from serve()

    def failed(self, code: int) -> None:
        self.code = self.code or code

    def stop(self) -> None:
        """SIGTERM every other server, give them STOP_SECONDS to finish their requests, then SIGKILL."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second stop signal must not cut this one short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        STOPPING.append(True)
        self.watch()  # those forked before a signal cut the forking short
        self._signal_alive(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for thread in self.threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        self._signal_alive(signal.SIGKILL)
        for thread in self.threads.values():
            thread.join()

    def _signal_alive(self, signum: int) -> None:
        for pid, thread in self.threads.items():
            if thread.is_alive():
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
    parser.add_argument("--no-pin", dest="pinned", action="store_false",
                        help="let the kernel move each server between cores (by default each keeps to one)")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.processes == 1:
        if args.pinned:
            cores.pin()
        serve(settings(args.host, args.port, args.threads))
        return
    sys.exit(prefork(listener(args.host, args.port), args.processes, args.threads, pinned=args.pinned))


if __name__ == "__main__":
    main()
