"""The RQ worker class: in-process (no fork per job) and quick to take over from a dead worker.

    rq worker --worker-class workers.worker.Worker --serializer json --with-scheduler default

RQ's SimpleWorker runs jobs without forking, which keeps connections and the loaded rules warm
between jobs. RQ's defaults assume minutes are fine for recovery; ours are tightened so that a
killed worker's run resumes elsewhere within about a minute:
- a job counts as abandoned once its heartbeat is `timeout + 5 s` old (RQ: + 60 s);
- maintenance (requeueing abandoned jobs, taking over a dead worker's scheduler) runs every
  10 s (RQ: 10 min), and an idle worker wakes every 5 s to do it (RQ: every 405 s).
"""
from __future__ import annotations

from rq.defaults import DEFAULT_WORKER_TTL
from rq.worker import SimpleWorker

from workers.logs import configure_logging

ABANDON_GRACE_SECONDS = 5
MAINTENANCE_SECONDS = 10
IDLE_WAKE_SECONDS = 5


class Worker(SimpleWorker):
    """SimpleWorker with short recovery times (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        from app import load_config  # the one place settings are read from the environment

        configure_logging(load_config())  # before RQ's bootstrap, which keeps a handler it finds
        super().__init__(*args, **kwargs)
        self.maintenance_interval = min(self.maintenance_interval, MAINTENANCE_SECONDS)

    @property
    def dequeue_timeout(self) -> int:
        return IDLE_WAKE_SECONDS

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        if job.timeout == -1:
            return DEFAULT_WORKER_TTL
        return int(job.timeout or DEFAULT_WORKER_TTL) + ABANDON_GRACE_SECONDS
