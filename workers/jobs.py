"""Handling events and executing runs. RQ job arguments are JSON (run ids), never clients or secrets.

    handle(ctx, event, accepted_at)  match an accepted event (from workers/consumer/) against the
                                     workspace's rules; one run per match, the live ones executed here
    handle_batch(ctx, arrivals)      the same for several events of a workspace, stored together
    handle_together(batches)         the same for several workspaces' events, run at once on one thread
    execute_run(run_id, workspace)   RQ job: perform a run's remaining operations, each exactly once

Each works for one workspace: its client, rules and Redis keys are that workspace's.
"""
from __future__ import annotations

import functools
import itertools
import logging
import os
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import redis

from engine import Event, Plan, TemplateError, explain, render_deferred
from engine.errors import StepSkipped
from engine.iteration import iterate, query_operation, unkeyed
from inloox import AuthError, InLooxError, OutcomeUnknown, load_metadata, together
from inloox.changes import ChangeFeed, observation
from inloox.errors import ServerError, Throttled
from workers import deliveries, failpoints, guards, ledger, metrics, recovery, round_trips, scripts, workspaces
from workers.enqueue import queue_run
from workers.holds import schedule_check
from workers.effects import EXECUTORS, NeedsAttention, StepContext, checkable_write, checked_again
from workers.outbound import OutboundRefused, redacted
from workers.round_trips.pipeline import set_key
from workers.runs import (ACTIVE, TERMINAL, Creation, Lease, create_run, list_runs, load_run, new_run, queue_create,
                          record_step, save_run, save_trace)
from workers.worker_context import WorkerContext, workspace_job
from workers.chat import after_run as report_to_chat
from workers.metering import limits, usage

log = logging.getLogger(__name__)

UNKNOWN_OUTCOME_DELAY = 5.0  # let a slow InLoox finish a write before we look for it
DEFAULT_RETRY = {"attempts": 5, "backoff": 2.0}
MAX_BACKOFF = 300.0
# A run waiting for a down InLoox tries again at most this far apart: every worker following its workspace asks
# InLoox every few seconds whether it answers and starts it then (workers/recovery.py), so its own tries need not be
# often; each costs an RQ job (10,000 runs waiting: ~67 jobs a second with MAX_BACKOFF, ~11 with this).
MAX_OUTAGE_BACKOFF = 1800.0
# The longest Retry-After of InLoox's we honour: it is InLoox's word, not ours, and a retry "1e300 s" later could
# not be scheduled at all (timedelta overflowed: the attempt ended in an error, its run left to its lease and
# the sweeper, to meet the same answer again).
MAX_RETRY_AFTER = 3600.0
PAUSED = "account:paused"  # the workspace's InLoox token was refused: its runs wait for a person
WORKSPACE_RUNS_WINDOW = {"per_seconds": 60}  # a workspace's runs_per_minute limit


