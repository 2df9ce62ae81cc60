"""Deleting a workspace whole: its registry record, every `ws:<name>:` key, its RQ queue and jobs, RQ's keys of
its rules' `concurrency` limits, and its series in the deployment's shared counters (metrics:counters, labelled by
workspace)."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import redis
from rq import Queue
from rq.rate_limit import RateLimitRegistry

from workers import metrics
from workers.rq_schedule import DUE
from workers.registry._store import RECORDS, UnknownWorkspace, pause, update

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
    removed = sum(_deletions(connection, name))
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

    A purge goes on for at most STEPS steps (a SCAN page each) per call, and the next call resumes it: the
    caller's round (the ticks, polls or events of every other workspace) never waits for the whole of a
    deleted workspace with many keys left, nor for whole scans of a huge keyspace.
    """

    AFTER = (3.0, 15.0)  # seconds after letting go: past the metrics batch, a poll round and a lease renewal
    MARGIN = 15.0  # seconds past the last lease: the round trip that stores a run's status, a clock that drifts
    STEPS = 20  # per call: some 20,000 keys looked at and as many deleted, tens of milliseconds of Redis

    def __init__(self, lease: float = 0.0):
        self.after = self.AFTER + ((self.AFTER[-1] + lease + self.MARGIN,) if lease else ())
        self._due: list[tuple[float, str]] = []
        self._purging: dict[str, tuple[float, Iterator[int]]] = {}  # name → when its purge began, its steps left

    def let_go(self, name: str, *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._due.extend((now + after, name) for after in self.after)

    def purge_due(self, connection: redis.Redis, *, now: float | None = None) -> int:
        """Go on deleting the leftovers that are due, at most STEPS steps of it; how many keys went."""
        now = time.monotonic() if now is None else now
        for name in {name for at, name in self._due if at <= now} - self._purging.keys():
            self._purging[name] = (now, _deletions(connection, name))
        removed = steps = 0
        for name, (began, deletions) in list(self._purging.items()):
            try:
                # Asked at each call: a workspace created again meanwhile owns its name's keys.
                done = connection.hexists(RECORDS, name)
                while not done and steps < self.STEPS:
                    step = next(deletions, None)
                    done = step is None
                    removed += step or 0
                    steps += 1
            except Exception:
                # Deleted first, forgotten after: a purge that meets Redis away raises to the caller and stays due,
                # so a later call begins it again once Redis is back (a late write would otherwise stay for good).
                # Any other error too: it ended the generator, which the next call would take for a purge done.
                del self._purging[name]
                raise
            if done:  # what was written before it began is gone; a purge due since then begins at the next call
                del self._purging[name]
                self._due = [(at, n) for at, n in self._due if n != name or at > began]
        return removed


def _deletions(connection: redis.Redis, name: str) -> Iterator[int]:
    """Delete everything of workspace `name`, a step at a time; yields how many keys each step removed."""
    yield from _delete_jobs(connection, name)
    yield from _unlink_matching(connection, f"ws:{name}:*")
    yield from _delete_queue_keys(connection, name)
    yield from _delete_rate_limits(connection, name)
    from workers.recovery import OUTAGES  # here: recovery needs the worker's context, which needs this package
    connection.srem(OUTAGES, name)  # its runs waiting for its InLoox went with its keys
    yield _delete_counters(connection, name) + connection.unlink(f"rq:scheduler-lock:{name}")


def _pages(connection: redis.Redis, pattern: str) -> Iterator[list[bytes]]:
    """The keys matching `pattern`, a SCAN page at a time (in a huge keyspace most pages are empty; each is a step)."""
    cursor = None
    while cursor != 0:
        cursor, keys = connection.scan(cursor or 0, match=pattern, count=_SCAN_COUNT)
        yield keys


def _unlink_matching(connection: redis.Redis, pattern: str,
                     mine: Callable[[bytes], bool] = lambda key: True) -> Iterator[int]:
    for keys in _pages(connection, pattern):
        keys = [k for k in keys if mine(k)]
        yield connection.unlink(*keys) if keys else 0


def _delete_jobs(connection: redis.Redis, name: str) -> Iterator[int]:
    """The workspace's RQ jobs: those its queue and registries list, and any left with it as origin."""
    queue = Queue(name, connection=connection)
    ids = set(queue.get_job_ids())
    for registry in (queue.started_job_registry, queue.finished_job_registry, queue.failed_job_registry,
                     queue.deferred_job_registry, queue.scheduled_job_registry, queue.canceled_job_registry):
        ids.update(registry.get_job_ids(cleanup=False))
    yield _unlink_jobs(connection, ids)
    # Job ids start with the workspace's name (workers/enqueue.py), but "acme-" also starts
    # "acme-2-…": the job's origin says whose it is.
    for keys in _pages(connection, f"rq:job:{name}-*"):
        yield _unlink_jobs(connection, {k.decode().removeprefix("rq:job:") for k in keys
                                        if k.count(b":") == 2 and connection.hget(k, "origin") == name.encode()})


def _unlink_jobs(connection: redis.Redis, ids: set[str]) -> int:
    keys = [pattern.format(id=job_id) for job_id in ids for pattern in _JOB_KEYS]
    return connection.unlink(*keys) if keys else 0


def _delete_queue_keys(connection: redis.Redis, name: str) -> Iterator[int]:
    """RQ's keys of the queue itself (rq:queue:<name>, rq:wip:<name>, rq:failed:<name>, …)."""
    connection.srem("rq:queues", f"rq:queue:{name}")
    connection.zrem(DUE, name)  # the due index names the queue (workers/rq_schedule.py)
    yield from _unlink_matching(connection, f"rq:*:{name}", lambda key: key.decode().split(":", 2)[-1] == name)


def _delete_rate_limits(connection: redis.Redis, name: str) -> Iterator[int]:
    """RQ's keys of the workspace's `concurrency` limits (workers/enqueue.py names each `ws:<name>:concurrency:<key>`):
    rq:rl:<that>, its :allowed and :rate_limited sets, and its member of RQ's list of limits. RQ drops a limit only
    once a worker's maintenance finds it empty; its jobs deleted, they named the workspace until then."""
    limits = [m for m in connection.sscan_iter(RateLimitRegistry.rl_keys_key, match=f"ws:{name}:*", count=_SCAN_COUNT)]
    if limits:
        connection.srem(RateLimitRegistry.rl_keys_key, *limits)
    yield from _unlink_matching(connection, f"rq:rl:ws:{name}:*")


def _delete_counters(connection: redis.Redis, name: str) -> int:
    """The workspace's fields of the shared counters hash (their labels name it)."""
    return metrics.forget(connection, workspace=name)
