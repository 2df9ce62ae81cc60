"""Putting run jobs on the queue: one place for the queue's name, the job timeout, retries and how long a failed
job is kept.

Jobs are named by their dotted path, so modules that queue work never import the job code. Every
queue here is an IndexedQueue: a job scheduled for later (enqueue_at, enqueue_in) also notes its queue
in RQ's due index, the one place the scheduler looks (workers/rq_schedule.py).
"""
from __future__ import annotations

from datetime import timedelta

import redis
from rq import Retry
from rq.job import Job
from rq.rate_limit import RateLimit

from workers import workspaces
from workers.rq_schedule import IndexedQueue
from workers.runs import RUNS_MAX_AGE

RUN_JOB_TIMEOUT = 40  # seconds; with the worker's short grace a killed run resumes within a minute
EXECUTE_RUN = "workers.jobs.execute_run"
# RQ's statuses of a job that is still to run ("rate_limited": held back by a rule's `concurrency` until a place
# is free). Not "started": RQ says so of a job whose worker died until it cleans up (minutes later), so a sweeper
# asks a lock, or gives a started job a grace, instead.
WAITING = frozenset({"queued", "scheduled", "deferred", "rate_limited"})
# A job that raised stays in RQ's failed registry (its record and traceback) this long: as long as the run it
# served is kept. RQ's default is a year, which on a Redis shared by every customer kept each failure for a year.
FAILED_JOB_TTL = RUNS_MAX_AGE


class _Queue(IndexedQueue):
    """An IndexedQueue whose jobs are kept FAILED_JOB_TTL once failed, unless queued with a `failure_ttl` of their own.
    Every job of ours is created here (a retry keeps its job's TTL)."""

    def create_job(self, *args, failure_ttl: int | None = None, **kwargs):
        return super().create_job(*args, failure_ttl=FAILED_JOB_TTL if failure_ttl is None else failure_ttl,
                                  **kwargs)


def queue(connection: redis.Redis) -> IndexedQueue:
    """The current workspace's queue, with RQ's JSON serializer (job arguments are ids and plain data)."""
    return _Queue(workspaces.current().queue, connection=connection, serializer="json")


def workspace_job_id(name: str) -> str:
    """An RQ job id unique across workspaces: run ids repeat when two accounts see the same event id."""
    return f"{workspaces.current().name}-{name}"


def job_status_key(name: str) -> tuple[str, str]:
    """The hash and field that hold the status of the current workspace's job `name` (HGET them: None, no job)."""
    return Job.key_for(workspace_job_id(name)), "status"


def waiting(status: bytes | None) -> bool:
    """Whether an RQ job whose status (as HGET answers) is `status` is still to run."""
    return status is not None and status.decode() in WAITING


def queue_run(connection: redis.Redis, run: dict, *, job_id: str | None = None, delay: float = 0.0) -> None:
    """Queue `execute_run(run id)` now or after `delay` seconds.

    Retry(max=3) is what lets RQ requeue the job when its worker died in the middle of it. A rule's
    `concurrency: {key, limit}` becomes RQ's RateLimit: runs over the limit wait in Redis and
    start as earlier ones finish.
    """
    # result_ttl=0: the run record is what people read; RQ's copy of the result would only take memory.
    options = {"job_id": workspace_job_id(job_id or run["id"]), "job_timeout": RUN_JOB_TIMEOUT,
               "retry": Retry(max=3), "result_ttl": 0}
    concurrency = run["plan"].get("concurrency")
    if concurrency:
        options["rate_limit"] = RateLimit(key=workspaces.key(f"concurrency:{concurrency['key']}"),
                                          concurrency=concurrency["limit"])
    args = (run["id"], workspaces.current().name)
    if delay > 0:
        queue(connection).enqueue_in(timedelta(seconds=delay), EXECUTE_RUN, *args, **options)
    else:
        queue(connection).enqueue(EXECUTE_RUN, *args, **options)
