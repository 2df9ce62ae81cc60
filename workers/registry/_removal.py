"""Deleting a workspace whole: its registry record, every `ws:<name>:` key, its RQ queue and jobs, and
its series in the deployment's shared counters (metrics:counters, labelled by workspace)."""
from __future__ import annotations

import time

import redis
from rq import Queue

from workers import metrics
from workers.registry._store import UnknownWorkspace, pause, update

_SCAN_COUNT = 1000
DELETED = "registry:deleted"  # zset: name → when deleted; its leftovers are purged for PURGE_SECONDS
PURGE_SECONDS = 120.0  # processes let a deleted workspace go within seconds; a lagging write lands well within this
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
        connection.zadd(DELETED, {name: time.time()})
    removed = _delete_everything(connection, name)
    if not known and not removed:
        raise UnknownWorkspace(f"no workspace {name!r}")
    return removed + int(known)


def purge_deleted(connection: redis.Redis, *, now: float | None = None) -> int:
    """Delete again what processes still wrote for a workspace deleted within PURGE_SECONDS; how many keys went.

    A worker flushing its counts, a scheduler refreshing its lock or a poll finishing in the second
    before it noticed the deletion can write a key of the deleted workspace; workers call this every
    few seconds, so that soon after a delete no key of it is left (unless it was created again).
    """
    now = time.time() if now is None else now
    connection.zremrangebyscore(DELETED, "-inf", now - PURGE_SECONDS)
    removed = 0
    for raw in connection.zrange(DELETED, 0, -1):
        name = raw.decode()
        if not connection.hexists("registry:workspaces", name):
            removed += _delete_everything(connection, name)
    return removed


def _delete_everything(connection: redis.Redis, name: str) -> int:
    removed = _delete_jobs(connection, name) + _delete_matching(connection, f"ws:{name}:*")
    removed += _delete_queue_keys(connection, name) + _delete_counters(connection, name)
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
    keys = [k for k in connection.scan_iter(match=f"rq:*:{name}", count=_SCAN_COUNT)
            if k.decode().split(":", 2)[-1] == name]
    return connection.unlink(*keys) if keys else 0


def _delete_counters(connection: redis.Redis, name: str) -> int:
    """The workspace's fields of the shared counters hash (their labels name it)."""
    fields = [f for f, _ in connection.hscan_iter(metrics.COUNTERS, count=_SCAN_COUNT)
              if metrics.parse_field(f)[1].get("workspace") == name]
    return connection.hdel(metrics.COUNTERS, *fields) if fields else 0
