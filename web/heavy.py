"""Heavy admin requests take a bounded share of a web process's threads: one at a time, and one per workspace.

A replay (up to 10,000 events), a rule bundle upload (up to 2 MiB), a what-if comparison, a workspace's export (up
to 10,000 events and runs, hundreds of MiB written to a file, which waitress then sends without a thread) and a
look-up of an event that only a read of the whole event log finds (its 100,000 entries, ~1.2 s of CPU;
web/events.py) each keep a waitress thread for seconds (~10 s for the largest). A server process has a fixed number
of threads (web/server.py; the Procfile's 8), shared by every workspace: with as many of them in progress as
threads, one workspace's admin held every customer's webhooks in waitress's queue until one ended, and a sender that
waits seconds for its ack retries or gives up (tests/integration/test_workspaces.py).
So a process serves PER_PROCESS of them at once, and a workspace one at a time in the whole deployment (a lease in
Redis, so that one admin does not take every process's turn); one over either bound is answered at once, 429 with
Retry-After, never queued behind the others.

A workspace's rules compiled in the web (a manual run plans with them, the rules page lists them, a chat command
matches them) cost ~5.6 s of CPU for the largest bundle, ~90 % of it in a child (`bundle_check.compile_bundle`):
the first use of a large version in a process takes a turn too (`compiled_rules`); later uses take none.
"""
from __future__ import annotations

import functools
import logging
import secrets
import threading
from contextlib import contextmanager

import redis
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock
from werkzeug.exceptions import ServiceUnavailable, TooManyRequests

from engine import Ruleset
from web.resources import get_context, get_redis
from workers import bundles, failpoints, workspaces
from workers.workspaces import key

log = logging.getLogger(__name__)

PER_PROCESS = 1  # of the process's threads (at least 2, the Procfile's 8): the others stay for webhooks and pages
RETRY_AFTER_SECONDS = 10  # about as long as the largest replay or upload takes
# A workspace's lease outlives its longest heavy request; one whose process died (no `finally`) goes after this long.
LEASE_SECONDS = 300
# Rule text compiled without a turn (and with no child): ~0.35 s of CPU (~5.5 s a MB). A small folder's first compile
# in each of a burst of requests (chat commands, each waiting for InLoox) would otherwise be refused for nothing.
COMPILE_BYTES = bundles.COMPILE_HERE_BYTES
WHAT = ("a replay, a rule bundle upload, a what-if comparison, an export, a search of the whole event log or a "
        "first compile of a rule bundle")

_slots = threading.BoundedSemaphore(PER_PROCESS)

class Busy(Exception):
    """Another heavy request holds the process's turn or the workspace's: try again in `retry_after` seconds."""

    retry_after = RETRY_AFTER_SECONDS


class Unreachable(Busy):
    """Redis failed as the workspace's turn was asked for: nothing was done, try again (503, not 429)."""


@contextmanager
def turn():
    """Hold this process's and the workspace's turn for one heavy request; Busy at once when either is taken."""
    if not _slots.acquire(blocking=False):
        raise Busy(f"this web server is busy with {WHAT} (one at a time, so that webhooks stay answered); "
                   f"try again in {RETRY_AFTER_SECONDS} s")
    try:
        # redis-py's Lock: only the request that took the lease gives it back (one that outlived LEASE_SECONDS must
        # not end the lease a later request holds now).
        lease, token = get_redis().lock(key("heavy"), timeout=LEASE_SECONDS, blocking=False), secrets.token_hex(16)
        try:
            taken = lease.acquire(token=token)
        except redis.RedisError:
            # Perhaps stored, its answer lost: given back if Redis answers now, else it ends in LEASE_SECONDS.
            # Left there, it refused every heavy request of the workspace as "in progress" with none in progress.
            _give_back(lease, token)
            raise Unreachable(f"Redis did not answer as {WHAT} of workspace {workspaces.current().name!r} began, "
                              f"so nothing was done; try again in {RETRY_AFTER_SECONDS} s") from None
        if not taken:
            raise Busy(f"workspace {workspaces.current().name!r} has {WHAT} in progress already (one at a time); "
                       f"try again in {RETRY_AFTER_SECONDS} s")
        try:
            failpoints.hit("heavy_request")  # tests only: the request held in progress, its thread taken
            yield
        finally:
            _give_back(lease, token)  # the request's own answer stands whatever Redis says here
    finally:
        _slots.release()


def _give_back(lease: Lock, token: str) -> None:
    """Give the workspace's lease back if it is this request's; on a Redis error it goes by itself (LEASE_SECONDS)."""
    try:
        lease.do_release(token)
    except LockNotOwnedError:
        pass  # not taken after all, or run out and taken by another since: nothing of ours to give back
    except redis.RedisError:
        log.warning("the heavy-request lease of workspace %r could not be given back; it ends in %d s",
                    workspaces.current().name, LEASE_SECONDS)


def compiled_rules() -> tuple[Ruleset, str]:
    """The workspace's (rules, version) now; compiled on a turn (`turn`: Busy) when this process holds them not yet
    and they are more than COMPILE_BYTES of text."""
    rules = get_context().rules
    if rules.pending_bytes() <= COMPILE_BYTES:  # a switch to a large version just now compiles outside a turn: rare
        return rules.current()
    with turn():
        return rules.current()


@contextmanager
def answered():
    """Busy said as 429 with Retry-After and the reason (Redis failing as the turn is asked for: 503)."""
    try:
        yield
    except Unreachable as exc:
        raise ServiceUnavailable(str(exc), retry_after=exc.retry_after) from None
    except Busy as exc:
        raise TooManyRequests(str(exc), retry_after=exc.retry_after) from None


def limited(view):
    """An API view that takes a turn (`turn`): over the bound, 429 or 503 (`answered`)."""
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        with answered(), turn():
            return view(*args, **kwargs)
    return wrapped
