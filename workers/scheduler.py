"""The scheduler process (`python -m workers.scheduler`): fires each due schedule tick once, as an event.

Every SCHEDULE_INTERVAL seconds, for each workspace and each of its enabled rules with a `schedule:` trigger, it asks
`engine.schedules.due_ticks` which ticks came since the rule's last look and submits one
`schedule` event per tick through `workers.intake.submit_event`, like every other source. A disabled rule's
last look moves on at its ticks too, with nothing fired (see `fire_due`).

Keys are the workspace's own (`workspaces.key`):

    schedule:last                 sorted set: rule id → the time (epoch s) up to which ticks were handled;
                                  a rule that leaves the rules loses its entry (see `fire_due`)
    schedule:fired:<rule>:<tick>  the tick's dedup claim, kept FIRED_TTL after the tick (or after now, if later)

The dedup claim is the lock: any number of schedulers may run side by side, and each tick of a
rule is accepted once. A crash between submitting and moving `last` only means the next round
computes the same ticks again, which the claims turn away.

Between ticks a round asks Redis nothing: each scheduler remembers, per workspace and rule, the last
look it wrote and the rule's next tick after it (`Upcoming`), and reads `schedule:last` again only
once that tick is due. Leaving `last` where it was meanwhile changes nothing: no tick lies between
it and now, so the ticks computed at the next look are the same (a daily digest in 1,000 idle
workspaces used to cost two commands each every 5 s). That holds for the schedule remembered only: a rule whose
schedule is edited is looked at from the last round that saw the old one (`Upcoming.last`), not from `schedule:last`.

A workspace whose rules need a long compile (a large bundle just activated) has them compiled on a thread apart
(`Compiles`), not on the loop, where every other workspace's ticks waited for it; until then it is skipped with its last
look left where it was, so that the round after the compile fires the ticks due meanwhile, each once.
"""
from __future__ import annotations

import functools
import logging
import math
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

import redis

from engine import Event, Ruleset
from engine.rules import Rule
from engine.schedules import DEFAULT_GRACE, due_ticks, next_tick
from engine.templates import isoformat
from workers import failpoints, metrics, workspaces
from workers.intake import submit_event
from workers.logs import configure_logging, follow_registry
from workers.settings import load_config
from workers.signals import stop_event
from workers.registry import Leftovers, Served, Shard
from workers.worker_context import Compiling, RuleSource, forget, served
from workers.workspaces import key

log = logging.getLogger("scheduler")

LAST_KEY = "schedule:last"
MIN_INTERVAL, MAX_INTERVAL = 0.1, 3600.0  # SCHEDULE_INTERVAL's bounds (see `settings_from`)
FIRED_TTL = 7 * 86400  # far longer than any tick can be computed again (at most `grace` after it)


@dataclass(frozen=True)
class SchedulerSettings:
    """How often to look for due ticks, and how late a tick may still fire as on time."""

    interval: float = 5.0
    grace: timedelta = DEFAULT_GRACE


def schedule_event(rule_id: str, tick: datetime) -> Event:
    """The event of one tick of a rule; its id (and so its run) is the same in every scheduler."""
    time = isoformat(tick)
    return Event(source="schedule", kind=rule_id, occurred_at=tick, id=f"schedule:{rule_id}:{time}",
                 payload={"time": time})


def last_look(connection: redis.Redis, rule_id: str) -> datetime | None:
    """The time up to which the rule's ticks were handled, or None for a rule never seen."""
    score = connection.zscore(key(LAST_KEY), rule_id)
    return None if score is None else datetime.fromtimestamp(score, timezone.utc)


def rule_ticks(rule: Rule, last: datetime | None, now: datetime, grace: timedelta) -> list[datetime]:
    """The due ticks of all the rule's schedule triggers, oldest first, each once."""
    return sorted({tick for trig in rule.triggers if trig.cron
                   for tick in due_ticks(trig.cron, trig.timezone, last=last, now=now,
                                         catch_up=trig.catch_up or "skip", grace=grace)})


