"""An InLoox request awaited on this thread's event loop (aiohttp), for calls run together (inloox/together.py).

`inloox.client` sends a request this way when its code runs on one of `together.run`'s greenlets and its
route is direct (no proxy: urllib3 keeps those); everything else about the request (its key, throttle,
what its answer means) stays the client's. What the urllib3 path promises, this one keeps:
- the whole answer, head and body, within the read timeout of the request's start (`ClientTimeout.total`;
  a server that drips its head or body a byte at a time is cut off there), the connection within the
  connect timeout;
- the body read up to MAX_ANSWER_BYTES decompressed, in chunks (aiohttp inflates no more than it is asked
  for), else not whole; a head's lines and fields are bounded by aiohttp's parser (8,190 bytes each);
- never sent twice: aiohttp resends a request on a reused connection that closed only for idempotent
  methods, and then only a read;
- redirects not followed, no cookies kept (connections are shared by every workspace on the same host),
  no proxy settings read from the environment (the route has them), the URL sent as the client built it.
Failures are `NothingSent` (the request cannot have reached InLoox) or `AnswerLost`, which the client
turns into its errors as it does urllib3's.

Sessions are per thread's loop and route: an aiohttp session belongs to one loop.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import ssl
import threading
import time
from typing import Any

from inloox.connections import Route, exchanges

# Per thread and route: a batch holds one per request in flight, and a worker's lane (inloox/together.py)
# as many as the events it keeps in flight against a slow InLoox (WORKER_THREADS, 400 by default).
MAX_CONNECTIONS = 512


class NothingSent(Exception):
    """The connection (or TLS) could not be set up: nothing reached InLoox."""

    def __init__(self, message: str, *, certificate: bool = False):
        super().__init__(message)
        self.certificate = certificate  # a certificate problem does not go away by itself


class AnswerLost(Exception):
    """The request may have gone out; its answer did not (wholly) come back."""


def ready(route: Route) -> None:
    """Make this thread's session for `route` now, on one of `together.run`'s greenlets: the client calls
    this before its request budget's slot is taken. The first time, importing aiohttp and loading the CA
    bundle take ~100 ms: taken after the slot, they sent that request so late that it reached InLoox
    beside the next second's slots, over the budget (tests/integration/test_workspaces.py)."""
    _session(route)


async def exchange(method: str, url: str, body: bytes | None, headers: dict[str, str], route: Route,
                   timeout: tuple[float, float], *, most: int, chunk: int) -> tuple[int, str, Any, bytes, bool]:
    """Send one request; (status, reason, headers, body, whether the body is whole: at most `most` bytes).
    Its duration, from sending to the whole answer read on the loop, is recorded (`exchanges`)."""
    import aiohttp
    from yarl import URL

    started = time.monotonic()
    try:
        with exchanges.awaited():
            return await _exchange(aiohttp, URL(url, encoded=True), method, body, headers, route, timeout,
                                   most=most, chunk=chunk)
    finally:
        exchanges.record(time.monotonic() - started)


async def _exchange(aiohttp, url, method: str, body: bytes | None, headers: dict[str, str], route: Route,
                    timeout: tuple[float, float], *, most: int, chunk: int) -> tuple[int, str, Any, bytes, bool]:
    try:
        async with _session(route).request(
                method, url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout[1], sock_connect=timeout[0])) as response:
            parts, size = [], 0
            while True:
                part = await response.content.read(chunk)
                if not part:
                    return response.status, response.reason or "", response.headers, b"".join(parts), True
                size += len(part)
                parts.append(part)
                if size > most:
                    response.close()  # the rest unread: the connection goes with it
                    return response.status, response.reason or "", response.headers, b"".join(parts), False
    except aiohttp.ClientSSLError as exc:  # the handshake or the certificate: before anything was sent
        raise NothingSent(_said(exc), certificate=True) from exc
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise NothingSent(_said(exc)) from exc
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        # A reset, a close without an answer, a body cut short or that does not decompress, a head aiohttp
        # cannot parse, the time out: after the request may have gone out (a time-out during the connect
        # too: `total` does not say which).
        raise AnswerLost(_said(exc) if not isinstance(exc, TimeoutError)
                         else f"the answer did not come within {timeout[1]:g} s") from exc


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_local = threading.local()  # `sessions`: this thread's, by route
_made: list = []  # (loop, session) of every thread: closed at exit, so that none is reported unclosed


def _session(route: Route):
    sessions = getattr(_local, "sessions", None)
    if sessions is None:
        sessions = _local.sessions = {}
    session = sessions.get(route)
    if session is None or session.closed:
        import asyncio

        import aiohttp  # and yarl with it

        tls = ssl.create_default_context(**{"capath" if os.path.isdir(route.ca_bundle) else "cafile": route.ca_bundle})
        session = sessions[route] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ssl=tls),
            cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, raise_for_status=False)
        if not _made:
            atexit.register(_close_sessions)
        _made.append((asyncio.get_running_loop(), session))
    return session


def _close_sessions() -> None:
    """At exit, the threads that made them done: each session closed on its loop, now idle."""
    for loop, session in _made:
        if not session.closed and not loop.is_closed() and not loop.is_running():
            with contextlib.suppress(Exception):
                loop.run_until_complete(session.close())
