"""Durable `for:` holds: a matched rule waits, then runs only if it still matches InLoox as it is.

The run is stored as "held" and its check is scheduled with RQ's scheduler at created_at + hold,
so it lives in Redis and survives restarts of every process. When due, the entity is read again,
the rule is matched against its current state (its `changes` against the current values, its
`if:` against the current entity), and it runs with a fresh plan or is skipped saying why.
"""
from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import redis

from engine import Event, Plan, TemplateError, plan_rule
from engine.match import match_rule
from inloox import InLooxError, NotFound
from workers import workspaces
from workers.enqueue import queue, queue_run, workspace_job_id
from workers.runs import load_run, plan_record, save_run
from workers.worker_context import workspace_job

RECHECK_AFTER_ERROR = 30.0  # seconds; InLoox could not be read when the hold ended


def schedule_check(connection: redis.Redis, run: dict) -> None:
    """Schedule the end of a held run's hold (again, harmlessly, if it is already scheduled), or its check again
    once InLoox could not be read (`resume_at`): not sooner, whoever schedules it (the sweeper, an event handled
    again)."""
    due = datetime.fromisoformat(run["created_at"]) + timedelta(seconds=run["plan"]["hold_seconds"])
    if run.get("resume_at"):
        due = max(due, datetime.fromtimestamp(run["resume_at"], timezone.utc))
    queue(connection).enqueue_at(due, check_hold, run["id"], workspaces.current().name,
                                 job_id=workspace_job_id(check_job_name(run)))


def check_job_name(run: dict) -> str:
    """The name of a held run's check job (`workspace_job_id` makes its id), the same whoever schedules it (the
    sweeper looks it up). A check scheduled again names its time: under the name of the check that schedules it,
    RQ would mark it finished as that check ends (and let it expire with that check's result)."""
    return f"{run['id']}-hold" + (f"{run['resume_at']:.0f}" if run.get("resume_at") else "")


@workspace_job
def check_hold(ctx, run_id: str) -> str:
    """The hold is over: run the rule if it still matches, skip it otherwise; returns the status.

    Under the run's lock (the one its executors take): two checks of one run at once (scheduled again by the
    sweeper or by its event handled again while one was reading InLoox) each read "held" and queued the run with
    a plan of its own; with the rules changed between them, the later plan ran after the first had finished, and
    wrote what the first had not (tests/integration/test_holds.py). A check that finds the lock taken leaves the
    run to whoever has it; should that one die, the sweeper schedules the check again once the lock ran out.
    """
    lock = ctx.connection.lock(workspaces.key(f"run-lock:{run_id}"), timeout=ctx.run_lease, blocking=False)
    if not lock.acquire():
        return "locked"
    try:
        run, queued = _check(ctx, run_id)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass  # it ran out (a check longer than a lease): nothing of ours to give back
    if queued:
        queue_run(ctx.connection, run)  # after the lock is given back: the executor takes it
    return run["status"] if run else "missing"


def _check(ctx, run_id: str) -> tuple[dict | None, bool]:
    """check_hold's work under the run's lock: (the run as it stands now, whether it is to be queued)."""
    run = load_run(ctx.connection, run_id)
    if run is None or run["status"] != "held":
        return run, False
    plan = Plan.from_dict(run["plan"])
    rule = ctx.ruleset().get(plan.rule_id)
    if rule is None:
        return _finish(ctx, run, "skipped", "the rule was removed during the hold"), False
    try:
        event = _current(ctx.client, Event.from_dict(plan.event))
    except NotFound:
        return _finish(ctx, run, "skipped", "the entity was deleted during the hold"), False
    except InLooxError as exc:
        # The run's deadline counts from the next check (workers/runs.py deadline), not from now: else it fell at
        # the moment that check was due, and the sweeper took the run for lost whenever the check came a little late.
        run["resume_at"] = time.time() + RECHECK_AFTER_ERROR
        schedule_check(ctx.connection, run)
        return _finish(ctx, run, "held", f"could not re-read InLoox ({exc}); checking again soon"), False
    now = datetime.now(timezone.utc)
    match = match_rule(event, rule, now=now, env=ctx.rule_env)
    if match.reason is not None:
        return _finish(ctx, run, "skipped", f"no longer matches after the hold: {match.reason}"), False
    try:
        fresh = plan_rule(event, rule, now=now, env=ctx.rule_env, defer_env=True)
    except TemplateError as exc:
        return _finish(ctx, run, "failed", str(exc)), False
    # A forced run keeps writing under keys of its own: under the first run's, its create adopted that run's entity.
    run["plan"] = plan_record(fresh, run.get("forced"))
    return _finish(ctx, run, "queued", "the hold is over and the rule still matches"), True


def _current(client, event: Event) -> Event:
    """The event as if it happened now: the entity as InLoox has it, each change ending at today's value."""
    if not event.entity_set or not event.key:
        return event
    entity = client.get(event.entity_set, event.key)
    changes = {f: (before, entity.get(f, after)) for f, (before, after) in event.changes.items()}
    return replace(event, entity=entity, changes=changes)


def _finish(ctx, run: dict, status: str, reason: str) -> dict:
    run["status"], run["reason"] = status, reason
    save_run(ctx.connection, run, now=datetime.now(timezone.utc))
    return run
