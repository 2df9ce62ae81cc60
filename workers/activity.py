"""When a workspace last showed signs of life, so that the poller can poll an idle one less often.

    ws:<name>:active    epoch milliseconds of the latest activity: an event accepted into its log
                        (any source: webhook, chat, manual, schedule, the poller itself; written by
                        the event log's append script, at no round trip of its own) or a person on
                        its dashboard (web/ui.py)

The poller reads every workspace's key in one MGET per round (workers/poller/loop.py); a stamp newer
than it last saw brings each of the workspace's watched sets back to its active interval at once.
A workspace without activity for QUIET_AFTER is *quiet*: the worker's consumer and RQ's registry
cleaning look after it less often (`quiet`, workers/consumer/, workers/worker.py).
"""
from __future__ import annotations

import time
from collections.abc import Iterable

import redis

from workers import workspaces

NAME = "active"
QUIET_AFTER = 60.0  # seconds without activity after which a workspace is quiet: its workers look after it less often


def key(workspace: str | None = None) -> str:
    """The activity key of `workspace` (default: the current one)."""
    return workspaces.key(NAME) if workspace is None else f"ws:{workspace}:{NAME}"


def note(target, *, prefix: str | None = None, now: float | None = None) -> None:
    """Mark a workspace active now: the current one, or the one whose keys start with `prefix`.

    `target` is a connection (one SET) or a pipeline (queued with the change it marks). Besides the
    events accepted and people on the dashboard, changes to what a workspace watches (a rule bundle
    activated, a subscription saved) mark it: the poller looks at a quiet workspace's rules and
    subscriptions only once a minute, and at once after a mark.
    """
    name = key() if prefix is None else f"{prefix}{NAME}"
    target.set(name, int((time.time() if now is None else now) * 1000))


def latest(connection: redis.Redis, names: Iterable[str]) -> dict[str, float]:
    """Workspace name → epoch seconds of its latest activity, for those that have one (one MGET)."""
    names = list(names)
    if not names:
        return {}
    stamps = connection.mget([key(name) for name in names])
    return {name: seconds for name, stamp in zip(names, stamps) if (seconds := _seconds(stamp)) is not None}


def _seconds(stamp: bytes | None) -> float | None:
    """A stamp's epoch seconds; None for none, or for one that is no number of milliseconds.

    Not written by `note` or the event log, it is one workspace's trouble: raised, it failed the read of every
    workspace's stamp, and so every round of the poller (and the workers' looks at which workspaces are quiet).
    """
    try:
        return None if stamp is None else int(stamp) / 1000
    except ValueError:
        return None


def quiet(connection: redis.Redis, names: Iterable[str], *, now: float | None = None) -> set[str]:
    """Those of `names` without activity for QUIET_AFTER seconds (one MGET)."""
    names = list(names)
    lively = latest(connection, names)
    now = time.time() if now is None else now
    return {name for name in names if now - lively.get(name, 0.0) >= QUIET_AFTER}
