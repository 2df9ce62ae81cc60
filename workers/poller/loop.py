"""The poller's loop: rounds that poll each workspace this process holds, when something of it is due.

For every workspace, polls the entity sets that its enabled rules trigger on: those with a change
feed every POLL_INTERVAL seconds (sweeping them for deletions every POLL_SWEEP_SECONDS), the others
by a scan of the whole set every POLL_SCAN_SECONDS (default 60; per set as `60 Contact=30`, never
below POLL_SCAN_FLOOR_SECONDS), since a scan costs a request per 100 rows however little changed.
A set that sees no change, in a workspace where nothing happens, is polled less and less often, up
to POLL_MAX_INTERVAL (feeds) or POLL_SCAN_MAX_SECONDS (scans); a change, an event accepted from any
source or a person on the dashboard brings it back at once (workers/poller/pace.py has the curve).

Each round hands every workspace held that has something due to a pool of POLL_THREADS threads, at
most one poll of a workspace at a time: an InLoox account that answers slowly, or not before the
client's timeout, delays its own polls, not the other workspaces'. Which workspaces a process holds
is workers/poller/leases.py's; the process that runs the rounds, workers/poller/process.py's.

What a round costs Redis does not grow with idle workspaces: one MGET of every workspace's activity
stamp, the pollers' roll call, and every third of a lease period one script renewing every lease
held (the holder remembers when it last renewed instead of asking Redis every round); a workspace
with nothing due sends nothing else.
"""
from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from engine.rules import Ruleset
from inloox import InLooxError
from inloox.changes import CHANGE_FEEDS, Scan, observation
from workers import activity, failpoints, metrics
from workers.poller import leases
from workers.poller.poll import PollResult, PollSettings, poll_once, sweep_deleted
from workers.poller.pace import SetPace
from workers.poller.settings import PollerSettings
from workers import subscriptions, workspaces
from workers.poller.status import WHOLE, PollRun, record_poll, record_trouble, record_watched
from workers.poller.scan import LeaseLost, scan_once
from workers.registry import Leftovers, Served, Shard
from workers.worker_context import WorkerContext, build_context, folder_stamp, forget
from workers.workspaces import Workspace

log = logging.getLogger("poller")

WATCHED_REFRESH_SECONDS = 10.0  # a set a new rule or subscription watches is polled within this (and a poll)
# In a quiet workspace (workers/activity.py) within this: a bundle activated or a subscription saved
# stamps activity, and a rules folder's changed files are seen in the process's shared look: both make the poller look at once.
QUIET_WATCHED_REFRESH_SECONDS = 60.0


def watched_sets(ruleset: Ruleset) -> dict[str, frozenset[str] | None]:
    """Entity set → fields the enabled rules' inloox triggers read (None: any field)."""
    watched: dict[str, set[str] | None] = {}
    for rule in ruleset.rules.values():
        for trigger in rule.triggers if rule.enabled else ():
            for entity_set in {k[1] for k in trigger.index_keys if k[0] == "inloox"}:
                if observation(entity_set) is None or watched.get(entity_set, set()) is None:
                    continue
                if trigger.watches is None:
                    watched[entity_set] = None
                else:
                    watched.setdefault(entity_set, set()).update(trigger.watches)
    return {name: None if fields is None else frozenset(fields) for name, fields in watched.items()}


@dataclass
class Account:
    """One workspace as a poller sees it: its client and rules, and its lease when this poller owns it."""

    context: WorkerContext
    lease: Lock
    settings: PollSettings | None = None  # known once InLoox told us who the engine's own user is
    next_sweep: float = 0.0
    paces: dict[str, SetPace] = field(default_factory=dict)  # entity set → its timing (workers/poller/pace.py)
    watched: frozenset[str] | None = None  # the sets last recorded as watched (for the status)
    watching: dict = field(default_factory=dict)  # entity set → fields, as last read from rules and subscriptions
    watched_at: float = float("-inf")  # when (monotonic) `watching` was read
    scanning: threading.Thread | None = None  # the scans due, run beside the feed polls
    polling: Future | None = None  # the workspace's poll on the pool, until it is done
    renewed_at: float | None = None  # when (monotonic) we last took or renewed the lease; None: not ours
    lively_at: float = 0.0  # the workspace's latest activity stamp seen (epoch s)

    @property
    def workspace(self) -> Workspace:
        return self.context.workspace


