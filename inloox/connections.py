"""The process's connections to InLoox hosts: pools shared by every client on the same route.

A `Route` is what the environment says about reaching a base URL (a proxy, a CA bundle), read once
per client; `shared_pool()` gives the urllib3 manager for a route and pool size. Sending, and making
sense of what comes back, stays in `inloox.client`.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

import certifi
import urllib3

from inloox import deadlines


class Gate(Protocol):
    """What `Exchanges.exchange` needs of a process's gate (workers/consumer/gate.py)."""

    def leave(self) -> bool: ...
    def enter(self) -> None: ...


HOSTS_KEPT = 64  # connection pools kept per manager, one per InLoox host


@dataclass(frozen=True)
class Route:
    """How this process reaches one base URL: through which proxy (None: directly), trusting which CAs."""

    proxy: str | None = field(repr=False)  # a proxy URL may hold the proxy's password
    ca_bundle: str  # a file, or a directory of certificates


def route_of(base_url: str) -> Route:
    """The environment's proxy and CA settings for `base_url`, as requests read them.

    Read once per client, not per request (requests did it per request by default: about a quarter
    of a write's CPU went to scanning os.environ). HTTPS_PROXY/HTTP_PROXY/ALL_PROXY and NO_PROXY,
    either case; REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, else certifi's bundle.
    """
    parts, proxies = urlsplit(base_url), getproxies_environment()
    proxy = None if proxy_bypass_environment(parts.netloc, proxies) else (
        proxies.get(parts.scheme) or proxies.get("all"))
    if proxy and "://" not in proxy:
        proxy = "http://" + proxy  # `proxy.example:3128` means an HTTP proxy, as requests read it
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    return Route(proxy or None, ca_bundle)


class Exchanges:
    """How long this process's InLoox requests took, from sending to the whole answer (or giving up);
    the worker adds its notifications and outbound requests (workers/effects.py).

    `exchange()` is the wait for one answer: it records the duration, and a thread that holds a place
    of the process's `gate` (the worker's: workers/consumer/gate.py) gives it up meanwhile, so that
    threads waiting for answers do not keep those with work to do from running.

    The worker sizes how many events it keeps in flight from these (workers/consumer/in_flight.py):
    a process whose requests are answered slowly, but no slower as it sends more, gains by sending
    more at once. Only the newest KEPT are held, so a process that never reads them (a poller) keeps
    a few kilobytes. `oldest_wait()` is how long the oldest wait of an event thread still under way has
    lasted: an answer that does not come is seen there before any duration of it is recorded.
    """

    KEPT = 4096

    def __init__(self):
        self._durations: deque[float] = deque(maxlen=self.KEPT)
        self.gate: Gate | None = None  # set by a worker; any object with `leave() -> bool` and `enter()`
        self._waits: dict[int, float] = {}  # the waits under way: when each began
        self._wait_ids = itertools.count()  # next() on a count is atomic: no lock on the request path

    def record(self, seconds: float) -> None:
        self._durations.append(seconds)  # deque.append is atomic: no lock on the request path

    @contextmanager
    def exchange(self) -> Iterator[None]:
        """Around a wait for one answer: its duration recorded, the gate's place given up meanwhile."""
        with self.waiting():
            started = time.monotonic()
            try:
                yield
            finally:
                self.record(time.monotonic() - started)  # before taking a place again: the answer's time alone

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Around any other wait for the outside (a request budget's slot): the gate's place given up meanwhile."""
        gate = self.gate
        left = gate is not None and gate.leave()
        if not left:  # a thread outside the gate (a poller's, an RQ job's): no event waits behind it
            yield
            return
        try:
            with self.awaited():
                yield
        finally:
            gate.enter()

    @contextmanager
    def awaited(self) -> Iterator[None]:
        """Around a wait seen by `oldest_wait`, no place of the gate given up: an answer awaited beside
        others on one thread (inloox/together.py), whose other calls go on meanwhile; its duration is the
        caller's to record. `waiting` is this with the gate's place given up."""
        wait = next(self._wait_ids)
        self._waits[wait] = time.monotonic()
        try:
            yield
        finally:
            del self._waits[wait]

    def oldest_wait(self) -> float:
        """Seconds the oldest wait under way of an event has lasted (an answer, a request budget's slot: its
        thread gave up a place of the gate, or awaits it beside others, `awaited`); 0 without one."""
        began = list(self._waits.values())  # one C call: no other thread changes the dict in the middle
        return time.monotonic() - min(began) if began else 0.0

    def take(self) -> list[float]:
        """The durations recorded since the last take, oldest first."""
        taken = []
        while True:
            try:
                taken.append(self._durations.popleft())
            except IndexError:
                return taken


exchanges = Exchanges()  # the process's; every Client records into it

_pools: dict[tuple[int, Route], urllib3.PoolManager] = {}
_lock = threading.Lock()


def shared_pool(pool_size: int, route: Route) -> urllib3.PoolManager:
    """The process's connection pools, shared by every client of the same pool size and route.

    A hosted service runs hundreds of accounts on one InLoox host: with a pool per client, a poller
    kept a connection open per workspace (1,000 idle connections from one process, and servers that
    cap connections, as waitress does at 100, made the 101st workspace wait minutes for its first
    answer). Requests carry their own account's key (`inloox.client`), so sharing the connections
    of one host shares nothing else.
    """
    with _lock:
        pool = _pools.get((pool_size, route))
        if pool is None:
            pool = _pools[(pool_size, route)] = _new_pool(pool_size, route)
        return pool


def _new_pool(pool_size: int, route: Route) -> urllib3.PoolManager:
    # block=False as requests had it: a thread beyond `pool_size` gets a connection of its own, which
    # is closed when returned to a full pool, instead of waiting for one.
    tls = {"ca_cert_dir" if os.path.isdir(route.ca_bundle) else "ca_certs": route.ca_bundle}
    options = dict(num_pools=HOSTS_KEPT, maxsize=pool_size, block=False, retries=False,
                   cert_reqs="CERT_REQUIRED", **tls)
    if route.proxy is not None and route.proxy.lower().startswith("socks"):
        from urllib3.contrib.socks import SOCKSProxyManager  # needs PySocks, as requests did for SOCKS
        manager = SOCKSProxyManager(route.proxy, **options)
        manager.pool_classes_by_scheme = deadlines.socks_pool_classes()  # an answer's head by its deadline
        return manager
    manager = urllib3.PoolManager(**options) if route.proxy is None else urllib3.ProxyManager(
        route.proxy, proxy_headers=_proxy_credentials(route.proxy), **options)
    manager.pool_classes_by_scheme = deadlines.POOL_CLASSES  # an answer's head by its deadline
    return manager


def _proxy_credentials(proxy: str) -> dict[str, str]:
    """`Proxy-Authorization` for a proxy URL with a user and password in it (urllib3 leaves them out)."""
    parts = urlsplit(proxy)
    if not parts.username:
        return {}
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return {"Proxy-Authorization": urllib3.util.make_headers(proxy_basic_auth=credentials)["proxy-authorization"]}
