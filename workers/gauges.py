"""The gauges the dashboard charts over time, read now and kept in their series (workers/series.py).

A worker's event consumer calls `sample` for each of its workspaces every SERIES_SAMPLE_SECONDS
(a minute by default); a short-lived key makes one worker of many do it each time.

Poll lag is sampled here rather than written by the poller when a poll completes: lag grows
precisely when polls stop completing (InLoox down, a poller stuck), and a figure written only on
completion would never show it.
"""
from __future__ import annotations

from datetime import datetime, timezone

import redis
from rq import Queue

from workers import eventlog, series, workspaces
from workers.poller.status import lags
from workers.workspaces import Workspace


def sample(connection: redis.Redis, workspace: Workspace, *, now: float, every: float) -> bool:
    """Record the workspace's gauges for the minute of `now`, unless another process did in the last `every` s."""
    claimed = connection.set(f"{workspace.prefix}series:sampled", 1, nx=True, px=max(1, int(every * 1000) - 100))
    if not claimed:
        return False
    with connection.pipeline(transaction=False) as pipe:
        series.record(pipe, workspace.prefix, read_gauges(connection, workspace, now=now), minute=int(now // 60))
        pipe.execute()
    return True


def read_gauges(connection: redis.Redis, workspace: Workspace, *, now: float) -> dict[str, float]:
    """{series: value} of the workspace's gauges now: event backlog, queued jobs, lag per watched set."""
    with workspaces.using(workspace):
        lag = lags(connection, now=datetime.fromtimestamp(now, timezone.utc))
    gauges = {"backlog": eventlog.backlog(connection, workspace=workspace.name),
              "queued": Queue(workspace.queue, connection=connection).count}
    gauges.update({f"poll_lag:{name}": round(seconds, 1) for name, seconds in lag.items()})
    return gauges
