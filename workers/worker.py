"""The RQ worker class: in-process (no fork per job) and quick to give up on a dead worker's job.

    rq worker --worker-class workers.worker.Worker --serializer json --with-scheduler default

RQ's SimpleWorker runs jobs without forking, which keeps connections and the loaded rules warm
between jobs. RQ counts a job as abandoned once its heartbeat is `timeout + 60 s` old; with our
40 s run jobs that would leave a killed worker's run waiting for well over a minute, so the grace
is shortened: another worker's maintenance pass requeues it (the job has retries) within ~50 s.
"""
from __future__ import annotations

from rq.defaults import DEFAULT_WORKER_TTL
from rq.worker import SimpleWorker

ABANDON_GRACE_SECONDS = 5


class Worker(SimpleWorker):
    """SimpleWorker with a short heartbeat grace (see the module docstring)."""

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        if job.timeout == -1:
            return DEFAULT_WORKER_TTL
        return int(job.timeout or DEFAULT_WORKER_TTL) + ABANDON_GRACE_SECONDS
