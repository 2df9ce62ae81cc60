"""The InLoox change poller process (`python -m workers.poller`).

For every workspace, polls the entity sets that its enabled rules trigger on: those with a change
feed every POLL_INTERVAL seconds (sweeping them for deletions every POLL_SWEEP_SECONDS), the others
by a scan of the whole set every POLL_SCAN_SECONDS (default 60; per set as `60 Contact=30`, never
below POLL_SCAN_FLOOR_SECONDS), since a scan costs a request per 100 rows however little changed.
A set that sees no change, in a workspace where nothing happens, is polled less and less often, up
to POLL_MAX_INTERVAL (feeds) or POLL_SCAN_MAX_SECONDS (scans); a change, an event accepted from any
source or a person on the dashboard brings it back at once (workers/poller/pace.py has the curve).

Each round hands every workspace held that has something due to a pool of POLL_THREADS threads, at
most one poll of a workspace at a time: an InLoox account that answers slowly, or not before the
client's timeout, delays its own polls, not the other workspaces'. Each workspace is polled only by the
holder of its Redis lease (`ws:<name>:poll:lease`, a redis-py Lock with expiry), so any number of
poller processes may run: they split the workspaces between them, and the workspaces of a poller
that died are taken over by the others within one lease period (POLL_LEASE_SECONDS).

What a round costs Redis does not grow with idle workspaces: one MGET of every workspace's activity
stamp, the pollers' roll call, and every third of a lease period one script renewing every lease
held (the holder remembers when it last renewed instead of asking Redis every round); a workspace
with nothing due sends nothing else.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Mapping

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from engine.rules import Ruleset
from inloox import InLooxError
from inloox.changes import CHANGE_FEEDS, ChangeFeed, Scan, observation
from workers import activity, failpoints, metrics, scripts
from workers.poller import beats as poller_beats
from workers.logs import configure_logging, follow_registry
from workers.poller.poll import PollResult, PollSettings, poll_once, sweep_deleted
from workers.poller.pace import Pace, SetPace
from workers import subscriptions, workspaces
from workers.poller.status import PollRun, record_poll, record_watched
from workers.poller.scan import LeaseLost, scan_once
from workers.settings import redis_client
from workers.signals import stop_event
from workers.registry import Leftovers, Served, Shard
from workers.worker_context import WorkerContext, build_context, folder_stamp, served
from workers.workspaces import Workspace

log = logging.getLogger("poller")

POLLERS_KEY = "pollers:alive"  # deployment-wide: poller id → last round (epoch s)
WATCHED_REFRESH_SECONDS = 10.0  # a set a new rule or subscription watches is polled within this (and a poll)
# In a quiet workspace (workers/activity.py) within this: a bundle activated or a subscription saved
# stamps activity, and a rules folder's changed files are seen in the process's shared look: both make the poller look at once.
QUIET_WATCHED_REFRESH_SECONDS = 60.0
SUPERVISE_SECONDS = 1.0  # how soon a poller process starts a dead loop again
# A loop started again is said stopped this long after (its beat, or its worker's): a probe every
# 10 s sees a loop that died once; one that keeps dying is said all along.
RESTARTED_SHOWN_SECONDS = 15.0
STOP_SECONDS = 10.0  # a stopping poller process waits this long for its polls under way (then its leases expire)


@dataclass(frozen=True)
class PollerSettings:
    """How often to poll, scan and sweep, and how long a lease lasts without renewal."""

    interval: float = 2.0
    sweep_every: float = 300.0
    lease_seconds: float = 15.0
    scan_every: float = 60.0
    scan_floor: float = 10.0
    scan_every_set: Mapping[str, float] = field(default_factory=dict)  # per entity set, over scan_every
    idle_after: float = 60.0  # seconds of quiet before a set backs off (0: never)
    max_interval: float = 30.0  # a change feed's ceiling
    scan_max: float = 600.0  # a scan's ceiling
    threads: int = 8  # workspaces polled at the same time (POLL_THREADS)

    def scan_interval(self, entity_set: str) -> float:
        """Seconds between two scans of `entity_set`: its own setting or the default, never below the floor."""
        return max(self.scan_floor, self.scan_every_set.get(entity_set, self.scan_every))

    def pace(self, entity_set: str) -> Pace:
        """How `entity_set` is paced: a change feed from POLL_INTERVAL, a scan from its scan interval."""
        if isinstance(observation(entity_set), Scan):
            return Pace(self.scan_interval(entity_set), self.idle_after, self.scan_max)
        return Pace(self.interval, self.idle_after, self.max_interval)


def parse_scan_seconds(text: str) -> tuple[float, dict[str, float]]:
    """`"60 Contact=30 Portfolio=600"` → (60.0, {"Contact": 30.0, "Portfolio": 600.0}); ValueError if unreadable."""
    default, per_set = 60.0, {}
    for word in text.replace(",", " ").split():
        name, _, seconds = word.rpartition("=")
        try:
            value = float(seconds)
        except ValueError:
            raise ValueError(f"POLL_SCAN_SECONDS: {word!r} is not seconds or <EntitySet>=<seconds>") from None
        if name and observation(name) is None:
            raise ValueError(f"POLL_SCAN_SECONDS: {name!r} is not an entity set the poller can watch")
        if name:
            per_set[name] = value
        else:
            default = value
    return default, per_set


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
        stop: threading.Event, *, me: str = "", rounds: Callable[[bool], None] = lambda ok: None) -> None:
    """Poll the workspaces whose lease this process holds until `stop` is set; take free ones up to a fair share.

    `follow()` gives the accounts to poll this round (workspaces come and go while it runs);
    `rounds(ok)` hears how each round went (False: it failed on something other than Redis).
    """
    me = me or uuid.uuid4().hex[:8]
    accounts: list[Account] = []
    pool = ThreadPoolExecutor(max(1, poller.threads), thread_name_prefix="poll")
    while not stop.is_set():
        ok = True
        try:
            failpoints.hit("poll_round", subject=me)  # tests only (inert unless ENGINE_FAILPOINTS is set)
            accounts = follow()
            _round(connection, accounts, poller, me, pool)
        except redis.RedisError as exc:  # Redis restarting: nothing moved, the next round tries again
            log.warning("poll round failed, will retry: %s", exc)
        except Exception:  # a bug: its trace, and the next round (a poller that quit would poll nothing)
            log.exception("poll round failed")
            ok = False
        rounds(ok)
        stop.wait(poller.interval)
    pool.shutdown(wait=True, cancel_futures=True)  # the polls under way end (each bounded by the client's timeout)
    try:
        for account in accounts:
            _release(account)
        connection.zrem(POLLERS_KEY, me)
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
    share = _fair_share(connection, me, len(accounts), poller)
    lively = activity.latest(connection, [a.workspace.name for a in accounts])
    _renew_leases(connection, accounts, poller)
    owned = _owned(accounts)  # kept up to date below: counting it per account made a round O(n²)
    now = time.time()
    for account in _rotated(accounts):
        busy = account.polling is not None and not account.polling.done()
        held = account.renewed_at is not None
        if held and owned > share:
            if not busy:  # handed over between polls, never under one (two pollers would read it at once)
                _release(account)  # hand one over to a poller that has fewer
                owned -= 1
        elif _hold_lease(account, poller, may_take=owned < share):
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
    return sum(a.renewed_at is not None for a in accounts)


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
                                            flood_limit=account.workspace.limits.flood_limit)
            log.info("%s: polling as %s", account.workspace.name, user.get("DisplayName"))
        watched = _watching(account, poller)
    except (InLooxError, redis.RedisError) as exc:
        log.warning("%s: cannot poll yet: %s", account.workspace.name, exc)
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


def _hold_lease(account: Account, poller: PollerSettings, *, may_take: bool = True) -> bool:
    """Keep the lease we hold (renewed once a third of its period has passed), or try to take a free one.

    False while another poller has it. Between renewals the holder trusts its own clock: a lease
    renewed less than a third of its period ago cannot have expired, so asking Redis would cost a
    command per workspace per round and tell nothing.
    """
    try:
        if account.renewed_at is not None:
            if time.monotonic() - account.renewed_at < poller.lease_seconds / 3:
                return True
            account.lease.reacquire()  # raises LockNotOwnedError when it expired under us
        elif not (may_take and account.lease.acquire(blocking=False)):
            return False
    except redis.exceptions.LockError:
        account.renewed_at = None  # expired under us (a long stall): the next round competes for it again
        return False
    account.renewed_at = time.monotonic()
    return True


# For each lease (KEYS[i], our token ARGV[i+1]): extend it to ARGV[1] ms if it is still ours; 1 or 0 each.
_RENEW = scripts.script("""
local renewed = {}
for i, lease in ipairs(KEYS) do
    if redis.call('get', lease) == ARGV[i + 1] then
        redis.call('pexpire', lease, ARGV[1])
        renewed[i] = 1
    else
        renewed[i] = 0
    end