class Upcoming:
    """What one scheduler remembers of each schedule rule: its last look written, and the next tick after it."""

    def __init__(self) -> None:
        # (workspace, rule id) → (its schedule when looked at, the last look or the last round after it that found the
        # same schedule and no tick due, the next tick after that look)
        self._seen: dict[tuple[str, str], tuple[tuple, datetime, datetime | None]] = {}
        self._rules: dict[str, Ruleset] = {}  # workspace → the rules its last round read

    def rules_changed(self, ruleset: Ruleset) -> bool:
        """True until `keep_only` was told of these rules of this workspace (a first round, rules loaded again)."""
        return self._rules.get(workspaces.current().name) is not ruleset

    def keep_only(self, ruleset: Ruleset, rule_ids: set[str]) -> None:
        """Forget what is remembered of this workspace's rules other than `rule_ids`, the schedules of `ruleset`."""
        name = workspaces.current().name
        self._seen = {k: v for k, v in self._seen.items() if k[0] != name or k[1] in rule_ids}
        self._rules[name] = ruleset

    @staticmethod
    def _key(rule: Rule) -> tuple[str, str]:
        return workspaces.current().name, rule.id

    @staticmethod
    def _schedule(rule: Rule) -> tuple:
        return (rule.enabled, *((t.cron, t.timezone, t.catch_up) for t in rule.triggers if t.cron))

    def waiting(self, rule: Rule, now: datetime) -> bool:
        """True while the rule's next tick is still ahead of `now` (nothing to ask Redis).

        An edited schedule, or a rule enabled or disabled, is looked at again at once.
        """
        rule_key = self._key(rule)
        seen = self._seen.get(rule_key)
        if seen is None or seen[0] != self._schedule(rule) or (seen[2] is not None and now >= seen[2]):
            return False
        self._seen[rule_key] = (seen[0], now, seen[2])  # no Redis: a later look starts no earlier than this
        return True

    def last(self, rule: Rule) -> datetime | None:
        """The time up to which this scheduler saw the rule's ticks handled: its last look, or a later round that found
        the schedule unchanged and no tick due (None: never seen).

        Stands in for `schedule:last` should Redis have lost it, and is the later of the two when the schedule was
        edited: `schedule:last` is then as old as the rule's last tick, and the new schedule's ticks between it and
        the edit (an hourly rule made `30 * * * *` at 9:40: 9:30) were no ticks of the rule, yet `catch_up: latest`
        fired the latest of them, and `skip` one within the grace.
        """
        seen = self._seen.get(self._key(rule))
        return seen[1] if seen else None

    def forget(self, workspace: str) -> None:
        """Drop what is remembered of a workspace no longer served (deleted: its rules are gone)."""
        self._seen = {k: v for k, v in self._seen.items() if k[0] != workspace}
        self._rules.pop(workspace, None)

    def looked(self, rule: Rule, now: datetime) -> None:
        upcoming = next_tick(rule, now)
        self._seen[self._key(rule)] = (self._schedule(rule), now, upcoming.at if upcoming else None)


def fire_due(connection: redis.Redis, ruleset: Ruleset, *, now: datetime,
             grace: timedelta = DEFAULT_GRACE, upcoming: Upcoming | None = None) -> list[str]:
    """Submit the due ticks of every schedule rule; returns the ids of the events accepted now.

    With `upcoming` (the scheduler's loop), a rule whose next tick is still ahead is skipped.
    A disabled rule fires nothing, but its last look moves on all the same: its ticks meanwhile were
    not missed by a scheduler that was down, and `catch_up: latest` must not fire one of them (a
    rule disabled for a week would run for a tick of that week the moment it is enabled again).
    For the same reason a rule deleted from the rules (or that lost its schedule) has its last look
    forgotten when the rules change: added again later, it is a new rule and starts from then.
    """
    accepted = []
    if upcoming is None or upcoming.rules_changed(ruleset):
        _forget_gone(connection, ruleset, upcoming)
    for rule in ruleset.schedules(disabled=True):
        if upcoming is not None and upcoming.waiting(rule, now):
            continue
        looks = (last_look(connection, rule.id), upcoming.last(rule) if upcoming else None)
        last = max((look for look in looks if look is not None), default=None)
        for tick in rule_ticks(rule, last, now, grace) if rule.enabled else ():
            event = schedule_event(rule.id, tick)
            # The last look moves to the tick in the tick's own transaction: moved after it, a connection lost in
            # between left the look behind a tick already fired, and `catch_up: latest` fired it again once its
            # claim (FIRED_TTL) had gone.
            look = functools.partial(_look, rule_id=rule.id, at=tick.timestamp())
            if fire_tick(connection, event, now=now, also=look):
                accepted.append(event.id)
        # GT: never move back (another scheduler may have looked a moment later than we did).
        connection.zadd(key(LAST_KEY), {rule.id: now.timestamp()}, gt=True)
        if upcoming is not None:
            upcoming.looked(rule, now)
    return accepted


def _forget_gone(connection: redis.Redis, ruleset: Ruleset, upcoming: Upcoming | None) -> None:
    """Drop the last looks (in Redis and remembered) of rules that are no longer schedule rules.

    Kept, a rule removed in January and added again in March under the same id found January's
    look and, with `catch_up: latest`, fired February's last tick the moment it came back.
    """
    present = {rule.id for rule in ruleset.schedules(disabled=True)}
    gone = [rule_id for rule_id in connection.zrange(key(LAST_KEY), 0, -1)
            if rule_id.decode() not in present]
    if gone:
        connection.zrem(key(LAST_KEY), *gone)
    if upcoming is not None:
        upcoming.keep_only(ruleset, present)


