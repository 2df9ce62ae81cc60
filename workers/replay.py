"""Replay: match logged events against the current rules again and start the runs they make now.

A rule runs at most once per event: a run's id is a hash of the event and the rule (workers/runs.py),
so replaying an event the rule already ran for finds that run and starts nothing, however often it
is replayed. `force` makes runs of their own (recorded as forced) for a person who wants the
writes again. Runs start as RQ jobs (the workers execute them), so replaying from the web or the
CLI never writes to InLoox from that process.

What becomes of each event replayed (its `outcome`; the counts add up to the events replayed):
    started         a rule matches it now and had not run for it: a run started (dry: would start)
    already ran     every rule that matches it now ran for it already: nothing starts
    no rule matches no rule (or not the rule asked for) matches it now
    waiting         no worker has finished handling it yet: the worker will (left alone)
    trace gone      its trace is no longer kept, so the runs it made may be gone too (the log keeps
                    more events than the traces); a rule could run twice. Only with `force` (left alone).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from engine import Event, explain
from workers import eventlog
from workers.event_history import Handled
from workers.jobs import start_run
from workers.runs import decode_record, new_run, run_id, save_trace
from workers.worker_context import WorkerContext
from workers.workspaces import key

MAX_EVENTS = 10_000  # events one replay may take; more must be split by time
STARTED, ALREADY, NO_MATCH, WAITING, TRACE_GONE = "started", "already ran", "no rule matches", "waiting", "trace gone"
OUTCOMES = (STARTED, ALREADY, NO_MATCH, WAITING, TRACE_GONE)


class ReplayRefused(ValueError):
    """The replay asked for nothing it can do (no events, too many, an unknown rule)."""


@dataclass
class Replayed:
    """What a replay did (or, dry, would do) with one event."""

    event_id: str
    entry: str
    started: list[str] = field(default_factory=list)  # runs created now (dry run: that would be)
    already: list[str] = field(default_factory=list)  # runs of the same event and rule that exist: not again
    skipped: str = ""  # why the event was left alone
    left_alone: str = ""  # WAITING or TRACE_GONE when it was

    @property
    def outcome(self) -> str:
        """What became of the event: one of OUTCOMES."""
        if self.left_alone:
            return self.left_alone
        return STARTED if self.started else ALREADY if self.already else NO_MATCH

    def to_dict(self) -> dict:
        return {"event_id": self.event_id, "entry": self.entry, "outcome": self.outcome, "started": self.started,
                "already": self.already, "skipped": self.skipped}


def outcome_counts(done: list[Replayed]) -> dict[str, int]:
    """Events per outcome, every outcome named (their sum is the number of events)."""
    return {outcome: sum(d.outcome == outcome for d in done) for outcome in OUTCOMES}


def replay(ctx: WorkerContext, entries: list[eventlog.Entry], *, rule: str | None = None, force: bool = False,
           dry_run: bool = False, by: str = "") -> list[Replayed]:
    """Replay `entries` (oldest first) against the current rules; only `rule` if given."""
    if len(entries) > MAX_EVENTS:
        raise ReplayRefused(f"{len(entries)} events; a replay takes at most {MAX_EVENTS} (narrow --since)")
    ruleset, version = ctx.rules.current()
    if rule is not None and ruleset.get(rule) is None:
        raise ReplayRefused(f"no rule {rule!r} is active")
    handled = Handled(ctx.connection, eventlog.stream_key())
    now = datetime.now(timezone.utc)
    forced = {"at": now.isoformat(), "by": by} if force else None
    return [_replay_one(ctx, entry, ruleset, version, handled(entry.id), rule, forced, dry_run, now)
            for entry in entries]


def _replay_one(ctx: WorkerContext, entry: eventlog.Entry, ruleset, version: str, handled: bool,
                rule: str | None, forced: dict | None, dry_run: bool, now: datetime) -> Replayed:
    event_id = entry.event["id"]
    done = Replayed(event_id, entry.id)
    if not handled:
        done.skipped, done.left_alone = "waiting: a worker has not finished handling it yet", WAITING
        return done
    raw = ctx.connection.get(key(f"trace:{event_id}"))
    trace = decode_record(raw) if raw is not None else None
    if trace is None and forced is None:
        done.skipped = "its trace is no longer kept, so the runs it made may be gone too; --force runs it anyway"
        done.left_alone = TRACE_GONE
        return done
    parsed = Event.from_dict(entry.event)
    report = explain(parsed, ruleset, now=now, env=ctx.rule_env, defer_env=True)
    plans = [p for p in report.plans if rule is None or p.rule_id == rule]
    # The runs the trace names ran for the event even when their records are gone: finished runs are kept by count,
    # traces by event, so a run is trimmed while its event's trace is kept (two rules per event, a for_each), and its
    # ledger entries went an hour after it succeeded. Started again, its writes were sent a second time.
    ran = set((trace or {}).get("runs") or ()) if forced is None else set()
    for plan in plans:
        if run_id(plan) in ran:
            done.already.append(run_id(plan))
            continue
        if dry_run:
            run = new_run(plan, now=now, forced=forced)
            exists = forced is None and ctx.connection.exists(key(f"run:{run['id']}"))
            (done.already if exists else done.started).append(run["id"])
            continue
        started, created = start_run(ctx, parsed, plan, now, version, forced=forced)
        (done.started if created else done.already).append(started)
    if not dry_run and done.started:
        _note_on_trace(ctx, trace, report.to_dict() | {"ruleset_version": version, "entry": entry.id},
                       done, forced, now)
    return done


def _note_on_trace(ctx: WorkerContext, trace: dict | None, report: dict, done: Replayed, forced: dict | None,
                   now: datetime) -> None:
    """Add the new runs to the event's trace, with a note of the replay (the event page lists both)."""
    base = trace if trace is not None else report
    runs = list(dict.fromkeys([*(base.get("runs") or ()), *done.started]))
    note = {"at": now.isoformat(), "runs": done.started, "forced": forced is not None}
    with ctx.connection.pipeline(transaction=False) as pipe:
        save_trace(pipe, {**base, "replays": [*base.get("replays", ()), note]}, runs, now=now)
        pipe.execute()