end
return renewed
""")


def _renew_leases(connection: redis.Redis, accounts: list[Account], poller: PollerSettings) -> None:
    """Renew, in one script, every lease held that a third of its period has passed since it was renewed.

    What `_hold_lease` would do one workspace at a time (a script each: 3 commands per workspace
    every 5 s). A lease found no longer ours is let go: the round competes for it again.
    """
    now = time.monotonic()
    due = [a for a in accounts if a.renewed_at is not None and now - a.renewed_at >= poller.lease_seconds / 3
           and a.lease.local.token is not None]
    if not due:
        return
    renewed = scripts.call(connection, _RENEW, keys=[a.lease.name for a in due],
                           args=[int(poller.lease_seconds * 1000), *(a.lease.local.token for a in due)])
    for account, ours in zip(due, renewed):
        account.renewed_at = now if ours else None


def _release(account: Account) -> None:
    """Hand the workspace's lease back (if it is still ours), for another poller to take."""
    if account.renewed_at is None:
        return
    account.renewed_at = None
    with contextlib.suppress(LockError):  # expired meanwhile: nothing to hand back
        account.lease.release()


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
            # The cursor did not move: the next cycle reads the same changes again, at the active
            # interval rather than a backed-off one (as before backoff existed).
            pace.due_at = min(pace.due_at, time.time() + pace.pace.active)
            log.warning("poll %s failed, will retry: %s", entity_set, exc)
    if due and (account.scanning is None or not account.scanning.is_alive()):
        account.scanning = threading.Thread(target=_scans, args=(account, due, poller, me), daemon=True,
                                            name=f"scan-{account.workspace.name}")
        account.scanning.start()