def run(connection: redis.Redis, follow: Callable[[], list[Account]], poller: PollerSettings,
        stop: threading.Event, *, me: str = "", rounds: Callable[[bool], None] = lambda ok: None,
        turned: Callable[[], None] = lambda: None) -> None:
    """Poll the workspaces whose lease this process holds until `stop` is set; take free ones up to a fair share.

    `follow()` gives the accounts to poll this round (workspaces come and go while it runs);
    `rounds(ok)` hears how each round went (False: it failed on something other than Redis being away), `turned()` that
    one starts.
    """
    me = me or uuid.uuid4().hex[:8]
    accounts: list[Account] = []
    pool = ThreadPoolExecutor(max(1, poller.threads), thread_name_prefix="poll")
    while not stop.is_set():
        ok = True
        turned()
        try:
            failpoints.hit("poll_round", subject=me)  # tests only (inert unless ENGINE_FAILPOINTS is set)
            accounts = follow()
            _round(connection, accounts, poller, me, pool)
        except redis.RedisError as exc:  # Redis restarting: nothing moved, the next round tries again
            log.warning("poll round failed, will retry: %s", exc)
            # Redis answered and refused (a key of the wrong type, out of memory): no outage that /readyz's own check of
            # Redis shows, and it may refuse every round from now on.
            ok = isinstance(exc, (redis.ConnectionError, redis.TimeoutError))
        except Exception:  # a bug: its trace, and the next round (a poller that quit would poll nothing)
            log.exception("poll round failed")
            ok = False
        rounds(ok)
        stop.wait(poller.interval)
    pool.shutdown(wait=True, cancel_futures=True)  # the polls under way end (each bounded by the client's timeout)
    try:
        for account in accounts:
            leases.release(account)
        connection.zrem(leases.POLLERS_KEY, me)
    except redis.RedisError:
        pass  # Redis went first (a stack shutting down): the leases expire by themselves


class Following:
    """The accounts of the workspaces served now (paused ones too: their changes are still taken in).

    A workspace created through the operator API gets an account at the next round, one deleted
    loses it (and its lease), one changed (a new token) gets a new context.
    """

    def __init__(self, config: dict, connection: redis.Redis, served: Served | Shard, lease_seconds: float):
        self.config, self.connection, self.served, self.lease_seconds = config, connection, served, lease_seconds
        self.accounts: dict[str, Account] = {}
        self.leftovers = Leftovers()

    def __call__(self) -> list[Account]:
        current = self.served.workspaces()
        for name in [n for n in self.accounts if n not in current]:
            gone = self.accounts.pop(name)
            with contextlib.suppress(LockError):  # expired meanwhile: nothing to hand back
                if gone.lease.owned():
                    gone.lease.release()
            self.leftovers.let_go(name)  # a poll or scan of it may still have been finishing
            forget(name)  # its compiled rules, kept across its record's changes
            log.info("poller: %s is no longer served", name)
        self.leftovers.purge_due(self.connection)
        for name, workspace in current.items():
            account = self.accounts.get(name)
            if account is None:
                self.accounts[name] = Account(build_context(self.config, workspace, self.connection), self.connection.lock(
                    workspace.prefix + "poll:lease", timeout=self.lease_seconds, blocking=False, thread_local=False))
            elif account.workspace != workspace:
                account.context = build_context(self.config, workspace, self.connection)
                account.settings = None  # who the engine is in InLoox is asked again (the token may be new)
        return list(self.accounts.values())


def _round(connection: redis.Redis, accounts: list[Account], poller: PollerSettings, me: str,
           pool: ThreadPoolExecutor) -> None:
    """Renew or take leases up to a fair share, and start a poll of each workspace held whose last one is done."""
    share = leases.fair_share(connection, me, len(accounts), poller)
    lively = activity.latest(connection, [a.workspace.name for a in accounts])
    leases.renew_leases(connection, accounts, poller)
    owned = leases.owned(accounts)  # kept up to date below: counting it per account made a round O(n²)
    now = time.time()
    for account in _rotated(accounts):
        busy = account.polling is not None and not account.polling.done()
        held = account.renewed_at is not None
        if held and owned > share:
            if not busy:  # handed over between polls, never under one (two pollers would read it at once)
                leases.release(account)  # hand one over to a poller that has fewer
                owned -= 1
        elif leases.hold_lease(account, poller, may_take=owned < share):
            owned += not held
            _note_activity(account, lively.get(account.workspace.name, 0.0))
            if not busy and _has_work(account, now):
                account.polling = pool.submit(_poll_workspace, account, poller, me)
        else:
            owned -= held  # the lease expired under us


def _poll_workspace(account: Account, poller: PollerSettings, me: str) -> None:
    """One workspace's turn on the pool, in its own context; whatever goes wrong stays with it."""
    with workspaces.using(account.workspace):
        try:
            _poll_account(account, poller, me)
        except Exception:  # a bug or an answer nobody foresaw: this workspace's poll, not the poller
            log.exception("%s: poll failed", account.workspace.name)


