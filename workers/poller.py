"""The InLoox change poller process (`python -m workers.poller`).

Polls the entity sets that enabled rules trigger on, every POLL_INTERVAL seconds, and sweeps for
deletions every POLL_SWEEP_SECONDS. Only the holder of the account's Redis lease polls, so any
number of poller processes may run: the others wait and take over within one lease period.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import redis

from engine.rules import Ruleset, load_rules
from inloox import Client, InLooxError
from inloox.changes import change_feed
from workers import metrics
from workers.logs import configure_logging
from workers.poll import PollSettings, poll_once, sweep_deleted
from workers.poll_status import record_poll

log = logging.getLogger("poller")


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


def run(client: Client, connection: redis.Redis, watched: Mapping[str, frozenset[str] | None],
        settings: PollSettings, poller: PollerSettings, stop: threading.Event) -> None:
    """Poll until `stop` is set, while holding the account's lease."""
    lease = connection.lock(f"{settings.prefix}poll:lease", timeout=poller.lease_seconds, blocking=False,
                            thread_local=False)
    next_sweep = 0.0
    while not stop.is_set():
        if _hold_lease(lease):
            sweep = time.monotonic() >= next_sweep
            _cycle(client, connection, watched, settings, sweep=sweep)
            next_sweep = time.monotonic() + poller.sweep_every if sweep else next_sweep
        stop.wait(poller.interval)
    if lease.owned():
        lease.release()


def _hold_lease(lease) -> bool:
    """Renew the lease we hold, or try to take a free one; False while another poller has it."""
    try:
        if lease.owned():
            return lease.reacquire()
        return lease.acquire(blocking=False)
    except redis.exceptions.LockError:
        return False  # expired under us (a long stall): the next round competes for it again


def _cycle(client, connection, watched, settings, *, sweep: bool) -> None:
    for entity_set, fields in watched.items():
        feed = change_feed(entity_set)
        try:
            _report(_timed_poll(client, connection, feed, fields, settings))
            if sweep:
                _report(sweep_deleted(client, connection, feed, settings))
        except (InLooxError, redis.RedisError) as exc:
            # The cursor did not move: the next cycle reads the same changes again.
            log.warning("poll %s failed, will retry: %s", entity_set, exc)


def _timed_poll(client, connection, feed, fields, settings):
    """poll_once, keeping its duration and request count for the dashboard and /metrics."""
    started, requests_before = time.monotonic(), metrics.requests_seen()
    result = poll_once(client, connection, feed, fields, settings)
    record_poll(connection, result, seconds=time.monotonic() - started,
                requests=metrics.requests_seen() - requests_before, now=datetime.now(timezone.utc))
    return result


def _report(result) -> None:
    if result.accepted or result.held or result.baseline:
        log.info("poll %s: %d rows, %d events, %d duplicates, %d held%s", result.entity_set, result.rows,
                 len(result.accepted), result.duplicates, result.held, " (baseline)" if result.baseline else "")


def main() -> int:
    from app import load_config  # the one place settings are read from the environment

    config = load_config()
    configure_logging(config)
    ruleset = load_rules(config["RULES_PATH"])
    watched = watched_sets(ruleset)
    client = Client(config["INLOOX_URL"], config["INLOOX_API_KEY"], timeout=float(config["INLOOX_TIMEOUT"]),
                    on_response=metrics.note_request)
    connection = redis.Redis.from_url(config["REDIS_URL"])
    me = client.me()
    settings = PollSettings(own_contact_id=str(me.get("ContactId")))
    poller = PollerSettings(interval=float(os.environ.get("POLL_INTERVAL", 2.0)),
                            sweep_every=float(os.environ.get("POLL_SWEEP_SECONDS", 300.0)))
    log.info("poller %s: watching %s every %.1fs as %s", uuid.uuid4().hex[:8],
             ", ".join(f"{s} ({'any field' if f is None else ', '.join(sorted(f))})" for s, f in watched.items())
             or "nothing (no enabled InLoox rules)", poller.interval, me.get("DisplayName"))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(client, connection, watched, settings, poller, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
