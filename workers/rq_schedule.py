"""RQ's scheduling at a cost that does not grow with the number of queues: one due index, one lock.

RQ's own scheduler takes a lock per queue and looks at each queue's ScheduledJobRegistry every
second: four Redis commands per queue per second while nothing is scheduled, and every workspace
has its own queue (4,000 commands a second for 1,000 idle workspaces). Here:

    rq:due                one sorted set: queue name → the earliest time (epoch seconds) a job of that
                          queue is scheduled for; written with the job (IndexedQueue.schedule_job)
    rq:scheduler-lock     one lock for the whole deployment: its holder moves due jobs for every queue,
                          also those of workspaces other worker shards serve (moving is the same work
                          whoever does it)

Each turn (RQ's interval, 1 s) the holder renews the lock and asks the index which queues are due
(one ZRANGEBYSCORE); for each it moves the due jobs onto the queue as RQ does, then one script puts
the queue's entry back to its registry's earliest remaining time, or removes it when the registry is
empty. Scheduling writes the registry and the index in one MULTI, and that script runs atomically,
so a job scheduled while its queue is being handled is never lost from the index.

Safety net: a job scheduled by a path that does not write the index (an older process, RQ's own
`Queue`, e.g. its abandoned-job cleanup) is found by a look at every queue's registry (those in
`rq:queues`, where RQ lists every queue it schedules on) every SWEEP_SECONDS: it waits at most
about a minute longer than it should.
"""
from __future__ import annotations

import calendar
import logging
import threading
import time
from datetime import datetime

import redis
from rq import Queue
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler
from rq.scripts import ACQUIRE_OR_REFRESH_LOCK_SCRIPT, acquire_or_refresh_lock, release_lock
from rq.utils import current_timestamp, now, utcformat

from workers import failpoints, scripts

log = logging.getLogger(__name__)

DUE = "rq:due"
LOCK = "rq:scheduler-lock"  # no queue suffix: workspace names cannot make this key
# A dead holder's lock is free after this; the worker's maintenance (every 10 s) takes it over, so a
# killed holder's due jobs move again within about half a minute (RQ: 61 s + up to 10 minutes).
LOCK_SECONDS = 20
SWEEP_SECONDS = 60  # the safety net's period (module docstring)
# The holder turns every second: one silent for ten has held every due retry and hold up that long, and is stuck
# (said "RQ scheduler stalled"); its thread alive, nothing else starts a scheduler here, and past LOCK_SECONDS its
# lock lapses.
STALL_SECONDS = 10.0

# RQ's lock script: 1 acquired, 2 refreshed (ours already), 0 held by another scheduler.
_ACQUIRE_OR_REFRESH = scripts.script(ACQUIRE_OR_REFRESH_LOCK_SCRIPT)
# KEYS: the due index, the queue's ScheduledJobRegistry. ARGV: the queue's name. The queue's entry
# becomes its registry's earliest time, or goes when the registry is empty; atomic with schedule_job.
_RESETTLE = scripts.script("""
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then redis.call('ZADD', KEYS[1], first[2], ARGV[1]) else redis.call('ZREM', KEYS[1], ARGV[1]) end
return first[2]
""")


def epoch_seconds(when: datetime) -> int:
    """The score RQ's ScheduledJobRegistry gives `when` (a naive time is local, as RQ takes it)."""
    if not when.tzinfo:
        when = when.astimezone()
    return calendar.timegm(when.utctimetuple())


class IndexedQueue(Queue):
    """RQ's Queue whose `schedule_job` (enqueue_at, enqueue_in, a Retry with intervals) also writes rq:due."""

    def schedule_job(self, job, datetime: datetime, pipeline=None, unique: bool = False):
        due = {self.name: epoch_seconds(datetime)}
        if unique:
            # RQ schedules a unique job with a script of its own, outside any pipeline: the index is
            # written after it, so the resettle script, run in between, sees the job in the registry.
            job = super().schedule_job(job, datetime, unique=True)
            self.connection.zadd(DUE, due, lt=True)
            return job
        pipe = pipeline if pipeline is not None else self.connection.pipeline()
        super().schedule_job(job, datetime, pipeline=pipe)
        pipe.zadd(DUE, due, lt=True)  # LT: an earlier time already noted for this queue stays
        if pipeline is None:
            pipe.execute()
        return job


