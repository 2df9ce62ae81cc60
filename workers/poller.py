"""The InLoox change poller process (`python -m workers.poller`).

For every workspace, polls the entity sets that its enabled rules trigger on, every POLL_INTERVAL
seconds, and sweeps for deletions every POLL_SWEEP_SECONDS. Each workspace is polled only by the
holder of its Redis lease (`ws:<name>:poll:lease`, a redis-py Lock with expiry), so any number of
poller processes may run: they split the workspaces between them, and the workspaces of a poller
that died are taken over by the others within one lease period (POLL_LEASE_SECONDS).
"""
from __future__ import annotations

import logging
import math
import os
import random
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import redis
from redis.lock import Lock

from engine.rules import Ruleset
from inloox import InLooxError
from inloox.changes import change_feed
from workers import metrics
from workers.logs import configure_logging
from workers.poll import PollSettings, poll_once, sweep_deleted
from workers import workspaces
from workers.poll_status import record_poll
from workers.worker_context import WorkerContext, build_context
from workers.workspaces import Workspace

log = logging.getLogger("poller")

POLLERS_KEY = "pollers:alive"  # deployment-wide: poller id → last round (epoch s)


@dataclass(frozen=True)
class PollerSettings:
    """How often to poll and sweep, and how long a lease lasts without renewal."""

    interval: float = 2.0
    sweep_every: float = 300.0
    lease_seconds: float = 15.0


def watched_sets(ruleset: Ruleset) -> dict[str, frozenset[str] | None]:
    """Entity set → fields the enabled rules watch (None: any field), from their trigger index keys."""
    watched: dict[str, set[str] | None] = {}
    for rule in ruleset.rules.values():
        for key in (k for t in rule.triggers for k in t.index_keys) if rule.enabled else ():
            if key[0] != "inloox" or change_feed(key[1]) is None:
                continue
            fields = watched.setdefault(key[1], set())
            field = key[3] if len(key) > 3 else "*"
            if fields is not None and field == "*":
                watched[key[1]] = None
            elif fields is not None:
                fields.add(field)
    return {name: None if fields is None else frozenset(fields) for name, fields in watched.items()}


@dataclass
class Account:
    """One workspace as a poller sees it: its client and rules, and its lease when this poller owns it."""

    context: WorkerContext
    lease: Lock
    settings: PollSettings | None = None  # known once InLoox told us who the engine's own user is
    next_sweep: float = 0.0

    @property
    def workspace(self) -> Workspace:
        return self.context.workspace


def run(connection: redis.Redis, accounts: list[Account], poller: PollerSettings, stop: threading.Event,
        *, me: str = "") -> None:
    """Poll the workspaces whose lease this process holds until `stop` is set; take free ones up to a fair share."""
    me = me or uuid.uuid4().hex[:8]
    while not stop.is_set():
        try:
            _round(connection, accounts, poller, me)
        except redis.RedisError as exc:  # Redis restarting: nothing moved, the next round tries again
            log.warning("poll round failed, will retry: %s", exc)
        stop.wait(poller.interval)
    try:
        for account in accounts:
            if account.lease.owned():
                account.lease.release()
        connection.zrem(POLLERS_KEY, me)
    except redis.RedisError:
        pass  # Redis went first (a stack shutting down): the leases expire by themselves


def _round(connection: redis.Redis, accounts: list[Account], poller: PollerSettings, me: str) -> None:
    """Renew or take leases up to a fair share, and poll each workspace held."""
    share = _fair_share(connection, me, len(accounts), poller)
    for account in _rotated(accounts):
        if account.lease.owned() and _owned(accounts) > share:
            account.lease.release()  # hand one over to a poller that has fewer
        elif _hold_lease(account.lease, may_take=_owned(accounts) < share):
            with workspaces.using(account.workspace):
                _poll_account(account, poller, me)


def _fair_share(connection: redis.Redis, me: str, total: int, poller: PollerSettings) -> int:
    """How many workspaces one poller should own: all of them split between the live pollers.

    Each poller stamps itself in POLLERS_KEY every round; one silent for a lease period is gone.
    A poller over its share takes no new leases and hands one back per round, so a poller that
    starts later soon finds free ones.
    """
    now = time.time()
    with connection.pipeline(transaction=False) as pipe:
        pipe.zadd(POLLERS_KEY, {me: now})
        pipe.zremrangebyscore(POLLERS_KEY, "-inf", now - poller.lease_seconds)
        pipe.zcard(POLLERS_KEY)
        alive = pipe.execute()[2]
    return max(1, math.ceil(total / max(alive, 1)))