def _look(pipe, *, rule_id: str, at: float) -> None:
    """Queue the rule's last look moving to `at` (GT: never back)."""
    pipe.zadd(key(LAST_KEY), {rule_id: at}, gt=True)


def fire_tick(connection: redis.Redis, event: Event, *, now: datetime,
              also: Callable[[redis.client.Pipeline], None] | None = None) -> bool:
    """Submit one tick's event (see `schedule_event`) unless that tick fired before; True when it fires now.

    The scheduler's path, and `flask rules run RULE --tick`'s: a tick fired by hand is not fired again.
    The claim outlives the tick itself by FIRED_TTL: `--tick` fires a tick before its time (a monthly
    report's, weeks ahead), and a claim gone by then let the scheduler fire it a second time.
    """
    ahead = max(0, int((event.occurred_at - now).total_seconds()) + 1)
    return submit_event(connection, event, dedup_key=_fired_key(event.kind, event.payload["time"]),
                        dedup_ttl=FIRED_TTL + ahead, also=also)


def tick_fired(connection: redis.Redis, rule_id: str, tick: datetime) -> bool:
    """Whether the rule's tick at `tick` fired already (by the scheduler, or ahead of its time by `--tick`)."""
    return bool(connection.exists(_fired_key(rule_id, isoformat(tick))))


def _fired_key(rule_id: str, time: str) -> str:
    return key(f"schedule:fired:{rule_id}:{time}")


class Compiles:
    """The workspaces whose rules compile on a thread apart from the loop's: more than bundles.COMPILE_HERE_BYTES of rule text
    (a 1 MB bundle just activated: 5-8 s of CPU), which on the loop held up every other workspace's ticks."""

    def __init__(self, connection: redis.Redis) -> None:
        self._connection = connection
        # One thread: compiles are CPU under the process's one GIL, so one at a time finishes the first soonest.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="schedule-compile")
        self._running: dict[str, Future] = {}

    def start(self, source: RuleSource) -> None:
        """Compile the workspace's rules apart, unless they compile already; its RuleSource keeps them for a round."""
        name = source.workspace.name
        if name not in self._running:
            self._running[name] = self._pool.submit(_compile, self._connection, source)

    def ended(self) -> list[str]:
        """The workspaces whose compile ended since the last call (a failed one is started again at its next turn)."""
        ended = [name for name, job in self._running.items() if job.done()]
        for name in ended:
            del self._running[name]
        return ended

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _compile(connection: redis.Redis, source: RuleSource) -> None:
    """Compile the workspace's rules (on the compile thread); a failure is logged and counted, as `_fire` does."""
    with workspaces.using(source.workspace):
        try:
            source.current()
        except redis.RedisError as exc:
            log.warning("%s: could not compile its rules, will retry: %s", source.workspace.name, exc)
        except Exception:  # a bug: this workspace's schedules, not every workspace's
            log.exception("%s: could not compile its rules", source.workspace.name)
            _count_failure(connection)


def run(connection: redis.Redis, served: Served | Shard, settings: SchedulerSettings, stop: threading.Event, *,
        rounds: Callable[[bool], None] = lambda ok: None, turned: Callable[[], None] = lambda: None) -> None:
    """Fire due ticks of every workspace served until `stop` is set; rules are read again when they change.

    Workspaces are followed live: one created through the operator API has its ticks fired from the
    next round on (a paused one's too: they wait in its event log, as its webhooks do).
    `rounds(ok)` hears how each round went (False: every workspace's failed on something other than Redis being away);
    `turned()` that a round, or a workspace's turn in it, starts (a round over many workspaces is long, and not stuck).
    """
    sources: dict[str, RuleSource] = {}
    upcoming = Upcoming()
    # A turn of a workspace in progress as it is deleted still stores its looks, its ticks, its rules' last good
    # texts: `python -m workers.scheduler` runs no poll loop, whose purges delete those, and they stayed for good.
    leftovers = Leftovers()
    compiles = Compiles(connection)
    try:
        while not stop.is_set():
            turned()
            current = served.workspaces()
            for name in [n for n in sources if n not in current]:
                del sources[name]
                upcoming.forget(name)
                forget(name)  # its compiled rules, kept across its record's changes
                leftovers.let_go(name)
            for name in compiles.ended():
                if name not in sources:  # let go while its rules compiled: what the compile kept (and wrote) goes too
                    forget(name)
                    leftovers.let_go(name)
            try:
                leftovers.purge_due(connection)
            except redis.RedisError as exc:  # still due: the next round purges once Redis is back
                log.warning("could not delete what is left of deleted workspaces, will retry: %s", exc)
            for name, workspace in current.items():
                if name not in sources or sources[name].workspace != workspace:
                    sources[name] = RuleSource(connection, workspace)
            failed = 0
            for source in sources.values():
                turned()
                with workspaces.using(source.workspace):
                    failed += not _fire(connection, source, settings, upcoming, compiles)
            # One workspace's failure is its own (logged by its name; the others fired): as for the poller's rounds and
            # the workers' event logs, one customer's bug or damaged key takes no deployment out of its load balancer.
            rounds(not sources or failed < len(sources))
            stop.wait(settings.interval)
    finally:
        compiles.close()  # the compile under way finishes (the process's exit waits for it), the queued ones go