def _scans(account: Account, due: list, poller: PollerSettings, me: str) -> None:
    with workspaces.using(account.workspace):  # the thread's own context: every key is the workspace's
        for scan, fields in due:
            try:
                _scan(account, scan, fields, poller, me)
            except LeaseLost:
                return  # another poller has the workspace now; it scans from here on
            except (InLooxError, redis.RedisError) as exc:
                # Nothing of it was kept: try again after a few polls rather than a whole interval.
                pace = account.paces.get(scan.entity_set)
                if pace is not None:
                    pace.due_at = time.time() + min(pace.interval(time.time()), 5 * poller.interval)
                log.warning("scan %s failed, will retry: %s", scan.entity_set, exc)


def _scan(account: Account, scan: Scan, fields, poller: PollerSettings, me: str) -> None:
    """One scan of a set without a change feed; the next is due one interval after this one started."""
    keep = lambda: _hold_lease(account, poller, may_take=False)  # noqa: E731  (asked per page: scans are long)
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


def poller_settings(config: Mapping[str, str]) -> PollerSettings:
    """The POLL_* settings; a value that is not a number stops the process with its name (SystemExit)."""
    try:
        scan_every, scan_every_set = parse_scan_seconds(config["POLL_SCAN_SECONDS"])
        return PollerSettings(interval=float(config["POLL_INTERVAL"]),
                              sweep_every=float(config["POLL_SWEEP_SECONDS"]),
                              lease_seconds=float(config["POLL_LEASE_SECONDS"]),
                              scan_every=scan_every, scan_every_set=scan_every_set,
                              scan_floor=float(config["POLL_SCAN_FLOOR_SECONDS"]),
                              idle_after=float(config["POLL_IDLE_AFTER_SECONDS"]),
                              max_interval=float(config["POLL_MAX_INTERVAL"]),
                              scan_max=float(config["POLL_SCAN_MAX_SECONDS"]),
                              threads=int(config["POLL_THREADS"]))
    except ValueError as exc:
        raise SystemExit(f"Error: a POLL_* setting: {exc}") from None


