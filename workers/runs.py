"""Runs: one matched rule for one event, with the trace of every step, kept in Redis.

A run's id is derived from (event id, rule id, rule version), so handling the same event twice
finds the run it already made instead of making a second one. Keys are the workspace's own
(`workspaces.key`): a run of one workspace cannot be read through another.

    run:<id>            JSON of the run (status, plan, steps with requests, responses and timings)
    runs                sorted set of run ids by creation time (newest last), trimmed to RETENTION
    runs:rule:<rule>    the same, per rule
    trace:<event id>    the event's explain report; `traces` lists them
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

import redis

from engine import Plan
from workers.workspaces import key

RETENTION = 10_000  # runs kept for listing; older ones expire with RUN_TTL
RUN_TTL = 30 * 24 * 3600
TERMINAL = frozenset({"succeeded", "failed", "skipped", "shadow"})


def run_id(plan: Plan) -> str:
    """The run id of a plan: the same event, rule and rule version (and for_each item) give the same id."""
    text = f"{plan.event_id}\n{plan.rule_id}\n{plan.rule_version}"
    text += f"\n{plan.item_key}" if plan.item_key is not None else ""
    return "run_" + hashlib.sha256(text.encode()).hexdigest()[:24]


def new_run(plan: Plan, *, now: datetime, status: str = "queued", reason: str = "", ruleset_version: str = "") -> dict:
    """A run record for `plan`, before any step ran; `ruleset_version` names the rule set it came from."""
    return {
        "id": run_id(plan), "rule_id": plan.rule_id, "rule_version": plan.rule_version,
        "ruleset_version": ruleset_version,
        "event_id": plan.event_id, "source": plan.event.get("source"), "mode": plan.mode,
        "status": status, "reason": reason, "created_at": now.isoformat(), "updated_at": now.isoformat(),
        "plan": plan.to_dict(), "steps": [], "outputs": {}, "attempts": 0,
    }


def create_run(connection: redis.Redis, run: dict) -> bool:
    """Store a new run; False (and nothing written) when a run with its id exists already."""
    if not connection.set(_key(run["id"]), json.dumps(run), nx=True, ex=RUN_TTL):
        return False
    score = datetime.fromisoformat(run["created_at"]).timestamp()
    with connection.pipeline() as pipe:
        for index in (key("runs"), key(f"runs:rule:{run['rule_id']}")):
            pipe.zadd(index, {run["id"]: score})
            pipe.zremrangebyrank(index, 0, -RETENTION - 1)
        pipe.execute()
    return True


def load_run(connection: redis.Redis, run_id: str) -> dict | None:
    """The run, or None when there is none (never made, or expired)."""
    raw = connection.get(_key(run_id))
    return json.loads(raw) if raw is not None else None


def save_run(connection: redis.Redis, run: dict, *, now: datetime) -> None:
    """Write the run back after a change."""
    run["updated_at"] = now.isoformat()
    connection.set(_key(run["id"]), json.dumps(run, default=str), ex=RUN_TTL)


def list_runs(connection: redis.Redis, *, rule: str | None = None, status: str | None = None,
              limit: int = 50) -> list[dict]:
    """The newest runs first, optionally of one rule and/or in one status."""
    index = key(f"runs:rule:{rule}" if rule else "runs")
    runs = []
    for batch_start in range(0, RETENTION, 200):
        ids = connection.zrevrange(index, batch_start, batch_start + 199)
        if not ids:
            break
        for raw in connection.mget([_key(i.decode()) for i in ids]):
            run = json.loads(raw) if raw is not None else None
            if run and (status is None or run["status"] == status):
                runs.append(run)
                if len(runs) >= limit:
                    return runs
    return runs


def record_step(run: dict, step: dict[str, Any]) -> None:
    """Add or replace the trace of one step (by its index)."""
    run["steps"] = [s for s in run["steps"] if s["index"] != step["index"]] + [step]
    run["steps"].sort(key=lambda s: s["index"])


def _key(run_id: str) -> str:
    return key(f"run:{run_id}")


def save_trace(pipe, report: dict, run_ids: list[str], *, now: datetime) -> None:
    """Keep an event's explain report (matched rules, near misses and why) with the runs it made.

    `pipe` is a pipeline the caller executes (with its other bookkeeping: one round trip).
    """
    event_id = report["event"]["id"]
    trace = {**report, "runs": run_ids, "handled_at": now.isoformat()}
    pipe.set(key(f"trace:{event_id}"), json.dumps(trace, default=str), ex=RUN_TTL)
    pipe.zadd(key("traces"), {event_id: now.timestamp()})
    pipe.zremrangebyrank(key("traces"), 0, -RETENTION - 1)


def load_trace(connection: redis.Redis, event_id: str) -> dict | None:
    """The trace of an event, or None."""
    raw = connection.get(key(f"trace:{event_id}"))
    return json.loads(raw) if raw is not None else None