def _note_activity(account: Account, at: float) -> None:
    """The workspace was active at `at` (epoch s): every set of it back to its active interval.

    A workspace quiet until now also has its rules and subscriptions looked at again at once: what
    stamped it may have been a new bundle or subscription.
    """
    if at > account.lively_at:
        if at - account.lively_at >= activity.QUIET_AFTER:
            account.watched_at = float("-inf")
        account.lively_at = at
        for pace in list(account.paces.values()):
            pace.lively(at)


def _rotated(accounts: list[Account]) -> list[Account]:
    """The accounts from a random starting point, so pollers do not all reach for the same one first."""
    start = random.randrange(len(accounts)) if accounts else 0
    return accounts[start:] + accounts[:start]


def _has_work(account: Account, now: float) -> bool:
    """True when a set of the workspace is due at `now` (epoch s), or its sweep, or a look at what it watches.

    Asked in the round, before the workspace goes to the pool: most idle workspaces have nothing due
    in a round, and handing each to a thread only to find that out cost more than the polls.
    """
    return (time.monotonic() >= account.next_sweep or _look_due(account, now)
            or any(p.due(now) for p in account.paces.values()))


def _look_due(account: Account, now: float) -> bool:
    """True when the poller should look at what the workspace watches again.

    Every WATCHED_REFRESH_SECONDS, every QUIET_WATCHED_REFRESH_SECONDS while the workspace is quiet,
    and at once when its rules folder changed: the process's shared look at the folder costs no
    request, and the person editing a rule file sees the "loaded"/"broken" line within seconds.
    """
    quiet = now - account.lively_at >= activity.QUIET_AFTER
    every = QUIET_WATCHED_REFRESH_SECONDS if quiet else WATCHED_REFRESH_SECONDS
    if time.monotonic() - account.watched_at >= every:
        return True
    path = account.workspace.rules_path
    return path is not None and folder_stamp(path)[1] != account.context.rules.loaded_from


def _poll_account(account: Account, poller: PollerSettings, me: str) -> None:
    """Poll the sets that are due (and sweep, when due); the round hands over only workspaces with work."""
    sweep = time.monotonic() >= account.next_sweep
    try:
        if account.settings is None:
            user = account.context.client.me()  # the engine's own InLoox user: its changes are "chained"
            account.settings = PollSettings(own_contact_id=str(user.get("ContactId")),
                                            overlap=timedelta(seconds=poller.overlap),
                                            flood_limit=account.workspace.limits.flood_limit)
            log.info("%s: polling as %s", account.workspace.name, user.get("DisplayName"))
        watched = _watching(account, poller)
    except (InLooxError, redis.RedisError) as exc:
        log.warning("%s: cannot poll yet: %s", account.workspace.name, exc)
        record_trouble(account.context.connection, WHOLE, exc, now=datetime.now(timezone.utc))
        return
    try:
        _cycle(account, watched, poller, sweep=sweep, me=me)
    except LeaseLost as exc:
        log.warning("%s: %s", account.workspace.name, exc)  # the new holder polls from where we left off
        return
    if sweep:
        account.next_sweep = time.monotonic() + poller.sweep_every


def _watching(account: Account, poller: PollerSettings) -> dict:
    """The sets to poll and their fields (rules and change-feed subscribers), each with its pace.

    Read again every WATCHED_REFRESH_SECONDS (QUIET_WATCHED_REFRESH_SECONDS while the workspace is
    quiet): while a workspace is idle, its rules and subscriptions are not read every round.
    """
    if _look_due(account, time.time()):
        account.watching = subscriptions.merged(watched_sets(account.context.ruleset()),
                                                subscriptions.watched_sets(account.context.connection, CHANGE_FEEDS))
        account.watched_at = time.monotonic()
    watched = account.watching
    if frozenset(watched) != account.watched:
        record_watched(account.context.connection, watched)
        account.watched = frozenset(watched)
    now = time.time()
    for entity_set in watched:
        if entity_set not in account.paces or account.paces[entity_set].pace != poller.pace(entity_set):
            # A set newly watched counts as lively: the rule was just written for it.
            account.paces[entity_set] = SetPace(poller.pace(entity_set), lively_at=max(now, account.lively_at))
    for entity_set in [s for s in account.paces if s not in watched]:
        del account.paces[entity_set]
    return watched