class ThreadScheduler(RQScheduler):
    """RQ's scheduler on a daemon thread of the worker, over the due index under one lock (module docstring).

    The worker's RQ calls are kept: `acquire_locks(auto_start=...)` (RQ's maintenance starts a
    scheduler whose holder died), `enqueue_scheduled_jobs`, `release_locks`, `register_birth/death`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._next_sweep = 0.0  # the first turn looks at every registry: jobs an older process scheduled
        self._woken = threading.Event()  # a stop request ends the wait between turns at once
        self._turned = time.monotonic()  # when its loop last began a turn
        self._failing = False  # its last run ended on something but Redis being away, and no turn has worked since

    def request_stop(self, signum=None, frame=None) -> None:
        """Stop after this turn (called by the worker's teardown, in its main thread, not a signal handler)."""
        super().request_stop(signum, frame)
        self._woken.set()

    def _install_signal_handlers(self) -> None:
        pass  # only the main thread may install them; the worker's stop reaches us via request_stop()

    def acquire_locks(self, auto_start: bool = False) -> set[str]:
        """Take (or keep) the deployment's one lock; start the thread when asked and it is not running."""
        held = acquire_or_refresh_lock(self.connection, LOCK, self.name, LOCK_SECONDS) != "taken"
        self._acquired_locks = {LOCK} if held else set()
        self.lock_acquisition_time = datetime.now()
        if held and auto_start and not (self._process and self._process.is_alive()):
            self.start()
        return self._acquired_locks

    def release_locks(self) -> None:
        if self._acquired_locks:
            release_lock(self.connection, LOCK, self.name)
        self._acquired_locks = set()

    def trouble(self) -> str | None:
        """What is wrong with this worker's scheduler, for its beat (/readyz): "RQ scheduler failing" (its runs end
        on an error its restart meets again), "RQ scheduler stalled" (its thread alive, not turning); None when it
        runs, and while another worker holds the lock (that one says it)."""
        if not self._acquired_locks or self._process is None:
            return None
        if self._failing:
            return "RQ scheduler failing"
        if self._process.is_alive() and time.monotonic() - self._turned > STALL_SECONDS:
            return "RQ scheduler stalled"
        return None

    def heartbeat(self) -> None:
        """Renew the lock (one script) and RQ's record of this scheduler; a lock lost is let go."""
        self.last_heartbeat = now()
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.hset(self.key, "last_heartbeat", utcformat(self.last_heartbeat))
            pipe.expire(self.key, self.interval + 60)
            scripts.call(pipe, _ACQUIRE_OR_REFRESH, keys=[LOCK], args=[self.name, LOCK_SECONDS])
            outcome = pipe.execute()[-1]
        if outcome == 0:
            log.warning("RQ scheduler %s: the scheduler lock was taken over; another worker schedules", self.name)
            self._acquired_locks = set()
        elif outcome == 1:
            log.warning("RQ scheduler %s: the scheduler lock had expired; taken again", self.name)

    def enqueue_scheduled_jobs(self) -> None:
        """Move the due jobs of every queue the index says is due (and, each SWEEP_SECONDS, look at all)."""
        if not self._acquired_locks:
            return
        if time.monotonic() >= self._next_sweep:
            self.sweep()
        for listed in self.connection.zrangebyscore(DUE, "-inf", current_timestamp()):
            # A queue's move is progress: a turn over thousands of queues due at once (after an outage) outlasted
            # STALL_SECONDS, and /readyz said stalled of a scheduler busy moving their jobs.
            self._turned = time.monotonic()
            try:
                queue_name = listed.decode()
            except UnicodeDecodeError:  # no queue is named so (names are text): due at every turn, and it ended them
                log.warning("RQ scheduler: %r in %s names no queue; removed", listed, DUE)
                self.connection.zrem(DUE, listed)
                continue
            self._move_due_jobs(queue_name)

    def _move_due_jobs(self, queue_name: str) -> None:
        """RQ's move for one queue's registry, then its index entry set again from what is left there."""
        registry = ScheduledJobRegistry(queue_name, connection=self.connection, serializer=self.serializer)
        self._scheduled_job_registries = [registry]
        try:
            super().enqueue_scheduled_jobs()
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # Redis away: the thread ends; the worker's maintenance starts it again
        except Exception:  # noqa: BLE001 - one queue's bad job, or Redis refusing one queue's key (WRONGTYPE), must
            # not stop the others' queues: raised, it ended the thread at every start, and no workspace's retry moved.
            log.exception("RQ scheduler: could not move the due jobs of queue %s; tried again in %ds", queue_name,
                          SWEEP_SECONDS)
            # Not at every turn (each second): what failed is most likely there still, and its trace filled the log.
            self.connection.zadd(DUE, {queue_name: current_timestamp() + SWEEP_SECONDS}, xx=True)
            return
        scripts.call(self.connection, _RESETTLE, keys=[DUE, registry.key], args=[queue_name])

    def sweep(self) -> None:
        """Note in the index every queue whose registry holds a job the index missed (the safety net)."""
        prefix = Queue.redis_queue_namespace_prefix
        names = sorted(key.decode().removeprefix(prefix) for key in self.connection.smembers(Queue.redis_queues_keys))
        with self.connection.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrange(ScheduledJobRegistry(name, connection=self.connection).key, 0, 0, withscores=True)
            # One queue's registry Redis refuses (WRONGTYPE) is that queue's: raised, it ended every turn's sweep.
            firsts = pipe.execute(raise_on_error=False)
            for name, first in zip(names, firsts):
                if isinstance(first, redis.ResponseError):
                    log.warning("RQ scheduler: the scheduled jobs of queue %s cannot be read: %s", name, first)
                elif first:
                    pipe.zadd(DUE, {name: int(first[0][1])}, lt=True)
            pipe.execute()
        self._next_sweep = time.monotonic() + SWEEP_SECONDS

    def start(self) -> threading.Thread:
        self._status = self.Status.STARTED
        self._stop_requested = False
        self._woken.clear()
        self._turned = time.monotonic()
        self._process = threading.Thread(target=self._work, name="rq-scheduler", daemon=True)
        self._process.start()
        return self._process

    def work(self) -> None:
        """Each interval: renew the lock, move what is due; returns on a stop request or a lock lost."""
        self.register_birth()
        while not self._stop_requested:
            self._turned = time.monotonic()
            failpoints.hit("rq_schedule_turn")  # tests only (inert unless ENGINE_FAILPOINTS is set)
            self.heartbeat()
            if not self._acquired_locks:
                self.register_death()  # RQ's maintenance (every 10 s) asks for the lock again
                return
            self.enqueue_scheduled_jobs()
            self._failing = False
            self._woken.wait(self.interval)  # RQ sleeps here: a stopping worker waited up to a second for it
        self.stop()

    def _work(self) -> None:
        try:
            self.work()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The thread ends; the worker's maintenance (every 10 s) takes the lock and starts it again.
            log.warning("RQ scheduler stopped on a Redis error (%s); it restarts with the worker's maintenance", exc)
        except Exception:
            # Redis answered and refused (a key of the wrong type, out of memory), or a bug: its restart may well meet
            # it again, each time, with no due job moved meanwhile; logged here (so redacted), not on stderr by
            # Python's hook.
            self._failing = True
            log.exception("RQ scheduler stopped on an error; it restarts with the worker's maintenance")