def _rotated(accounts: list[Account]) -> list[Account]:
    """The accounts from a random starting point, so pollers do not all reach for the same one first."""
    start = random.randrange(len(accounts)) if accounts else 0
    return accounts[start:] + accounts[:start]


def _owned(accounts: list[Account]) -> int:
    return sum(a.lease.owned() for a in accounts)


def _poll_account(account: Account, poller: PollerSettings, me: str) -> None:
    try:
        if account.settings is None:
            user = account.context.client.me()  # the engine's own InLoox user: its changes are "chained"
            account.settings = PollSettings(own_contact_id=str(user.get("ContactId")),
                                            flood_limit=account.workspace.limits.flood_limit)
            log.info("%s: polling as %s", account.workspace.name, user.get("DisplayName"))
        watched = watched_sets(account.context.ruleset())
    except (InLooxError, redis.RedisError) as exc:
        log.warning("%s: cannot poll yet: %s", account.workspace.name, exc)
        return
    sweep = time.monotonic() >= account.next_sweep
    _cycle(account.context.client, account.context.connection, watched, account.settings, sweep=sweep, poller=me)
    if sweep:
        account.next_sweep = time.monotonic() + poller.sweep_every


def _hold_lease(lease: Lock, *, may_take: bool = True) -> bool:
    """Renew the lease we hold, or try to take a free one; False while another poller has it."""
    try:
        if lease.owned():
            return lease.reacquire()
        return may_take and lease.acquire(blocking=False)
    except redis.exceptions.LockError:
        return False  # expired under us (a long stall): the next round competes for it again


def _cycle(client, connection, watched, settings, *, sweep: bool, poller: str = "") -> None:
    for entity_set, fields in watched.items():
        feed = change_feed(entity_set)
        try:
            _report(_timed_poll(client, connection, feed, fields, settings, poller))
            if sweep:
                _report(sweep_deleted(client, connection, feed, settings))
        except (InLooxError, redis.RedisError) as exc:
            # The cursor did not move: the next cycle reads the same changes again.
            log.warning("poll %s failed, will retry: %s", entity_set, exc)


def _timed_poll(client, connection, feed, fields, settings, poller: str):
    """poll_once, keeping its duration and request count for the dashboard and /metrics."""
    started, requests_before = time.monotonic(), metrics.requests_seen()
    result = poll_once(client, connection, feed, fields, settings)
    record_poll(connection, result, seconds=time.monotonic() - started,
                requests=metrics.requests_seen() - requests_before, now=datetime.now(timezone.utc), poller=poller)
    return result


def _report(result) -> None:
    if result.accepted or result.held or result.baseline:
        log.info("poll %s: %d rows, %d events, %d duplicates, %d held%s", result.entity_set, result.rows,
                 len(result.accepted), result.duplicates, result.held, " (baseline)" if result.baseline else "")


def main(argv: list[str] | None = None) -> int:
    """`python -m workers.poller [--with-scheduler]`: poll every workspace; with the flag, also fire
    their schedules (workers/scheduler.py) on a thread of this process, one process fewer."""
    from app import load_config  # the one place settings are read from the environment

    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--with-scheduler"]):
        print("usage: python -m workers.poller [--with-scheduler]", file=sys.stderr)
        return 2

    config = load_config()
    configure_logging(config)
    connection = redis.Redis.from_url(config["REDIS_URL"])
    poller = PollerSettings(interval=float(os.environ.get("POLL_INTERVAL", 2.0)),
                            sweep_every=float(os.environ.get("POLL_SWEEP_SECONDS", 300.0)),
                            lease_seconds=float(os.environ.get("POLL_LEASE_SECONDS", 15.0)))
    accounts = [Account(build_context(config, workspace, connection),
                        connection.lock(workspace.prefix + "poll:lease", timeout=poller.lease_seconds,
                                        blocking=False, thread_local=False))
                for workspace in config["WORKSPACES"].values()]
    me = uuid.uuid4().hex[:8]
    log.info("poller %s: %d workspace(s) (%s), every %.1fs", me, len(accounts),
             ", ".join(a.workspace.name for a in accounts), poller.interval)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if argv == ["--with-scheduler"]:
        from workers import scheduler

        threading.Thread(target=scheduler.run, name="scheduler", daemon=True, args=(
            connection, list(config["WORKSPACES"].values()), scheduler.settings_from_environment(), stop)).start()
    run(connection, accounts, poller, stop, me=me)
    return 0


if __name__ == "__main__":
    sys.exit(main())
