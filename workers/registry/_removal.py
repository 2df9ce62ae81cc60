"""Deleting a workspace whole: its registry record, every `ws:<name>:` key, its RQ queue and jobs, RQ's keys of
its rules' `concurrency` limits, and its series in the deployment's shared counters (metrics:counters, labelled by
workspace)."""
from __future__ import annotations

import time

import redis
from rq import Queue
from rq.rate_limit import RateLimitRegistry

from workers import metrics
from workers.rq_schedule import DUE
from workers.registry._store import UnknownWorkspace, pause, update

_SCAN_COUNT = 1000
_JOB_KEYS = ("rq:job:{id}", "rq:job:{id}:dependents", "rq:job:{id}:dependencies", "rq:results:{id}")


def delete(connection: redis.Redis, name: str) -> int:
    """Delete workspace `name` and everything of it in Redis; returns how many keys went.

    It is paused first, then its record goes (every process stops serving it within seconds), then
    its keys: a worker finishing a run of it in between can leave a key behind, which a second
    `delete` removes (it accepts a workspace that is already gone from the registry).
    """
    known = connection.hexists("registry:workspaces", name)
    if known:
        pause(connection, name)
        update(connection, name, lambda old: None)
    removed = _delete_everything(connection, name)
    if not known and not removed:
        raise UnknownWorkspace(f"no workspace {name!r}")
    return removed + int(known)


class Leftovers:
    """Deletes again what this process may still have written for a workspace deleted while it served it.

    A process lets a deleted workspace go within a second or two; in that time it can write a key of
    it (a count flushed, a scheduler lock refreshed, a poll finished). Each process notes the
    workspaces it let go and, a few seconds later and once more after that, deletes whatever of
    them is left, unless the workspace was created again. Nothing of the name stays in Redis.

    A worker's runs (and deliveries) in flight may take longer: a run stores its record when it ends, which
    can be a while after those purges (several steps of a slow InLoox). Each step renews the run's lease
    (`run-lock:<id>`, a key of the workspace, deleted with the others), and a run whose lease is gone stops
    at its next step without writing; so whatever a run still writes comes within one lease of the purge
    that took its lease. `lease` (a worker's run lease, longer than its deliveries' locks) adds a purge
    after that.
    """

    AFTER = (3.0, 15.0)  # seconds after letting go: past the metrics batch, a poll round and a lease renewal
    MARGIN = 15.0  # seconds past the last lease: the round trip that stores a run's status, a clock that drifts

    def __init__(self, lease: float = 0.0):
        self.after = self.AFTER + ((self.AFTER[-1] + lease + self.MARGIN,) if lease else ())
        self._due: list[tuple[float, str]] = []

    def let_go(self, name: str, *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._due.extend((now + after, name) for after in self.after)

    def purge_due(self, connection: redis.Redis, *, now: float | None = None) -> int:
        """Delete the leftovers that are due; how many keys went."""
        now = time.monotonic() if now is None else now
        due = {name for at, name in self._due if at <= now}
        if not due:
            return 0
        # Deleted first, forgotten after: a purge that meets Redis away raises to the caller and stays due,
        # so its next turn deletes once Redis is back (a late write would otherwise stay for good).
        removed = sum(_delete_everything(connection, name) for name in due
                      if not connection.hexists("registry:workspaces", name))
        self._due = [(at, name) for at, name in self._due if at > now]
        return removed


def _delete_everything(connection: redis.Redis, name: str) -> int:
    removed = _delete_jobs(connection, name) + _delete_matching(connection, f"ws:{name}:*")
    removed += _delete_queue_keys(connection, name) + _delete_rate_limits(connection, name)
    removed += _delete_counters(connection, name)
    from workers.recovery import OUTAGES  # here: recovery needs the worker's context, which needs this package
    connection.srem(OUTAGES, name)  # its runs waiting for its InLoox went with its keys
    return removed + connection.unlink(f"rq:scheduler-lock:{name}")


def _delete_matching(connection: redis.Redis, pattern: str) -> int:
    removed = 0
    batch = []
    for found in connection.scan_iter(match=pattern, count=_SCAN_COUNT):
        batch.append(found)
        if len(batch) >= _SCAN_COUNT:
            removed += connection.unlink(*batch)
            batch = []
    return removed + (connection.unlink(*batch) if batch else 0)


def _delete_jobs(connection: redis.Redis, name: str) -> int:
    """The workspace's RQ jobs: those its queue and registries list, and any left with it as origin."""
    queue = Queue(name, connection=connection)
    ids = set(queue.get_job_ids())
    for registry in (queue.started_job_registry, queue.finished_job_registry, queue.failed_job_registry,
                     queue.deferred_job_registry, queue.scheduled_job_registry, queue.canceled_job_registry):
        ids.update(registry.get_job_ids(cleanup=False))
    # Job ids start with the workspace's name (workers/enqueue.py), but "acme-" also starts
    # "acme-2-…": the job's origin says whose it is.
    for found in connection.scan_iter(match=f"rq:job:{name}-*", count=_SCAN_COUNT):
        job_key = found.decode()
        if job_key.count(":") == 2 and connection.hget(job_key, "origin") == name.encode():
            ids.add(job_key.removeprefix("rq:job:"))
    keys = [pattern.format(id=job_id) for job_id in ids for pattern in _JOB_KEYS]
    return connection.unlink(*keys) if keys else 0


def _delete_queue_keys(connection: redis.Redis, name: str) -> int:
    """RQ's keys of the queue itself (rq:queue:<name>, rq:wip:<name>, rq:failed:<name>, …)."""
    connection.srem("rq:queues", f"rq:queue:{name}")
    connection.zrem(DUE, name)  # the due index names the queue (workers/rq_schedule.py)
    keys = [k for k in connection.scan_iter(match=f"rq:*:{name}", count=_SCAN_COUNT)
            if k.decode().split(":", 2)[-1] == name]
    return connection.unlink(*keys) if keys else 0


def _delete_rate_limits(connection: redis.Redis, name: str) -> int:
    """RQ's keys of the workspace's `concurrency` limits (workers/enqueue.py names each `ws:<name>:concurrency:<key>`):
    rq:rl:<that>, its :allowed and :rate_limited sets, and its member of RQ's list of limits. RQ drops a limit only
    once a worker's maintenance finds it empty; its jobs deleted, they named the workspace until then."""
    limits = [m for m in connection.sscan_iter(RateLimitRegistry.rl_keys_key, match=f"ws:{name}:*", count=_SCAN_COUNT)]
    if limits:
        connection.srem(RateLimitRegistry.rl_keys_key, *limits)
    return _delete_matching(connection, f"rq:rl:ws:{name}:*")


def _delete_counters(connection: redis.Redis, name: str) -> int:
    """The workspace's fields of the shared counters hash (their labels name it)."""
    return metrics.forget(connection, workspace=name)
