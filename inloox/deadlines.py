"""When an answer must have come: past it, its socket is shut (InLoox's heads, outbound answers).

urllib3's read timeout is for each read of the socket. A server that sends its status line and
headers a byte at a time, each within that timeout, held the thread for as long as it liked: a
workspace's InLoox URL may be a server its customer runs, and a worker's threads serve every
workspace. (The body is read by `inloox.client` itself, each read given only what is left.)

`until(deadline)` names the deadline (time.monotonic()) of the requests this thread sends in it;
the pools' connections (`POOL_CLASSES`) put their socket on the watch list (`watch`) while they
wait for an answer's head. workers/outbound.py puts there the sockets of the answers it reads (a
rule's `http` step, a delivery, a notification), for the whole answer. One thread per process looks
at the list every CHECK_SECONDS and shuts the sockets whose deadline passed, which ends a read
waiting on one at once, over HTTP or TLS. Putting a socket on the list and taking it off are single
dict operations: no lock on the request path, and the watcher, which takes an entry off before
shutting it, cannot shut one its request took back.
"""
from __future__ import annotations

import contextvars
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ProtocolError

log = logging.getLogger(__name__)
CHECK_SECONDS = 0.5  # how late past its deadline a head may be cut: the watcher's only cost is waking this often
STALL_SECONDS = 30.0  # a watcher that has not turned for this long is not running (/readyz says so)

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("inloox_answer_deadline", default=None)
_watched: dict[int, tuple[float, socket.socket]] = {}  # ticket -> (deadline, socket)
_tickets = itertools.count()  # next() on a count is atomic
_watcher_lock = threading.Lock()
_watcher: threading.Thread | None = None
_last_turn = 0.0  # time.monotonic() of the watcher's last look at the list


@contextmanager
def until(deadline: float) -> Iterator[None]:
    """The requests this thread sends inside must have their answer's head by `deadline` (time.monotonic())."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


class _Watching:
    """Mixed into urllib3's connections: the wait for an answer's head is watched against the deadline."""

    def getresponse(self, *args, **kwargs):
        deadline, sock = _deadline.get(), self.sock
        if deadline is None or sock is None:
            return super().getresponse(*args, **kwargs)
        ticket = watch(deadline, sock)
        try:
            response = super().getresponse(*args, **kwargs)
        finally:
            cut = not unwatch(ticket)
        if cut:
            # http.client takes a head cut short for a whole one (an answer without its last headers or
            # body): had the watcher not cut it, it would still be coming. An answer lost, not one to read.
            raise ProtocolError("the answer's status line and headers did not come within the timeout")
        return response


class _WatchedHTTPConnection(_Watching, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watching, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


# For a PoolManager's (or a ProxyManager's) `pool_classes_by_scheme`.
POOL_CLASSES = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def socks_pool_classes() -> dict[str, type]:
    """The same for a SOCKSProxyManager, whose pools and connections are urllib3.contrib.socks' own.
    Made at the first SOCKS route: that module needs PySocks, which only such a route uses."""
    global _socks_pool_classes
    if _socks_pool_classes is None:
        from urllib3.contrib.socks import (
            SOCKSConnection, SOCKSHTTPConnectionPool, SOCKSHTTPSConnection, SOCKSHTTPSConnectionPool,
        )

        http = type("_WatchedSOCKSConnection", (_Watching, SOCKSConnection), {})
        https = type("_WatchedSOCKSHTTPSConnection", (_Watching, SOCKSHTTPSConnection), {})
        _socks_pool_classes = {
            "http": type("_WatchedSOCKSHTTPPool", (SOCKSHTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("_WatchedSOCKSHTTPSPool", (SOCKSHTTPSConnectionPool,), {"ConnectionCls": https}),
        }
    return _socks_pool_classes


_socks_pool_classes: dict[str, type] | None = None


def watch(deadline: float, sock: socket.socket) -> int:
    """Shut `sock` once `deadline` (time.monotonic()) has passed, within CHECK_SECONDS; a ticket for `unwatch`."""
    _start_watcher()
    ticket = next(_tickets)
    _watched[ticket] = (deadline, sock)
    return ticket


def unwatch(ticket: int) -> bool:
    """Off the list; False if the watcher took it off first, having shut (or shutting) its socket."""
    return _watched.pop(ticket, None) is not None


def _start_watcher() -> None:
    global _watcher, _last_turn
    if _watcher is not None:
        return
    with _watcher_lock:
        if _watcher is None:
            _last_turn = time.monotonic()
            _watcher = threading.Thread(target=_watch, name="answer-deadlines", daemon=True)
            _watcher.start()


def trouble() -> str | None:
    """Why the watcher is not keeping deadlines ("answer deadlines stopped" or "... stalled"), or None:
    running, or not needed yet (no answer waited for so far). Without it, an answer that drips its head
    a byte at a time holds its thread, and with it a batch of events, for as long as its server likes."""
    watcher = _watcher
    if watcher is None:
        return None
    if not watcher.is_alive():
        return "answer deadlines stopped"
    return "answer deadlines stalled" if time.monotonic() - _last_turn > STALL_SECONDS else None


def keep_running() -> bool:
    """Start the watcher again if its thread ended; True if it had to."""
    global _watcher
    watcher = _watcher
    if watcher is None or watcher.is_alive():
        return False
    log.error("the answer-deadline watcher had ended; starting it again")
    with _watcher_lock:
        if _watcher is watcher:
            _watcher = None
    _start_watcher()
    return True


def _forget_watcher() -> None:
    global _watcher
    _watcher = None  # a forked child (the web's servers) has no thread of its parent's: it starts its own
    _watched.clear()


os.register_at_fork(after_in_child=_forget_watcher)


def _watch() -> None:
    global _last_turn
    while True:
        time.sleep(CHECK_SECONDS)
        _last_turn = time.monotonic()
        try:
            _cut_overdue(_last_turn)
        except Exception:  # noqa: BLE001 - a watcher that died would stop keeping every deadline, silently
            log.exception("could not cut off the answers past their deadline; trying again")


def _cut_overdue(now: float) -> None:
    for ticket, (deadline, sock) in list(_watched.items()):  # one C call: a consistent copy
        if deadline <= now and _watched.pop(ticket, None) is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # a closed socket object says EBADF, never reaches another's
            except OSError:
                pass
