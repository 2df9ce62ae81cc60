"""Recovery: no run waits for a process that is gone.

Every run that is neither finished nor waiting for a person has a deadline in the workspace's
`runs:active` sorted set, written with the run record by workers/runs.py: when it should have
started, retried or ended its hold, plus a grace. Each worker sweeps the set every few seconds (workers/consumer/). An overdue run whose lock nobody holds lost its executor (a killed
worker, an RQ job that was lost with its worker or with Redis): it gets a fresh RQ job, or a fresh
hold check. Run locks, the step ledger and run ids derived from (event, rule) make a second
executor harmless, so the sweeper may be early, never wrong. See docs/execution.md.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

import redis

from workers import deliveries, workspaces
from workers.enqueue import queue_run
from workers.holds import schedule_check
from workers.runs import ACTIVE, GRACE, is_active, load_run, load_trace, save_trace

log = logging.getLogger(__name__)

SWEEP_BATCH = 100
SWEEP_LEASE = 4  # seconds: one worker sweeps a workspace at a time


def overdue(connection: redis.Redis, *, now: float, limit: int = SWEEP_BATCH) -> list[str]:
    """Ids of the current workspace's runs whose deadline has passed."""
    ids = connection.zrangebyscore(workspaces.key(ACTIVE), "-inf", now, start=0, num=limit)
    return [i.decode() for i in ids]


def sweep(connection: redis.Redis, workspace: workspaces.Workspace, *, now: float | None = None) -> list[str]:
    """Give every overdue run of `workspace` without a live executor a new start; returns their ids."""
    with workspaces.using(workspace):
        if not connection.set(workspaces.key("runs:sweeping"), 1, nx=True, ex=SWEEP_LEASE):
            return []  # another worker is sweeping right now
        now = time.time() if now is None else now
        restarted = []
        for run_id in overdue(connection, now=now):
            if _restart(connection, run_id, now):
                restarted.append(run_id)
        deliveries.sweep(connection, now=now)  # change-feed deliveries whose job was lost
        return restarted


def _restart(connection: redis.Redis, run_id: str, now: float) -> bool:
    active = workspaces.key(ACTIVE)
    lock_ttl = connection.pttl(workspaces.key(f"run-lock:{run_id}"))
    if lock_ttl > 0:  # an executor holds it: look again when its lease would have run out
        connection.zadd(active, {run_id: now + lock_ttl / 1000 + 1})
        return False
    run = load_run(connection, run_id)
    if run is None or not is_active(run):
        connection.zrem(active, run_id)
        return False
    connection.zadd(active, {run_id: now + GRACE})
    if run["status"] == "held":
        schedule_check(connection, run)
    else:
        queue_run(connection, run, job_id=f"{run_id}-sweep{int(now)}")
    log.warning("run %s (%s) was %s past its deadline with no executor: started again",
                run_id, run["rule_id"], run["status"])
    return True


def record_unhandled(connection: redis.Redis, workspace: workspaces.Workspace, event: dict, reason: str, *,
                     entry_id: str | None = None, keep_error: bool = False) -> None:
    """Keep, as the event's trace, that it could not be handled (shown by `flask events show` and the dashboard).

    `keep_error`: the error an earlier failed handling kept in the trace is kept in the new reason.
    """
    with workspaces.using(workspace):
        if keep_error:
            earlier = load_trace(connection, event["id"]) or {}
            if earlier.get("error"):
                reason = f"{reason}; last error: {earlier['error']}"
        report = {"event": event, "not_candidates": 0, "skipped": [], "rules": [], "error": reason, "entry": entry_id}
        with connection.pipeline(transaction=False) as pipe:
            save_trace(pipe, report, [], now=datetime.now(timezone.utc))
            pipe.execute()
