"""WATCH/MULTI/EXEC transactions run again when a watched key changed, never after an answer was lost.

redis-py raises WatchError for a ConnectionError or TimeoutError met while keys are watched, EXEC's own included,
and `Redis.transaction` runs its function again on any WatchError. An EXEC whose answer was lost may have been
executed, so running it again wrote the change twice: a bundle upload stored two versions and a subscription's
rotation added its new secret twice (tests/integration/test_redis_resend.py). Here that error is raised as it is:
the outcome is unknown, as after any lost answer, and the caller treats it so (the web answers 503).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.client import Pipeline

T = TypeVar("T")


def raise_lost(exc: redis.WatchError) -> None:
    """Raise the connection error redis-py turned into `exc` (raised in its handler: `exc.__context__`), if any; a
    WatchError of a watched key that changed returns."""
    lost = exc.__context__
    if isinstance(lost, (redis.ConnectionError, redis.TimeoutError)):
        raise lost


def transaction(connection: redis.Redis, func: Callable[[Pipeline], T], *watches: str,
                attempts: int | None = None) -> T:
    """`connection.transaction(func, *watches, value_from_callable=True)`, but a connection error is raised, not
    taken for a change of a watched key.

    `attempts`: at most this many runs of `func`, then WatchError; None runs it until it writes. A key many writers
    change at once (a hash of records, each written whole) can lose every race for as long as they keep writing.
    """
    with connection.pipeline() as pipe:
        for _ in itertools.repeat(None) if attempts is None else range(attempts):
            try:
                pipe.watch(*watches)
                value = func(pipe)
                if pipe.explicit_transaction:  # else `func` wrote nothing (it found nothing to change): no EXEC
                    pipe.execute()
                return value
            except redis.WatchError as exc:
                raise_lost(exc)
    raise redis.WatchError(f"{' '.join(watches)} changed {attempts} times while being written; try again")
