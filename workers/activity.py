"""When a workspace last showed signs of life, so that the poller can poll an idle one less often.

    ws:<name>:active    epoch milliseconds of the latest activity: an event accepted into its log
                        (any source: webhook, chat, manual, schedule, the poller itself; written by
                        the event log's append script, at no round trip of its own) or a person on
                        its dashboard (web/ui.py)

The poller reads every workspace's key in one MGET per round (workers/poller.py); a stamp newer
than it last saw brings each of the workspace's watched sets back to its active interval at once.
"""
from __future__ import annotations

import time
from collections.abc import Iterable

import redis

from workers import workspaces

NAME = "active"


def key(workspace: str | None = None) -> str:
    """The activity key of `workspace` (default: the current one)."""
    return workspaces.key(NAME) if workspace is None else f"ws:{workspace}:{NAME}"


def note(connection: redis.Redis, *, now: float | None = None) -> None:
    """Mark the current workspace active now (one SET)."""
    connection.set(key(), int((time.time() if now is None else now) * 1000))


def latest(connection: redis.Redis, names: Iterable[str]) -> dict[str, float]:
    """Workspace name → epoch seconds of its latest activity, for those that have one (one MGET)."""
    names = list(names)
    if not names:
        return {}
    stamps = connection.mget([key(name) for name in names])
    return {name: int(stamp) / 1000 for name, stamp in zip(names, stamps) if stamp is not None}