def handle(ctx: WorkerContext, event: dict, *, accepted_at: float | None = None, entry_id: str | None = None) -> dict:
    """Plan the event against the workspace's rules; store a run per matched rule, and run the live ones.

    `accepted_at` (time.time() of the event's acceptance) makes the rules at least that new. The
    explain report (which rules matched, and why the others did not) is kept as the event's trace,
    with the rule set's version and the event's place in the event log (`entry_id`).
    Live runs are executed right here, one after the other, on the caller's thread (the event
    consumer's pool keeps many events in flight); runs limited by a rule's `concurrency` get RQ
    jobs of their own, since RQ enforces that limit. Safe to call again for the same event: run
    ids depend on the event and the rule only, so a second call finds and continues the same runs.
    """
    outcome = handle_batch(ctx, [Arrival(event, accepted_at, entry_id)])[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@dataclass
class Arrival:
    """An accepted event to handle, with when it was accepted (time.time()) and its place in the event log."""

    event: dict
    accepted_at: float | None = None
    entry_id: str | None = None


def handle_batch(ctx: WorkerContext, arrivals: list[Arrival], *, together: bool = False) -> list[dict | BaseException]:
    """`handle` for several events of the workspace on this thread, one after the other or `together`:
    what each returned or raised, so one event that cannot be handled stops none of the others.

    A busy worker's thread takes several events at a time (workers/consumer/), and a round trip per
    event and per run was a third of what an event cost it: their runs are stored in one round trip,
    then executed event by event, or together (`handle_together`), and the runs that succeed are stored
    as such together (`Ending`).
    """
    if together:
        return handle_together([(ctx, arrivals)])[0]
    outcomes, planned, starts, stored = _started_batch(ctx, arrivals)
    ending = Ending(ctx.connection) if len(arrivals) > 1 else None
    waiting: list[int] = []  # the events with succeeded runs in `ending`
    for n, ((i, (parsed, *_)), started) in enumerate(zip(planned, starts), start=1):
        if outcomes[i] is None:
            before, began = len(ending or ()), time.monotonic()
            if began - stored > ctx.run_lease / 2:  # the events before took long: renew this one's lease
                started = (started[0], [_renewed(here) for here in started[1]])
            outcomes[i] = _execute_event(ctx, parsed, arrivals[i].event, started, ending)
            if len(ending or ()) > before:
                waiting.append(i)
            if ending is not None and time.monotonic() - began > Ending.MAX_WAIT:
                # InLoox or a receiver got slow: what waits is stored now, and the rest of the batch
                # stores its runs one by one, so that no lease runs out while a run waits for the batch.
                _end(ending, waiting, outcomes)
                ending, waiting = None, []
        if ending is not None and (ending.due() or n == len(planned)):
            _end(ending, waiting, outcomes)
            waiting = []
    return outcomes


def handle_together(batches: list[tuple[WorkerContext, list[Arrival]]]) -> list[list[dict | BaseException]]:
    """`handle_batch` for the events of one or several workspaces at once on this thread
    (inloox/together.py): while one event waits for InLoox, the next goes on, instead of each waiting its
    turn; per workspace, what each of its events returned or raised.

    Every workspace's runs are stored in one round trip, and the succeeded runs are stored together as they
    end (`Ending`): when Ending.MAX_WAIT has passed since the first waiting one, and after the last event.
    A busy worker's one thread of batches takes every workspace's new events in turns
    (workers/consumer/), so that a quiet workspace's event runs beside a noisy one's instead of behind
    its batch; one round trip for all of them, not one per workspace, keeps that as cheap as one
    workspace's batch.
    """
    parts = [_Part(ctx, arrivals) for ctx, arrivals in batches]
    for part, i in _in_turns([[(part, i) for i in range(len(part.arrivals))] for part in parts]):
        part.plan(i)  # in turns too: what a trace says was handled first is
    _each_round_trip(parts, _Part.queue_start, _Part.started)

    def store_due(now: bool = False) -> None:
        _each_round_trip([part for part in parts if now or part.ending.due()], _Part.queue_end, _Part.ended)

    live = _in_turns([[(part, event) for event in part.live] for part in parts])
    calls = [functools.partial(part.execute, *event, store_due=store_due) for part, event in live]
    # One event alone (a quiet worker's usual batch) has nothing to overlap its waits with: run on this thread,
    # its InLoox request through urllib3, it costs ~200 us less than on the loop (bench/RESULTS.md section 29).
    ran = together.run(calls, every=(Ending.MAX_WAIT, store_due)) if len(calls) > 1 else [_outcome(c) for c in calls]
    for (part, (i, *_)), outcome in zip(live, ran):
        if isinstance(outcome, BaseException):  # not the event's own error (_execute_event keeps that)
            part.outcomes[i] = outcome
    store_due(now=True)
    return [part.outcomes for part in parts]


def _outcome(call) -> object:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - as together.run hands it over
        return exc


def _each_round_trip(parts: list[_Part], queue, after) -> None:
    """For each part, `queue(part, pipe)` on a pipeline of its own (True: something to send), then one round
    trip for all of them (per Redis connection: every workspace of a worker shares the process's), then
    `after(part, replies)`, its replies or the error of its round trip. Each inside its workspace."""
    by_connection: dict[int, list[tuple[_Part, object]]] = {}
    for part in parts:
        pipe = part.ctx.connection.pipeline(transaction=False)
        try:
            with workspaces.using(part.ctx.workspace):
                queued = queue(part, pipe)
        except Exception as exc:  # noqa: BLE001 - that part's error: its half-queued pipeline is not sent
            pipe.reset()
            with workspaces.using(part.ctx.workspace):
                after(part, exc)
            continue
        if queued:
            by_connection.setdefault(id(part.ctx.connection), []).append((part, pipe))
        else:
            pipe.reset()
    for gathered in by_connection.values():
        connection = gathered[0][0].ctx.connection
        for (part, pipe), replies in zip(gathered, round_trips.shared(connection).execute_each(
                [pipe for _, pipe in gathered])):
            pipe.reset()
            with workspaces.using(part.ctx.workspace):
                after(part, replies)


def _in_turns(lists: list[list]) -> list:
    """The lists' items, one of each list in turn, each list's own order kept."""
    return [item for turn in itertools.zip_longest(*lists, fillvalue=_in_turns) for item in turn
            if item is not _in_turns]


def _started_batch(ctx: WorkerContext, arrivals: list[Arrival]) -> tuple[list, list, list, float]:
    """The batch's events planned and their runs stored in one round trip: (the outcomes so far, an error
    for each event that failed, (index, plan) of the others, what `_start_each` returned for them, when)."""
    outcomes: list[dict | BaseException | None] = [None] * len(arrivals)
    planned = []
    for i, arrival in enumerate(arrivals):
        _plan_into(ctx, arrival, i, planned, outcomes)
    starts = _start_each(ctx, [p for _, p in planned], outcomes, [i for i, _ in planned])
    stored = time.monotonic()  # when the batch's leases were taken
    failpoints.hit("runs_stored")  # tests only (inert unless ENGINE_FAILPOINTS is set)
    return outcomes, planned, starts, stored


def _plan_into(ctx: WorkerContext, arrival: Arrival, i: int, planned: list, outcomes: list, *,
               wait: bool = True) -> None:
    """Plan the batch's `i`th event: (i, its plans) appended to `planned`, or its error in `outcomes` (Compiling,
    unless it may `wait` for its rules' compile: see RuleSource.current)."""
    try:
        planned.append((i, _plan(ctx, arrival, wait=wait)))
    except Exception as exc:  # noqa: BLE001 - that event's error, kept as its trace by the consumer
        outcomes[i] = exc


class _Part:
    """One workspace's part of a batch run together (`handle_together`): its events, planned and started,
    their outcomes, and their succeeded runs waiting to be stored. Its round trips are the batch's
    (`_each_round_trip`): `queue_start` and `started`, `queue_end` and `ended`.

    An event starts when the one before waits for InLoox, or is done: after a call that blocks the thread
    (a Redis round trip) that may be a while, and its runs' leases, taken with the batch, are then renewed
    as `handle_batch` renews them for an event that waited its turn."""

    def __init__(self, ctx: WorkerContext, arrivals: list[Arrival]):
        self.ctx, self.arrivals = ctx, arrivals
        self.outcomes: list[dict | BaseException | None] = [None] * len(arrivals)
        self.planned: list = []
        self.starts: list = []
        self.live: list[tuple] = []  # (index, the parsed event, what `_start_each` returned) of each to run
        self.stored = 0.0
        self.ending = Ending(ctx.connection)
        self.waiting: list[int] = []  # the events with succeeded runs in `ending`
        self.ends: tuple | None = None  # what `queue_end` took from `ending`, until `ended`

    def plan(self, i: int) -> None:
        # Not a compile of seconds on this thread, which runs other workspaces' events: the consumer hands an event
        # whose rules must be compiled so (a large bundle just activated) to a thread of its own.
        with workspaces.using(self.ctx.workspace):
            _plan_into(self.ctx, self.arrivals[i], i, self.planned, self.outcomes, wait=False)

    def queue_start(self, pipe) -> bool:
        self.starts = _queue_each(self.ctx, pipe, [p for _, p in self.planned])
        return bool(self.planned)

    def started(self, replies: list | BaseException) -> None:
        starts = _after_each(self.ctx, self.starts, replies, self.outcomes, [i for i, _ in self.planned])
        self.stored = time.monotonic()  # when the batch's leases were taken
        failpoints.hit("runs_stored")  # tests only (inert unless ENGINE_FAILPOINTS is set)
        self.live = [(i, parsed, started) for (i, (parsed, *_)), started in zip(self.planned, starts)
                     if self.outcomes[i] is None]

    def queue_end(self, pipe) -> bool:
        waiting, self.waiting = self.waiting, []
        self.ends = (waiting, [], [])  # should the queueing fail, `ended` gives these events its error
        self.ends = (waiting, *self.ending.queue(pipe))
        return bool(self.ends[1])

    def ended(self, replies: list | BaseException) -> None:
        waiting, taken, queued = self.ends or ([], [], [])
        self.ends = None
        try:
            Ending.after(taken, queued, replies)
        except Exception as exc:  # noqa: BLE001 - those events' error (as `_end`)
            for i in waiting:
                if not isinstance(self.outcomes[i], BaseException):
                    self.outcomes[i] = exc

    def execute(self, i: int, parsed: Event, started: tuple, *, store_due) -> None:
        with workspaces.using(self.ctx.workspace):
            if time.monotonic() - self.stored > self.ctx.run_lease / 2:
                started = (started[0], [_renewed(here) for here in started[1]])
            share = _Share(self.ending)
            self.outcomes[i] = _execute_event(self.ctx, parsed, self.arrivals[i].event, started, share)
            if share.added:
                self.waiting.append(i)
        store_due()


class _Share:
    """One event's part of a batch's Ending, when the batch's events run together: which of them added runs."""

    def __init__(self, ending: Ending):
        self.ending, self.added = ending, 0

    def add(self, queue, stopped, lost) -> None:
        self.added += 1
        self.ending.add(queue, stopped, lost)


def _renewed(here: tuple) -> tuple:
    """A run to run here whose lease was taken with its record a while ago: the lease renewed, or, if it
    ran out and another executor took it, given up (`_run` then asks for the lock as any executor does)."""
    run_id, record, acquired = here
    if acquired is None:
        return here
    try:
        acquired[0].reacquire()
    except redis.exceptions.LockError:
        return run_id, None, None
    except redis.RedisError:
        _abandon(acquired[0], acquired[0].local.token, run_id)
        raise
    return here


def _execute_event(ctx: WorkerContext, parsed: Event, event: dict, started: tuple, ending: Ending | None):
    """Run the event's live runs; what `handle` returns for it, or what it raised."""
    run_ids, here = started
    try:
        for run_id, record, acquired in here:
            _run(ctx, run_id, record, acquired=acquired, ending=ending)
        if parsed.source == "inloox":  # the change feed's subscribers: after the runs, before the event's ack
            deliveries.fan_out(ctx.connection, event)
    except Exception as exc:  # noqa: BLE001 - that event's error, kept as its trace by the consumer
        return exc
    return {"event_id": parsed.id, "runs": run_ids}


def _end(ending: Ending, waiting: list[int], outcomes: list) -> None:
    """Store the succeeded runs waiting in `ending`; should that fail, it is each waiting event's error
    (its runs' writes are in InLoox, the ledger knows them: handled again, nothing is written twice)."""
    try:
        ending.flush()
    except Exception as exc:  # noqa: BLE001 - those events' error
        for i in waiting:
            if not isinstance(outcomes[i], BaseException):
                outcomes[i] = exc


def _plan(ctx: WorkerContext, arrival: Arrival, *, wait: bool = True) -> tuple[Event, list[Plan], datetime, str, dict]:
    """The event's plans (pure: the rules as of its acceptance), with the explain report kept as its trace."""
    event = arrival.event
    failpoints.hit("handle_event", subject=event.get("id", ""))  # tests only (inert unless ENGINE_FAILPOINTS is set)
    parsed, now = Event.from_dict(event), datetime.now(timezone.utc)
    ruleset, version = ctx.rules.current(not_before=arrival.accepted_at, wait=wait)
    report = explain(parsed, ruleset, now=now, env=ctx.rule_env, defer_env=True)  # plans as evaluate makes them
    trace = report.to_dict() | {"ruleset_version": version, "entry": arrival.entry_id}
    if ctx.rules.trouble:  # the event met these files at their last good version, or not at all
        trace["broken_files"] = [{"file": f.name, "status": f.status} for f in ctx.rules.trouble]
    return parsed, list(report.plans), now, version, trace


def _start_each(ctx: WorkerContext, planned: list, outcomes: list, indexes: list[int]) -> list:
    """Store every planned event's runs in one round trip; per event (its run ids, the runs to run
    here), or its error in `outcomes` (a failed round trip is every event's)."""
    if not planned:
        return []
    starts: list[_Start] = []
    try:
        with ctx.connection.pipeline(transaction=False) as pipe:
            starts = _queue_each(ctx, pipe, planned)
            replies = round_trips.shared(ctx.connection).execute(pipe)  # with other threads' runs
    except Exception as exc:  # noqa: BLE001 - Redis away: no event of the batch was started
        replies = exc
    return _after_each(ctx, starts, replies, outcomes, indexes)


def _queue_each(ctx: WorkerContext, pipe, planned: list) -> list[_Start]:
    """Queue the runs of each planned event (what `_plan` returned for it) on `pipe`."""
    return [_queue_starts(ctx, pipe, plans, now, version, here=True, trace=trace)
            for _, plans, now, version, trace in planned]


def _after_each(ctx: WorkerContext, starts: list, replies: list | BaseException, outcomes: list,
                indexes: list[int]) -> list:
    """After `_queue_each`'s round trip: per event (its run ids, the runs to run here), or its error in
    `outcomes` (a failed round trip, `replies` an exception, is every event's)."""
    if isinstance(replies, BaseException):  # Redis away: no event of the batch was started
        for i in indexes:
            outcomes[i] = replies
        for start in starts:  # the round trip may have got through, its answer not
            _left_behind(start)
        return [None] * len(indexes)
    results = []
    for i, start in zip(indexes, starts):
        here: list[tuple[str, dict | None, tuple | None]] = []
        try:
            results.append(([run_id for run_id, _ in _started_all(ctx, start, replies, here=here)], here))
        except Exception as exc:  # noqa: BLE001 - that event's error
            outcomes[i] = exc
            results.append(None)
            _left_behind(start)
    return results


def _left_behind(start: _Start) -> None:
    """The event will not run its runs here (its start failed): the lease of its first, perhaps taken with its
    record, is given back once Redis answers (workers/recovery.py), not left to run out."""
    if start.lease is not None:
        recovery.abandoned(start.lease.key, start.lease.token, start.leased["id"], start.lease.ms / 1000)


def start_run(ctx: WorkerContext, event: Event, plan: Plan, now: datetime, ruleset_version: str, *,
              here: list[tuple[str, dict | None, tuple | None]] | None = None,
              forced: dict | None = None) -> tuple[str, bool]:
    """Store the run (once) and start it: queued, or appended to `here` to be run by the caller.

    Returns (run id, whether this call created it). `here` gets (run id, the record if we just
    created it else None, `_acquire`'s answer if its lock was taken with the record else None)
    and takes no run with a `concurrency` limit (RQ enforces that on jobs).
    `forced` (when and by whom) makes a run of its own even if the rule ran for the event already.
    """
    with ctx.connection.pipeline(transaction=False) as pipe:
        start = _queue_starts(ctx, pipe, [plan], now, ruleset_version, here=here is not None, forced=forced)
        replies = pipe.execute()
    return _started_all(ctx, start, replies, here=here)[0]


@dataclass
class _Start:
    """An event's runs queued on a pipeline (`_queue_starts`), and where their replies will be."""

    runs: list[dict]
    asked: list
    at: list[int]  # each run's creation reply
    leased: dict | None  # the run whose lock is taken with its record
    lease: Lease | None
    paused_at: int
    marked: str | None  # the idempotency key marked "sent" with the runs
    marked_at: int


def _queue_starts(ctx: WorkerContext, pipe, plans: list[Plan], now: datetime, ruleset_version: str, *, here: bool,
                  forced: dict | None = None, trace: dict | None = None) -> _Start:
    """Queue start_run's writes for each plan on `pipe`: guards, records, the event's `trace`, and the
    lock of the first run to be executed here (it starts at once; the others take theirs then)."""
    runs, asked = [], []
    for plan in plans:
        status, guard = _initial_status(ctx.connection, plan)
        runs.append(new_run(plan, now=now, ruleset_version=ruleset_version, forced=forced, **status))
        asked.append(guard)
    leased = next((r for r in runs if here and _executes_here(r)), None)
    lease = _lease(ctx, leased["id"]) if leased else None
    marked = _first_write(leased) if leased else None
    at = [queue_create(pipe, run, guard=guard, lease=lease if run is leased else None)
          for run, guard in zip(runs, asked)]
    paused_at = len(pipe.command_stack)
    if lease:
        pipe.get(workspaces.key(PAUSED))  # what `_acquire` reads with the lock
    marked_at = len(pipe.command_stack)
    if marked:
        ledger.mark_sent_first(pipe, marked)
    if trace is not None:
        save_trace(pipe, trace, [run["id"] for run in runs], now=now)
        for plan in plans:
            metrics.count(pipe, "rule_matches", rule=plan.rule_id)
    return _Start(runs, asked, at, leased, lease, paused_at, marked, marked_at)


def _started_all(ctx: WorkerContext, start: _Start, replies: list, *, here: list | None) -> list[tuple[str, bool]]:
    """After the round trip of `_queue_starts`: each run started (`_started`); (run id, created) each."""
    lease, leased, marked = start.lease, start.leased, start.marked
    acquired = (_lock(ctx, lease), replies[start.paused_at], marked) if lease else None
    if marked and replies[start.marked_at] and Creation.of(replies[start.at[start.runs.index(leased)]]).refused:
        # The guards refused the run: it is stored as skipped and never sent. Its mark goes as a
        # succeeded run's do (an hour), not at once: a concurrent handling of the event that was let
        # through may be sending under this very mark (same key), and a deleted mark could mean a
        # second create after a crash there. Left alone, it would stay LEDGER_MAX_AGE.
        ledger.finished(ctx.connection, [marked])
    return [_started(ctx, run, guard, Creation.of(replies[i]), here=here, acquired=acquired)
            for run, guard, i in zip(start.runs, start.asked, start.at)]


def _started(ctx: WorkerContext, run: dict, guard, creation: Creation, *, here: list | None,
             acquired: tuple | None) -> tuple[str, bool]:
    """After the run's creation script: store it as skipped if the guards refused it, and start it."""
    created = creation.created
    if creation.refused:  # nothing was stored: the run is kept as skipped, saying why
        run.update(status="skipped", reason=guards.verdict(ctx.connection, guard, creation.paused, creation.count))
        created = create_run(ctx.connection, run)
    if created:
        with ctx.connection.pipeline(transaction=False) as pipe:  # one round trip, none when counts are batched
            metrics.count(pipe, "runs", status=run["status"])
            metrics.count(pipe, "runs_started")
            pipe.execute()
        existing = run
    else:
        existing = load_run(ctx.connection, run["id"])
    # Also when the run existed: a crash may have come between storing and starting it.
    if existing and existing["status"] == "queued":
        if here is not None and not existing["plan"].get("concurrency"):
            here.append((existing["id"], existing if created else None, acquired if creation.leased else None))
        else:
            queue_run(ctx.connection, existing)
    elif existing and existing["status"] == "held":
        schedule_check(ctx.connection, existing)
    return run["id"], created


def _first_write(run: dict) -> str | None:
    """The idempotency key of the run's first step when it can be marked "sent" with the run's creation
    (workers/effects.py checkable_write: a write a later attempt checks in InLoox), else None."""
    plan = run["plan"]
    first = (plan.get("operations") or [None])[0]
    if plan.get("for_each") or first is None or first.get("condition") or not checkable_write(first):
        return None
    return first["idempotency_key"]


def _executes_here(run: dict) -> bool:
    return run["status"] == "queued" and not run["plan"].get("concurrency")


def _initial_status(connection: redis.Redis, plan: Plan) -> tuple[dict, guards.Admission | None]:
    """The run's first status if its guards let it start, and what they must ask with its creation
    (None: nothing, or they have answered already)."""
    if plan.error:
        return {"status": "failed", "reason": plan.error}, None
    # A for_each item's run is part of its query's run, which the loop guard counted once for the event: counted
    # again per item, an event's query of more than RUN_LIMIT rows paused the rule as a loop and its later items
    # were skipped for good (a skipped run is never retried), rows never written.
    asked = guards.admission(plan.rule_id, plan.event, counted=plan.item_key is None)
    if asked.too_deep:  # refused whatever Redis holds; the guards' own round trip says why (rare)
        return {"status": "skipped", "reason": guards.refusal(connection, plan.rule_id, plan.event)}, None
    if plan.mode == "shadow":
        return {"status": "shadow", "reason": "shadow mode: planned and recorded, nothing written"}, asked
    if plan.hold_seconds:
        return {"status": "held", "reason": f"waiting {plan.hold_seconds:g}s, then checking the rule again"}, asked
    return {"status": "queued"}, asked


@workspace_job
def execute_run(ctx: WorkerContext, run_id: str) -> str:
    """Run the remaining steps of a run; returns its status. Safe to call again at any point."""
    return _run(ctx, run_id)


def _run(ctx: WorkerContext, run_id: str, run: dict | None = None, *, acquired: tuple | None = None,
         ending: Ending | None = None) -> str:
    """execute_run's work, also done inside handle: under the run's lock, from its ledger.

    `run` is the record when the caller has just created it (saves reading it again); otherwise
    the record is read once the lock is ours, so it holds every step an earlier executor finished.
    `acquired` is `_acquire`'s answer when the lock was taken with the record (workers.runs.Lease).
    A run whose lock another executor holds is left to it: should that executor die, its lock runs
    out and the sweeper (workers/recovery.py) starts the run again.
    """
    lock, paused, marked = acquired or _acquire(ctx, run_id)
    if lock is None:
        return "locked"
    fresh = run is not None and not run["steps"] and not run["attempts"]  # created by our caller just now
    try:
        run = run if run is not None else load_run(ctx.connection, run_id)
        if run is None or run["status"] in TERMINAL:
            return run["status"] if run else "missing"
        if paused is not None:
            return _stop(ctx, run, "paused", paused.decode(), lock=lock)
        try:
            return _execute(ctx, run, lock, fresh=fresh, marked=marked if fresh else None, ending=ending)
        except redis.RedisError:
            raise  # Redis away: the lock is given back once it answers (`_release`), and the run started again
        except Exception as exc:  # noqa: BLE001 - a bug met by this run: see `_met_a_bug`
            if lock.local.token is None:
                raise  # its status is stored (or waits in its batch's Ending) already: only what came after failed
            return _met_a_bug(ctx, run, exc, lock=lock)
    finally:
        _release(lock, run_id)


class InternalError(Exception):
    """What a run's attempt raised that no step expects (a bug), as the run's record tells it."""

    def __init__(self, error: Exception):
        super().__init__(f"internal error {type(error).__name__}: {error} (see the workers' logs)")


def _met_a_bug(ctx: WorkerContext, run: dict, exc: Exception, *, lock) -> str:
    """The attempt raised what no step expects (a bug): it counts as a retryable failure, and the run fails once its
    rule's attempts are used up, saying what was raised. Raised on, it left the run queued for good: its event was
    delivered again and given up on, and the sweeper started the run again every half minute (an RQ job failing four
    times each). A retry writes nothing twice: the ledger's "sent" has the next attempt look in InLoox first, or ask a
    person (notify, http, invoke)."""
    log.exception("run %s (%s): its attempt raised an unexpected error", run["id"], run["rule_id"])
    return _retry(ctx, run, Plan.from_dict(run["plan"]), InternalError(exc), lock=lock)


def _acquire(ctx: WorkerContext, run_id: str):
    """(the run's lock if we got it else None, the workspace's pause reason or None): one round trip."""
    lease = _lease(ctx, run_id)
    with ctx.connection.pipeline(transaction=False) as pipe:
        set_key(pipe, lease.key, lease.token, nx=True, px=lease.ms)
        pipe.get(workspaces.key(PAUSED))
        acquired, paused = pipe.execute()
    return (_lock(ctx, lease) if acquired else None), paused, None


def _lease(ctx: WorkerContext, run_id: str) -> Lease:
    """A new token for the run's lock, not taken yet."""
    return Lease(workspaces.key(f"run-lock:{run_id}"), os.urandom(16).hex().encode(), int(ctx.run_lease * 1000))


def _lock(ctx: WorkerContext, lease: Lease):
    """redis-py's Lock for a lease we hold: its reacquire() and release() go by the lease's token."""
    lock = ctx.connection.lock(lease.key, timeout=ctx.run_lease, blocking=False)
    lock.local.token = lease.token
    return lock


def _queue_release(pipe, lock, token: bytes) -> None:
    """Queue giving the lock back on `pipe` (with the run's status: one round trip); only if still ours."""
    scripts.call(pipe, lock.lua_release, keys=[lock.name], args=[token])


def _given_back(lock) -> bytes | None:
    """The lock's token, taken from it: `_release` then has nothing left to do, as the token goes
    back with the run's status (`_stop`)."""
    token, lock.local.token = lock.local.token, None
    return token


def _release(lock, run_id: str) -> None:
    token = lock.local.token
    if token is None:
        return  # given back with the run's status (`_stop`)
    try:
        lock.release()
    except redis.exceptions.LockError:
        pass  # it expired (a run longer than its timeout): nothing of ours to release
    except redis.RedisError:
        _abandon(lock, token, run_id)
        raise


def _abandon(lock, token: bytes, run_id: str) -> None:
    """The run's attempt is over, its `lock` perhaps still held: Redis failed before it was given back. The
    worker gives it back once Redis answers (workers/recovery.py) rather than the run waiting out its lease."""
    recovery.abandoned(lock.name, token, run_id, lock.timeout)


def _execute(ctx: WorkerContext, run: dict, lock, *, fresh: bool = False, marked: str | None = None,
             ending: Ending | None = None) -> str:
    plan = Plan.from_dict(run["plan"])
    # Not only before the first step: a person's retry of a failed run from its failed step keeps its steps done
    # (a query, a skipped step) and needs a slot again all the same (limits.settle). A billed run is counted already.
    if not run.get("limit_counted") and not run.get("billed"):
        if not limits.admit(ctx.connection, ctx.workspace, ctx.outbound, run):
            return _stop(ctx, run, limits.OVER_LIMIT, limits.over_reason(ctx.workspace), pending=[limits.wait(run)],
                         lock=lock)
        run["limit_counted"] = True  # its slot under the monthly limit is taken (workers/metering/limits.py)
    if not run["steps"] and not run.get("workspace_counted"):
        wait = _workspace_wait(ctx)
        if wait:
            _retry_later(ctx, run, wait, tag=f"ws{int(datetime.now(timezone.utc).timestamp())}")
            return _stop(ctx, run, "queued", f"workspace limit of {ctx.workspace.limits.runs_per_minute} "
                                             f"runs/minute reached; starts in {wait:.0f}s", lock=lock)
        run["workspace_counted"] = True
    if plan.rate_limit and not run["steps"] and not run.get("rate_counted"):
        wait = guards.rate_wait(ctx.connection, plan.rule_id, plan.rate_limit)
        if wait:
            _retry_later(ctx, run, wait, tag=f"rate{int(datetime.now(timezone.utc).timestamp())}")
            return _stop(ctx, run, "queued", f"rate limit of {plan.rule_id} reached; starts in {wait:.0f}s", lock=lock)
        run["rate_counted"] = True  # a retry of this run is not a new run
    done = {s["index"] for s in run["steps"] if s["status"] in ("done", "skipped")}
    step_ctx = StepContext(ctx.client, ctx.connection, ctx.outbound, fresh=fresh, lock=lock,
                           settle_seconds=ctx.settle_seconds, marked=marked)
    if plan.for_each:
        return _fan_out(ctx, step_ctx, run, plan, done)
    for operation in plan.operations:
        if operation.step in done:
            continue
        if operation.step != plan.operations[0].step:
            failpoints.hit("between_steps")  # tests only (inert unless ENGINE_FAILPOINTS is set)
            lock.reacquire()  # a full lease for each step: nobody may start this run while we write
        outcome = _step(ctx, step_ctx, run, plan, operation, last=operation is plan.operations[-1])
        if outcome != "done":
            return outcome
    return _stop(ctx, run, "succeeded", "", pending=step_ctx.after, lock=lock, ending=ending)


def _fan_out(ctx: WorkerContext, step_ctx: StepContext, run: dict, plan: Plan, done: set) -> str:
    """for_each: run the query (once: its rows are kept), then start one run per item."""
    operation = query_operation(plan)
    if operation.step not in done:
        outcome = _step(ctx, step_ctx, run, plan, operation, check=functools.partial(_itemized, plan))
        if outcome != "done":
            return outcome
    rows = run["outputs"][operation.step_id]["value"]
    event, now = Event.from_dict(plan.event), datetime.now(timezone.utc)
    version = run.get("ruleset_version", "")
    run["item_runs"] = [start_run(ctx, event, item, now, version, forced=run.get("forced"))[0]
                        for item in iterate(plan, rows)]
    return _stop(ctx, run, "succeeded", f"{len(run['item_runs'])} item run(s) started", lock=step_ctx.lock)


def _itemized(plan: Plan, output: dict) -> None:
    """Refuse a for_each answer with a row that can be no item: the query's step fails, naming the row,
    rather than the run being left queued by a KeyError; a retry asks InLoox again (the rows are not kept)."""
    problem = unkeyed(output["value"], plan.for_each)
    if problem:
        raise InLooxError(f"for_each {plan.for_each['query']['entity_set']}: {problem}", method="GET")


def _step(ctx: WorkerContext, step_ctx: StepContext, run: dict, plan: Plan, operation, *, last: bool = False,
          check=None) -> str:
    """Perform one operation and record its trace; returns "done" or the run's new status.

    The last step's record waits in `step_ctx.after` for the run's final status (one round trip). `check`
    sees the output first and may refuse it (an InLooxError) as if InLoox had refused the step.
    """
    started = datetime.now(timezone.utc)
    trace = {"index": operation.step, "id": operation.step_id, "action": operation.action,
             "verb": operation.verb, "started_at": started.isoformat()}
    try:
        operation = render_deferred(plan, operation, run["outputs"], env=ctx.rule_env)
        trace["request"] = redacted(operation.params)  # a notification URL's token never lands in the record
        _note_write_ahead(ctx, plan, operation)
        output = EXECUTORS[operation.verb](step_ctx, operation.params, operation.idempotency_key)
        if check is not None:
            check(output)
        failpoints.hit("during_notify", when=operation.verb == "notify")  # tests only
    except StepSkipped as exc:
        # The step's own `if:` did not hold: nothing to do, and not a failure.
        trace.update(status="skipped", reason=exc.message, ms=_ms_since(started))
        return _record(ctx, step_ctx, run, trace, defer=last)
    except (InLooxError, NeedsAttention, OutboundRefused, TemplateError) as exc:
        return _failed_step(ctx, run, plan, trace, exc, lock=step_ctx.lock,
                            checked=checked_again(operation.verb, operation.params))
    trace.update(status="done", output=output, ms=_ms_since(started))
    run.pop("unavailable", None)  # InLoox answered: an outage's clock starts again at the next one
    step_ctx.after.append(lambda pipe: _note_write(pipe, plan, operation, output))
    run["outputs"][operation.step_id] = output
    return _record(ctx, step_ctx, run, trace, defer=last)


def _record(ctx: WorkerContext, step_ctx: StepContext, run: dict, trace: dict, *, defer: bool = False) -> str:
    """Store the step's trace, its ledger "done" and its counts: one round trip (or none yet, with `defer`)."""
    record_step(run, trace)
    if defer:
        step_ctx.after.append(lambda pipe: metrics.count_step(pipe, trace))
        return "done"
    with ctx.connection.pipeline(transaction=False) as pipe:
        for write in step_ctx.after:
            write(pipe)
        step_ctx.after.clear()
        save_run(pipe, run, now=datetime.now(timezone.utc))
        metrics.count_step(pipe, trace)
        pipe.execute()
    return "done"


def _note_write(pipe, plan: Plan, operation, output) -> None:
    """Record the chain depth on the entity we wrote, for the loop guard (see workers.guards)."""
    if operation.verb not in ("create", "update", "delete", "invoke"):
        return
    entity_set = operation.params["entity_set"]
    key = operation.params.get("key") or (output or {}).get(_key_field(entity_set))
    if key:
        guards.note_write(pipe, entity_set, str(key), int(plan.event.get("payload", {}).get("hops", 0)) + 1)


def _note_write_ahead(ctx: WorkerContext, plan: Plan, operation) -> None:
    """On a set whose changes name nobody (scanned, or a feed without a changed-by column), note the
    write before sending it: a scan reading the row between InLoox's answer and the note after it
    would take our write for a person's, and the rule would run once more. Sets whose feed names
    the changer need no note ahead (one round trip less on the busiest sets)."""
    if operation.verb not in ("update", "delete", "invoke") or not operation.params.get("key"):
        return
    watched = observation(operation.params["entity_set"])
    if isinstance(watched, ChangeFeed) and watched.changed_by:
        return
    _note_write(ctx.connection, plan, operation, None)


def _key_field(entity_set: str) -> str | None:
    meta = load_metadata().entity_set(entity_set)
    return meta.key[0] if meta and len(meta.key) == 1 else None


def _failed_step(ctx: WorkerContext, run: dict, plan: Plan, trace: dict, exc: Exception, *, lock,
                 checked: bool = False) -> str:
    """Record the failed step and move the run: paused, retrying or failed. `checked`: the step's next attempt
    asks InLoox before writing again (effects.checked_again), so a 500 is retried, as any 5xx is promised to be."""
    trace.update(status="error", error=str(exc), error_type=type(exc).__name__,
                 ms=_ms_since(datetime.fromisoformat(trace["started_at"])))
    record_step(run, trace)
    metrics.count_step(ctx.connection, trace)
    if isinstance(exc, AuthError):
        # Every run of this account would fail the same way: stop them all until a person looks.
        ctx.connection.set(workspaces.key(PAUSED), f"InLoox refused the token ({exc.status}) at {trace['started_at']}")
        return _stop(ctx, run, "paused", f"InLoox refused the token: {exc}", lock=lock)
    if isinstance(exc, OutcomeUnknown) or getattr(exc, "retryable", False) or checked and isinstance(exc, ServerError):
        return _retry(ctx, run, plan, exc, lock=lock)
    # A TemplateError names its rule and step itself, which the run's reason says already.
    detail = exc.message if isinstance(exc, TemplateError) and exc.step else exc
    return _stop(ctx, run, "failed", f"step {trace['index']} ({trace['id']}): {detail}", lock=lock)


def _retry(ctx: WorkerContext, run: dict, plan: Plan, exc: Exception, *, lock) -> str:
    """Schedule the next attempt: exponential backoff with full jitter, never before Retry-After."""
    policy = {**DEFAULT_RETRY, **(plan.retry or {})}
    if getattr(exc, "unavailable", False) and policy["attempts"] > 0:
        return _wait_for_inloox(ctx, run, policy, exc, lock=lock)
    outage_over = not isinstance(exc, Throttled) and run.pop("unavailable", None) is not None  # InLoox answered
    # Waiting for the workspace's own request budget is not a failed attempt: nothing was sent.
    run["attempts"] += 0 if isinstance(exc, Throttled) else 1
    metrics.count(ctx.connection, "retries", kind="automatic")
    if run["attempts"] >= policy["attempts"]:
        return _stop(ctx, run, "failed", f"gave up after {run['attempts']} attempts: {exc}", lock=lock)
    delay = max(_backoff(policy, run["attempts"], exc),
                UNKNOWN_OUTCOME_DELAY if isinstance(exc, OutcomeUnknown) else 0.0)
    throttled = isinstance(exc, Throttled)  # several waits share one attempt number: name them by time
    _retry_later(ctx, run, delay, tag=f"t{time.time_ns()}" if throttled else f"a{run['attempts']}")
    # No longer waiting for InLoox to answer: not started early when it answers another question (Retry-After).
    pending = [functools.partial(recovery.not_waiting, run_id=run["id"])] if outage_over else []
    return _stop(ctx, run, "retrying", f"attempt {run['attempts']} failed ({exc}); next in {delay:.1f}s",
                 pending=pending, lock=lock)


def _wait_for_inloox(ctx: WorkerContext, run: dict, policy: dict, exc: InLooxError, *, lock) -> str:
    """InLoox is down: try again later without spending an attempt, until the workspace's outage time
    (INLOOX_OUTAGE_HOURS) has passed since this outage's first failure (`run["unavailable"]`, dropped once
    InLoox answers). The request is not at fault: like Temporal's retries and Zapier's replays, which keep
    trying through an outage, the run waits (backoff up to MAX_BACKOFF) rather than fail within a minute."""
    now = time.time()
    outage = run.setdefault("unavailable", {"since": now, "tries": 0})
    outage["tries"] += 1
    metrics.count(ctx.connection, "retries", kind="unavailable")
    if now - outage["since"] >= ctx.outage_seconds:
        return _stop(ctx, run, "failed", f"InLoox unavailable for {_duration(now - outage['since'])}: {exc}",
                     lock=lock)
    delay = _backoff(policy, outage["tries"], exc, most=MAX_OUTAGE_BACKOFF)  # a 503, too, may say when to come back
    _retry_later(ctx, run, delay, tag=f"u{time.time_ns()}")
    since = datetime.fromtimestamp(outage["since"], timezone.utc).strftime("%H:%M:%S UTC")
    # Also started as soon as InLoox answers again (workers/recovery.py), not at the end of a backoff of minutes.
    waits = functools.partial(recovery.wait_for_inloox, run_id=run["id"], resume_at=run["resume_at"])
    return _stop(ctx, run, "retrying", f"InLoox unavailable since {since} ({exc}); next try in {delay:.1f}s "
                                       "(no attempt counted)", pending=[waits], lock=lock)


def _backoff(policy: dict, tries: int, exc: Exception, *, most: float = MAX_BACKOFF) -> float:
    """Seconds before the next try: full jitter up to the rule's backoff doubled `tries` times (at most
    `most`), and never before what InLoox (or our own request budget) said to wait, up to MAX_RETRY_AFTER."""
    jitter = random.uniform(0, min(most, float(policy["backoff"]) * 2 ** min(tries, 30)))
    return max(jitter, min(getattr(exc, "retry_after", None) or 0.0, MAX_RETRY_AFTER))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def _retry_later(ctx: WorkerContext, run: dict, delay: float, *, tag: str) -> None:
    run["resume_at"] = time.time() + delay  # the sweeper's deadline counts from here
    # Stored with the run's new status (`_stop`): a sweeper that finds the run past its deadline asks this job
    # whether it still waits its turn (workers/recovery.py), rather than queue another beside it.
    run["job"] = f"{run['id']}-{tag}"
    queue_run(ctx.connection, run, job_id=run["job"], delay=delay)


def _stop(ctx: WorkerContext, run: dict, status: str, reason: str, *, pending=(), lock=None,
          ending: Ending | None = None) -> str:
    """Give the run its new status (with `pending` writes of its last step) and give its `lock`
    back: one round trip (shared with other threads' at the same moment, workers/round_trips), or none
    yet with `ending` (a succeeded run, stored with its batch's others).
    The lock goes after the status, so whoever takes it next reads it."""
    run["status"], run["reason"] = status, reason
    token = _given_back(lock) if lock is not None else None

    def queue(pipe) -> int | None:
        for write in pending:
            write(pipe)
        if status in ("succeeded", "skipped", "shadow"):
            ledger.finished(pipe, [op["idempotency_key"] for op in run["plan"].get("operations", ())])
        counts, slot = _bill(ctx, pipe, run, finished=status in TERMINAL or status == "paused")
        # The status, the `billed` mark, the billable counts and the slot under the monthly limit given back, in one
        # script: all or nothing (usage.bill, limits.settle).
        billed = save_run(pipe, run, now=datetime.now(timezone.utc), counts=counts, slot=slot)
        metrics.count(pipe, "runs", status=status)
        if token is not None:
            _queue_release(pipe, lock, token)
        return billed

    def stopped(replies: list, billed: int | None) -> None:
        if billed is not None:
            limits.alert_runs(ctx.connection, ctx.workspace, ctx.outbound, used=replies[billed])
        log.info("run %s (%s): %s %s", run["id"], run["rule_id"], status, reason)
        report_to_chat(ctx.connection, run)  # a chat command's result goes back to its chat

    def lost() -> None:  # the round trip that gave the lock back failed
        if token is not None:
            _abandon(lock, token, run["id"])

    if ending is not None and status == "succeeded":
        ending.add(queue, stopped, lost)
        return status
    with ctx.connection.pipeline(transaction=False) as pipe:
        billed = queue(pipe)
        try:
            replies = round_trips.shared(ctx.connection).execute(pipe)  # with other threads' runs' ends
        except Exception:
            lost()
            raise
    stopped(replies, billed)
    return status


class Ending:
    """The succeeded runs of a batch of events (one thread's, workers/consumer/), stored together.

    A worker busy with its own CPU handles several events per thread (workers/consumer/in_flight.py);
    a round trip per run to store its status, its last step and give its lock back is then a fifth
    of what an event costs Redis and the worker (bench/RESULTS.md section 18). Each succeeded run's
    writes wait here, its lock still held (its token travels with them), until `flush`: one round
    trip for the batch. Nothing is lost by waiting: a worker that dies before the flush leaves each
    run as one that dies after its write and before its status (its ledger mark says "sent", the
    next attempt looks for the write in InLoox), and its event unacknowledged. Only succeeded runs
    wait; any other status is stored at once, as it may queue more work. A run waits at most
    MAX_WAIT: the loop guard's note of a write (workers/guards.py) waits with it.
    """

    MAX_WAIT = 0.25  # seconds

    def __init__(self, connection: redis.Redis, clock=time.monotonic):
        self.connection = connection
        self._clock = clock
        self._waiting: list[tuple] = []
        self._since = 0.0

    def add(self, queue, stopped, lost) -> None:
        """`queue(pipe)` queues the run's writes, returning what `stopped(replies, it)` needs after; `lost()`
        if their round trip fails."""
        if not self._waiting:
            self._since = self._clock()
        self._waiting.append((queue, stopped, lost))

    def __len__(self) -> int:
        return len(self._waiting)

    def due(self) -> bool:
        return bool(self._waiting) and self._clock() - self._since >= self.MAX_WAIT

    def flush(self) -> None:
        """Store every waiting run: one round trip. Raises what Redis raised (then the runs' locks are
        given back once Redis answers, workers/recovery.py, and their events are handled again)."""
        with self.connection.pipeline(transaction=False) as pipe:
            taken, queued = self.queue(pipe)
            if not taken:
                return
            try:
                replies = round_trips.shared(self.connection).execute(pipe)
            except Exception as exc:  # noqa: BLE001 - raised by `after`
                replies = exc
        self.after(taken, queued, replies)

    def queue(self, pipe) -> tuple[list, list]:
        """Take every waiting run and queue its writes on `pipe`: (the runs taken, what each queued), for
        `after` once the round trip is back (a batch run together sends several workspaces' in one)."""
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return [], []
        failpoints.hit("runs_ending")  # tests only (inert unless ENGINE_FAILPOINTS is set)
        return waiting, [queue(pipe) for queue, *_ in waiting]

    @staticmethod
    def after(taken: list, queued: list, replies: list | BaseException) -> None:
        """Each taken run's own after-work; raises the first failure, once every run had its turn. `replies`
        the round trip's error: raised, each run's lock kept for giving back (`lost`)."""
        if isinstance(replies, BaseException):
            for _, _, lost in taken:
                lost()
            raise replies
        failed = None
        for (_, stopped, _), it in zip(taken, queued):
            try:  # each run's own after-work (its log line, its chat answer), whatever another's did
                stopped(replies, it)
            except Exception as exc:  # noqa: BLE001 - raised below, once every run had its turn
                failed = failed or exc
        if failed is not None:
            raise failed


def _bill(ctx: WorkerContext, pipe, run: dict, *, finished: bool) -> tuple[list | None, str | None]:
    """Count the run once as billable when it wrote or notified (marking it `billed`), and give back its slot
    under the monthly limit: (its billable counts, or None; the sorted set its slot goes back to, or None), for
    `save_run` to write with its record, in one script."""
    counts = usage.bill(ctx.workspace.name, run, day=usage.today())
    if counts is not None:
        metrics.count(pipe, "billable_runs", rule=run["rule_id"])
    return counts, limits.settle(run, finished=finished) if run.get("limit_counted") else None


def _workspace_wait(ctx: WorkerContext) -> float:
    """0 when the workspace may start one more run now (counting it), else seconds until it may."""
    limit = ctx.workspace.limits.runs_per_minute
    if not limit:
        return 0.0
    return guards.rate_wait(ctx.connection, "(workspace)", {**WORKSPACE_RUNS_WINDOW, "max": limit})


def _ms_since(started: datetime) -> int:
    return int((datetime.now(timezone.utc) - started).total_seconds() * 1000)


class RetryRefused(Exception):
    """The run cannot be retried now (it is not failed or paused); the message says why."""


RETRY_LEASE = 10  # seconds a retry holds the run's lock while it checks and stores it (a few round trips)


def retry_run(connection: redis.Redis, run_id: str, *, from_start: bool = False) -> dict:
    """Queue a failed or paused run again, from its failed step (default) or from the start.

    Writes that are known to have landed are never repeated, even from the start: the step
    ledger returns their first result. A step that stopped because its outcome was unknown
    and uncheckable is sent again: retrying it is the person's decision.
    """
    # The run's lock (an executor's) while the run is checked and stored: two retries at once both read it failed,
    # both answered 202 and queued its job twice, and the later one stored the record it had read over what the
    # first one's executor had done since. The job is queued once the lock is given back, or its executor would
    # find the run locked and leave it.
    lock = connection.lock(workspaces.key(f"run-lock:{run_id}"), timeout=RETRY_LEASE, blocking=False)
    if not lock.acquire():
        raise RetryRefused(f"run {run_id} is being worked on (by an executor or another retry); only failed or "
                           "paused runs, or runs that are past their deadline with nobody working on them, can be "
                           "retried")
    try:
        run = _retried(connection, run_id, from_start=from_start)
    finally:
        _release(lock, run_id)
    metrics.count(connection, "retries", kind="manual")
    queue_run(connection, run, job_id=run["job"])
    return run


def _retried(connection: redis.Redis, run_id: str, *, from_start: bool) -> dict:
    """The run stored as queued again (under its lock: nobody else works on it now), or RetryRefused."""
    run = load_run(connection, run_id)
    if run is None:
        raise RetryRefused(f"no run {run_id}")
    if run["status"] not in ("failed", "paused") and not _stuck(connection, run):
        raise RetryRefused(f"run {run_id} is {run['status']}; only failed or paused runs, or runs that are "
                           "past their deadline with nobody working on them, can be retried")
    plan = Plan.from_dict(run["plan"])
    for step in run["steps"]:
        if step.get("error_type") == "NeedsAttention":
            ledger.clear(connection, plan.operations[step["index"]].idempotency_key)
    run["steps"] = [] if from_start else [s for s in run["steps"] if s["status"] in ("done", "skipped")]
    run["outputs"] = {} if from_start else run["outputs"]
    run.pop("unavailable", None)
    run.update(status="queued", attempts=0, reason="retried " + ("from the start" if from_start else "from the failed step"))
    run["retries"] = run.get("retries", 0) + 1
    run["job"] = f"{run_id}-r{run['retries']}"  # stored with the run: the sweeper asks it (`_retry_later`)
    save_run(connection, run, now=datetime.now(timezone.utc))
    return run


def _stuck(connection: redis.Redis, run: dict) -> bool:
    """True for a waiting run past its deadline (see workers.recovery); the caller holds its lock, so nobody works on
    it."""
    if run["status"] not in ("queued", "retrying", "held"):
        return False
    due = connection.zscore(workspaces.key(ACTIVE), run["id"])
    return due is None or due <= time.time()


def resume_account(connection: redis.Redis) -> list[str]:
    """Lift the pause set by a refused token and queue the paused runs again; returns their ids."""
    connection.delete(workspaces.key(PAUSED))
    paused = [r["id"] for r in list_runs(connection, status="paused", limit=10_000)]
    for run_id in paused:
        retry_run(connection, run_id)
    return paused