def _fire(connection: redis.Redis, source: RuleSource, settings: SchedulerSettings, upcoming: Upcoming,
          compiles: Compiles) -> bool:
    """Fire the workspace's due ticks; False when that failed on a bug or a refusal of Redis (its trace is logged, the
    others still fire). Rules that would take long to compile compile apart (`Compiles`), and the workspace waits."""
    try:
        failpoints.hit("schedule_workspace", subject=source.workspace.name)  # tests only
        try:
            ruleset = source.current(wait=False)[0]
        except Compiling:
            # Nothing of its ticks moved: a round after the compile fires those due meanwhile, each once (its last
            # look is where it was, and a compile of seconds is well within the grace).
            compiles.start(source)
            return True
        for event_id in fire_due(connection, ruleset, now=datetime.now(timezone.utc), grace=settings.grace,
                                 upcoming=upcoming):
            log.info("%s: fired %s", source.workspace.name, event_id)
    except redis.RedisError as exc:
        # Nothing moved: the next round redoes it.
        log.warning("%s: could not fire schedules, will retry: %s", source.workspace.name, exc)
        # Redis away is /readyz's check of Redis to say; Redis that answered and refused (a key of the wrong type, out
        # of memory) may refuse this workspace at every round.
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return True
        _count_failure(connection)
        return False
    except Exception:  # a bug, or a rule nobody foresaw: this workspace's schedules, not every workspace's
        log.exception("%s: could not fire schedules", source.workspace.name)
        _count_failure(connection)
        return False
    return True


def _count_failure(connection: redis.Redis) -> None:
    """Count a workspace's failed turn (`schedule_failures`, labelled by workspace): one customer's failing schedules make
    no deployment unready, so the operator's alert on this counter is what names it."""
    try:
        metrics.count(connection, "schedule_failures")
    except redis.RedisError:
        pass  # Redis refusing the counters too: the log line above is what there is


def settings_from(config: dict) -> SchedulerSettings:
    """The scheduler's settings from the configuration (SCHEDULE_INTERVAL).

    A tick may be as late as two intervals (a round, and the wait before the next) and still fire:
    with the grace alone, SCHEDULE_INTERVAL=300 left most ticks more than two minutes old when a round
    came to them, and `catch_up: skip` fired none of them, silently.
    """
    text = config["SCHEDULE_INTERVAL"]
    try:
        interval = float(text)
    except ValueError:
        interval = math.nan
    # Not below a tenth of a second (0 never waits: a core spins), nor above an hour: the grace is two intervals, and
    # one of days took in every tick missed while no scheduler ran, fired as on time in spite of `catch_up: skip`.
    if not MIN_INTERVAL <= interval <= MAX_INTERVAL:  # NaN too
        raise SystemExit(f"Error: SCHEDULE_INTERVAL={text!r} is not a number of seconds from {MIN_INTERVAL:g} to "
                         f"{MAX_INTERVAL:g}")
    return SchedulerSettings(interval=interval, grace=max(DEFAULT_GRACE, timedelta(seconds=2 * interval)))


def main() -> int:
    """The schedules' loop as a poller process runs it (workers/poller/process.py), without polling: started again if
    a bug ends it, and said in the pollers' beats (kind "scheduler"), so /readyz names a scheduler process whose rounds
    fail, whose loop keeps stopping, or that went away."""
    from workers.poller.process import Polling  # the poller's process imports this module for its own loop

    config = load_config()
    configure_logging(config)  # JSON lines, secrets redacted, as the worker and the poller log
    follow_registry(served().view)  # workspaces added or rotated later have their secrets redacted too
    polling = Polling(config, with_scheduler=True, polls=False, stop=stop_event())
    log.info("scheduler %s: every %.1fs", polling.me, settings_from(config).interval)
    polling.supervise()
    return 0


if __name__ == "__main__":
    sys.exit(main())