def _cycle(account: Account, watched: dict, poller: PollerSettings, *, sweep: bool, me: str) -> None:
    """Poll each watched set with a change feed; start the scans that are due on a thread of their own.

    A scan reads a whole set (1,000 requests for 100,000 rows): inline, it would hold up the feed
    polls of its workspace, and Task changes would wait for the Contact scan.
    """
    client, connection, settings = account.context.client, account.context.connection, account.settings
    due = []
    for entity_set, fields in watched.items():
        how, pace = observation(entity_set), account.paces[entity_set]
        if how is None:
            continue  # rules check refuses such sets; a subscription may still name one
        if isinstance(how, Scan):
            if pace.due(time.time()):
                due.append((how, fields))
            continue
        try:
            if pace.due(time.time()):
                _report(_timed(connection, lambda _: poll_once(client, connection, how, fields, settings),
                               method="feed", pace=pace, poller=me))
            if sweep:
                _noticed(pace, _report(sweep_deleted(client, connection, how, settings)), time.time())
        except (InLooxError, redis.RedisError) as exc:
            _retry_soon(pace)
            log.warning("%s: poll %s failed, will retry: %s", account.workspace.name, entity_set, exc)
            record_trouble(connection, entity_set, exc, now=datetime.now(timezone.utc))
        except Exception as exc:  # noqa: BLE001 - an answer nobody foresaw (or a bug): this set's failure alone
            _retry_soon(pace)
            log.exception("%s: poll %s failed, will retry", account.workspace.name, entity_set)
            record_trouble(connection, entity_set, exc, now=datetime.now(timezone.utc))
    if due and (account.scanning is None or not account.scanning.is_alive()):
        account.scanning = threading.Thread(target=_scans, args=(account, due, poller, me), daemon=True,
                                            name=f"scan-{account.workspace.name}")
        account.scanning.start()


def _retry_soon(pace: SetPace) -> None:
    """A poll or sweep failed: the cursor did not move, so the next cycle reads the same changes again, at
    the active interval rather than a backed-off one (as before backoff existed)."""
    pace.due_at = min(pace.due_at, time.time() + pace.pace.active)


def _scans(account: Account, due: list, poller: PollerSettings, me: str) -> None:
    with workspaces.using(account.workspace):  # the thread's own context: every key is the workspace's
        for scan, fields in due:
            try:
                _scan(account, scan, fields, poller, me)
            except LeaseLost:
                return  # another poller has the workspace now; it scans from here on
            except (InLooxError, redis.RedisError) as exc:
                _scan_again_soon(account, scan, poller)
                log.warning("%s: scan %s failed, will retry: %s", account.workspace.name, scan.entity_set, exc)
                record_trouble(account.context.connection, scan.entity_set, exc, now=datetime.now(timezone.utc))
            except Exception as exc:  # noqa: BLE001 - as in _cycle: the scans due after it still run
                _scan_again_soon(account, scan, poller)
                log.exception("%s: scan %s failed, will retry", account.workspace.name, scan.entity_set)
                record_trouble(account.context.connection, scan.entity_set, exc, now=datetime.now(timezone.utc))


def _scan_again_soon(account: Account, scan: Scan, poller: PollerSettings) -> None:
    """Nothing of the failed scan was kept: try again after a few polls rather than a whole interval."""
    pace = account.paces.get(scan.entity_set)
    if pace is not None:
        pace.due_at = time.time() + min(pace.interval(time.time()), 5 * poller.interval)


def _scan(account: Account, scan: Scan, fields, poller: PollerSettings, me: str) -> None:
    """One scan of a set without a change feed; the next is due one interval after this one started."""
    keep = lambda: leases.hold_lease(account, poller, may_take=False)  # noqa: E731  (asked per page: scans are long)
    _report(_timed(account.context.connection,
                   lambda now: scan_once(account.context.client, account.context.connection, scan, fields,
                                         account.settings, now=now, keep_lease=keep),
                   method="scan", pace=account.paces[scan.entity_set], poller=me))


def _timed(connection, poll: Callable[[datetime], PollResult], *, method: str, pace: SetPace,
           poller: str) -> PollResult:
    """`poll(started)`, timed by `pace`, recording its start, duration and request count for the dashboard and /metrics.

    A poll that found a change (or a duplicate of one: another poller's, or a retry) keeps its set lively.
    """
    started_at, started, requests_before = datetime.now(timezone.utc), time.monotonic(), metrics.requests_seen()
    quiet = max(0.0, started_at.timestamp() - pace.lively_at)
    every = pace.started(started_at.timestamp())
    result = poll(started_at)
    _noticed(pace, result, started_at.timestamp())
    run = PollRun(started_at, time.monotonic() - started, metrics.requests_seen() - requests_before, method, every,
                  quiet=quiet)
    record_poll(connection, result, run, poller=poller)
    return result


def _noticed(pace: SetPace, result: PollResult, started: float) -> None:
    if result.accepted or result.held or result.duplicates:
        pace.lively(started)


def _report(result: PollResult) -> PollResult:
    if result.accepted or result.held or result.baseline:
        log.info("poll %s: %d rows, %d events, %d duplicates, %d held%s", result.entity_set, result.rows,
                 len(result.accepted), result.duplicates, result.held, " (baseline)" if result.baseline else "")
    return result