class Polling:
    """The poller's loop, and the schedules' (workers/scheduler.py), on threads of the process that starts it.

    `python -m workers.poller` runs them while its main thread watches over them (`supervise`); a
    worker started with WORKER_POLLS=1 runs both beside its event consumer, one process fewer, and
    watches over them from its heartbeat (workers/worker.py). Either way the
    process polls only the workspaces whose lease it holds, so any number of them may poll.
    """

    def __init__(self, config: dict, *, with_scheduler: bool, stop: threading.Event | None = None,
                 shard: Shard | None = None):
        self.config = config
        self.settings = poller_settings(config)
        self.connection = redis_client(config)  # room for every poll thread, and for the scans running beside them
        self.served = shard or Shard(served(), frozenset())  # a worker's shard (WORKER_WORKSPACES), or every one
        self.follow = Following(config, self.connection, self.served, self.settings.lease_seconds)
        self.me = uuid.uuid4().hex[:8]
        self.stop_event = stop or threading.Event()
        self.loops: dict[str, Callable[[], None]] = {"poller": self.poll}
        if with_scheduler:
            self.loops["scheduler"] = self.schedule
        self.threads: dict[str, threading.Thread] = {}
        self.starts: dict[str, int] = {}  # loop name → how many times it was started (failpoint subjects)
        self.restarted_at: dict[str, float] = {}  # loop name → when (monotonic) it was last started again
        self.failing: set[str] = set()  # the loops whose last round failed on something other than Redis

    def announce(self) -> None:
        poller = self.settings
        log.info("poller %s: %s, every %.1fs, scans every %gs; quiet sets back off after %gs up to %gs (scans %gs)",
                 self.me, ", ".join(a.workspace.name for a in self.follow()) or "no workspace yet", poller.interval,
                 poller.scan_interval(""), poller.idle_after, poller.max_interval, poller.scan_max)
        for name, seconds in {"(default)": poller.scan_every, **poller.scan_every_set}.items():
            if seconds < poller.scan_floor:
                log.warning("scan interval %gs of %s is below the floor: scanning every %gs", seconds, name,
                            poller.scan_floor)

    def poll(self) -> None:
        """The polling loop on the calling thread, until `stop_event` is set."""
        try:
            self.announce()
        except redis.RedisError as exc:  # Redis restarting: the rounds wait for it
            log.warning("poller %s: starting while Redis is unavailable (%s)", self.me, exc)
        run(self.connection, self.follow, self.settings, self.stop_event, me=self.me, rounds=self._round_went)

    def _round_went(self, ok: bool, loop: str = "poller") -> None:
        if ok:
            self.failing.discard(loop)
        else:
            self.failing.add(loop)

    def schedule(self) -> None:
        """The schedules' loop on the calling thread, until `stop_event` is set."""
        from workers import scheduler

        self.starts["scheduler"] = self.starts.get("scheduler", 0) + 1
        # Tests only: `scheduler_loop~start 1.` ends the first run of the loop as a bug escaping it would.
        failpoints.hit("scheduler_loop", subject=f"start {self.starts['scheduler']}.")
        scheduler.run(self.connection, self.served, scheduler.settings_from(self.config), self.stop_event,
                      rounds=lambda ok: self._round_went(ok, "scheduler"))

    def start(self, *names: str) -> None:
        """The loops named (all by default) on threads of their own, named after them."""
        for name in names or self.loops:
            thread = threading.Thread(target=self._loop, args=(name,), name=name, daemon=True)
            self.threads[name] = thread
            thread.start()

    def _loop(self, name: str) -> None:
        """The loop `name` on this thread; a bug escaping it ends the thread, logged here (so redacted), not
        by Python's hook on stderr. `keep_running` starts it again."""
        try:
            self.loops[name]()
        except Exception:
            log.exception("the %s loop stopped on an error", name)

    def keep_running(self) -> None:
        """Start again a loop whose thread ended while no stop was asked for (its traceback is in the log)."""
        for name, thread in list(self.threads.items()):
            if not thread.is_alive() and not self.stop_event.is_set():
                log.error("the %s loop had stopped; starting it again", name)
                self.restarted_at[name] = time.monotonic()
                self.start(name)

    def trouble(self) -> str | None:
        """What is wrong with the loops ("poller failing", "scheduler stopped", …); None when all run.

        A loop started again within RESTARTED_SHOWN_SECONDS counts as stopped: one that dies at every
        start is alive only for moments, and a beat taken in one of them would say all is well.
        """
        moment = time.monotonic()
        dead = sorted(name for name, thread in self.threads.items() if not thread.is_alive()
                      or moment - self.restarted_at.get(name, float("-inf")) < RESTARTED_SHOWN_SECONDS)
        if dead:
            return f"{' and '.join(dead)} stopped"
        failing = sorted(self.failing)  # once: the loops' threads change it
        return f"{' and '.join(failing)} failing" if failing else None

    def supervise(self) -> None:
        """The loops on threads of their own until `stop_event` is set; this thread starts a dead one again
        and says how they are (workers/poller/beats.py) for /readyz. The poller process's main thread.
        """
        self.start()
        next_beat = 0.0
        while not self.stop_event.is_set():
            self.keep_running()
            if time.monotonic() >= next_beat and self._beat():
                next_beat = time.monotonic() + poller_beats.BEAT_SECONDS
            self.stop_event.wait(SUPERVISE_SECONDS)
        self.stop(STOP_SECONDS)
        try:
            poller_beats.leave(self.connection, self.me)
        except redis.RedisError:
            pass  # Redis went first: /readyz says this poller gone until a live one forgets it (FORGET_AFTER)

    def _beat(self) -> bool:
        """Say how the loops are; False when Redis is away (the loops wait for it; the beat is said again)."""
        try:
            poller_beats.beat(self.connection, self.me, self.trouble() or poller_beats.POLLING, now=time.time())
        except redis.RedisError as exc:
            log.debug("poller %s: beat not written (%s)", self.me, exc)
            return False
        return True

    def stop(self, timeout: float) -> None:
        """Ask both loops to stop and wait for them: the poller releases its leases on its way out."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))


def main(argv: list[str] | None = None) -> int:
    """`python -m workers.poller [--with-scheduler]`: poll every workspace; with the flag, also fire
    their schedules (workers/scheduler.py) on a thread of this process, one process fewer."""
    from workers.settings import load_config  # the one place settings are read from the environment

    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--with-scheduler"]):
        print("usage: python -m workers.poller [--with-scheduler]", file=sys.stderr)
        return 2

    config = load_config()
    configure_logging(config)
    follow_registry(served().view)  # workspaces added or rotated later have their secrets redacted too
    polling = Polling(config, with_scheduler=argv == ["--with-scheduler"], stop=stop_event())
    # A dead loop is started again in the process rather than ending it: under honcho (the Procfile's
    # runner) one process that exits stops the whole stack, and the worker's loops are kept the same way.
    polling.supervise()
    return 0


if __name__ == "__main__":
    sys.exit(main())
