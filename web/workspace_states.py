"""What the operator's dashboard page shows of each workspace of the registry: state, rules, last event, lag (and what
fails of its polling), queue.

A workspace whose secrets this process cannot unseal still has its Redis keys: its last event,
poll lag and queue are read all the same (only its rules need the workspace itself).
"""
from __future__ import annotations

from datetime import datetime

import redis
from rq import Queue

from web.resources import get_context
from workers import eventlog, registry, workspaces
from workers.poller.status import WHOLE, slowest, troubles

RUNNING, PAUSED, UNREADABLE = "running", "paused", "unreadable secret"


def workspace_states(connection: redis.Redis, view: registry.View, *, now: datetime) -> list[dict]:
    """One row per workspace of the registry, by name (a workspace deleted while we read is left out)."""
    served, unreadable = view.workspaces(), view.unreadable()
    rows = (_row(connection, name, served.get(name), unreadable.get(name, ""), now=now)
            for name in registry.names(connection))
    return [row for row in rows if row is not None]


def _row(connection: redis.Redis, name: str, served: workspaces.Workspace | None, unreadable: str, *,
         now: datetime) -> dict | None:
    # The record, not the view: the view may be a second behind a pause this very request made.
    record = registry.get(connection, name)
    if record is None:
        return None
    # A stand-in carries only the name, enough to reach the keys of a workspace we cannot unseal.
    workspace = served or workspaces.Workspace(name, inloox_url="", inloox_api_key="")
    with workspaces.using(workspace):
        rules_version = get_context().rules.version() if served else ""  # not every workspace's rules compiled
        last_event = _last_event(connection)
        lag, lagging = slowest(connection, now=now)
        failing = troubles(connection)
    state = UNREADABLE if unreadable else PAUSED if record["paused"] else RUNNING
    return {"name": name, "state": state, "why": unreadable, "paused": bool(record["paused"]),
            "rules_version": rules_version, "last_event": last_event, "poll_lag_seconds": lag,
            "poll_lag_set": lagging,  # whose lag it is, as `flask workspaces list` says (workers/poller/status.py)
            "poll_failing": _failing(failing),
            "jobs_queued": Queue(workspace.queue, connection=connection).count,
            "events_waiting": eventlog.backlog(connection, workspace=name)}


def _last_event(connection: redis.Redis) -> float | None:
    """Unix seconds of the newest entry of the workspace's event log (its id's millisecond part), or None."""
    newest = connection.xrevrange(eventlog.stream_key(), count=1)
    if not newest:
        return None
    entry_id = newest[0][0].decode() if isinstance(newest[0][0], bytes) else newest[0][0]
    return int(entry_id.split("-")[0]) / 1000


def _failing(failing: dict[str, dict]) -> str:
    """What fails of the workspace's polling, in a line ("" when nothing does): all of it, or which sets and why."""
    if WHOLE in failing:
        return f"no poll works: {failing[WHOLE]['error']}"
    return "; ".join(f"{name}: {trouble['error']}" for name, trouble in sorted(failing.items()))
