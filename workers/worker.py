"""The worker process: the event consumer (many events in flight) beside an in-process RQ worker.

    rq worker --worker-class workers.worker.Worker --serializer json --with-scheduler default

(`--queue-class` is not read: the worker's queues are IndexedQueues, so that RQ's retries write the due index.)

Accepted events arrive through the workspaces' event logs (workers/eventlog.py) and are handled by
the event consumer's thread pool (workers/consumer/), which this class starts and stops with the
RQ worker. RQ keeps what needs a queue with timing: retries after a delay, holds, runs under a
rule's `concurrency` limit, chat replies, runs restarted by the sweeper. RQ's SimpleWorker runs
those without forking, which keeps connections and the loaded rules warm.

RQ runs its jobs on its loop's thread, one after the other; ours wait on the outside world (a run's
InLoox requests, a delivery's subscriber, a chat reply), so one workspace whose InLoox hung held every
other workspace's retries, holds and deliveries behind each of its requests (round robin: one job of
each other queue between two of its own, each of its own waiting out the InLoox time-out). Here each job
runs on a thread of its own: at most WORKER_JOBS at once, and at most WORKER_JOBS_PER_WORKSPACE of one
workspace, whose queue is not read while it has that many (its jobs wait in Redis, not in this process).
The loop still takes each job and records its start (RQ's started registry) itself, and keeps the
heartbeats of the jobs running, as RQ's forking worker does for its child.

RQ's defaults assume minutes are fine for recovery; ours are tightened so that a killed worker's
run resumes elsewhere within about a minute:
- a job counts as abandoned once its heartbeat is `timeout + 5 s` old (RQ: + 60 s);
- maintenance (requeueing abandoned jobs, taking over a dead worker's scheduler) runs every
  10 s (RQ: 10 min), and an idle worker wakes every 2 s (RQ: every 405 s), which is also how
  soon it notices a stop signal.

RQ's scheduler (which moves due retries and holds onto their queue) runs on a thread of this process,
not in a forked child: one process fewer per worker, and a killed worker takes its scheduler with it
(a forked child used to keep the worker's output pipe open, so nothing noticed the worker's death).
It is ours (workers/rq_schedule.py): RQ's took a lock per queue and looked at every queue each
second, 4 Redis commands per workspace per second while nothing happened. Every job scheduled
(through IndexedQueue, this worker's queue class) also notes its queue in one due index, and one
worker of the deployment holds one lock and moves what the index says is due, for every workspace;
a killed holder's lock expires and another worker's maintenance takes it over.

RQ's own loop quits on a Redis error ("unhandled exception, quitting"); this one waits with backoff
and starts it again, so a Redis restart never needs a person. The process also lowers its own CPU
priority (WORKER_NICE), so that on a small machine the web answers senders before workers drain.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

import redis
from rq import Queue
from rq.defaults import DEFAULT_WORKER_TTL
from rq.exceptions import StopRequested
from rq import worker_registration
from rq.registry import clean_registries
from rq.timeouts import BaseDeathPenalty
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus

from inloox import deadlines
from workers import activity, failpoints, heap, metrics, registry
from workers.consumer import EventConsumer
from workers.consumer_beat import CONSUMER_BEAT, CONSUMER_BEAT_SECONDS, CONSUMER_BEAT_TTL, REFUSED
from workers.poller.process import Polling
from workers.logs import configure_logging, follow_registry
from workers.rq_schedule import IndexedQueue, ThreadScheduler
from workers.settings import load_config, redis_client, send_once
from workers.worker_context import run_lease, served

log = logging.getLogger(__name__)

ABANDON_GRACE_SECONDS = 5
MAINTENANCE_SECONDS = 10
QUIET_CLEAN_SECONDS = 600  # RQ's own maintenance interval, for the queues of quiet workspaces
IDLE_WAKE_SECONDS = 2  # also how soon an idle worker notices a stop signal
METRICS_BATCH_SECONDS = 1.0  # counts reach Redis (and /metrics) at most this late
MAX_BACKOFF_SECONDS = 5  # Redis back after a restart: work resumes within seconds
# A stopping worker waits this long for its polls under way (a poller that stops releases its leases,
# so another takes its workspaces at once rather than after POLL_LEASE_SECONDS).
POLLING_STOP_SECONDS = 3.0
IDLE_QUEUE = "no-workspace"  # the queue an RQ loop waits on while no workspace is served (never enqueued)
JOB_BEAT_SECONDS = 10  # how often the loop renews the started registry's lease of each job running on a thread
JOBS_STOP_SECONDS = 60  # a stopping worker waits this long for its jobs under way (the longest job time-out)


class _OwnDeadlines(BaseDeathPenalty):
    """No alarm around a job: SIGALRM (RQ's SimpleWorker's) reaches only the main thread, and our jobs bound
    themselves (InLoox and outbound time-outs, a run's lease)."""

    def setup_death_penalty(self):
        pass

    def cancel_death_penalty(self):
        pass


class _Places:
    """The RQ jobs running on threads of this worker, by workspace (queue): at most `most`, `per_workspace` of one."""

    def __init__(self, most: int, per_workspace: int):
        self.most, self.per_workspace = max(1, most), max(1, per_workspace)
        self.running: dict[str, tuple] = {}  # job id -> (job, execution) running now
        self._of: dict[str, int] = {}  # queue name -> its jobs running now
        self._changed = threading.Condition()

    def readable(self, queues: list) -> list:
        """Those of `queues` whose workspace has a place left (fewer than `per_workspace` jobs running); none when
        no place is left at all."""
        with self._changed:
            if len(self.running) >= self.most:
                return []
            return [queue for queue in queues if self._of.get(queue.name, 0) < self.per_workspace]

    def take(self, queue: str, job, execution) -> None:
        with self._changed:
            self.running[job.id] = (job, execution)
            self._of[queue] = self._of.get(queue, 0) + 1

    def give_back(self, queue: str, job) -> int:
        """The place of `job` is free again; how many jobs still run."""
        with self._changed:
            self.running.pop(job.id, None)
            self._of[queue] -= 1
            if not self._of[queue]:
                del self._of[queue]
            self._changed.notify_all()
            return len(self.running)

    def wait(self, seconds: float) -> None:
        """Until a place is given back, or `seconds`."""
        with self._changed:
            self._changed.wait(seconds)

    def wait_for_none(self, seconds: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: not self.running, seconds)

    def jobs(self) -> list[tuple]:
        with self._changed:
            return list(self.running.values())

    def held(self) -> str | None:
        """What the beat says when every place is held by a job past its RQ time-out, None otherwise: the RQ loop
        then takes no job until one ends (a thread cannot be stopped), and /readyz says so."""
        jobs = self.jobs()
        if len(jobs) < self.most:
            return None
        overdue = sum(1 for job, _ in jobs if _past_timeout(job))
        return f"RQ jobs stuck: each of its {self.most} job places held past the job's time-out" if overdue >= self.most else None


class Worker(SimpleWorker):
    """SimpleWorker with the event consumer, jobs on threads, short recovery times and Redis outage riding (see
    above)."""

    death_penalty_class = _OwnDeadlines

    def __init__(self, queues, *args, **kwargs):
        self.config = load_config()
        configure_logging(self.config)  # before RQ's bootstrap, which keeps a handler it finds
        follow_registry(served().view)  # workspaces added or rotated later have their secrets redacted too
        # RQ's CLI passes its --queue-class (rq.Queue) and builds the queues with it: by name, they
        # become IndexedQueues, whose schedule_job (RQ's Retry with intervals) writes the due index.
        kwargs["queue_class"] = IndexedQueue
        queues = [queues] if isinstance(queues, (str, Queue)) else queues
        super().__init__([q.name if isinstance(q, Queue) else q for q in queues], *args, **kwargs)
        # RQ's CLI built this client from --url $REDIS_URL: it takes the jobs off their queues (a pop sent twice
        # loses a job) and keeps their registries, so it sends each command once too, whatever the URL asks.
        self.connection.set_retry(send_once())
        self.maintenance_interval = min(self.maintenance_interval, MAINTENANCE_SECONDS)
        self.max_connection_wait_time = MAX_BACKOFF_SECONDS  # RQ's own wait while dequeueing (60 s)
        self.consumer: EventConsumer | None = None
        self.polling: Polling | None = None  # with WORKER_POLLS: the poller's and the schedules' loops
        self._next_beat = 0.0
        self._following: list[str] | None = None  # the workspaces served now, as last followed
        # Its runs in flight when a workspace is deleted end within a lease of the purge that takes their lease.
        self._leftovers = registry.Leftovers(lease=run_lease(float(self.config["INLOOX_TIMEOUT"])))
        self._cleaned: dict[str, float] = {}  # queue name → when (monotonic) its registries were last cleaned
        self._known: set[str] = set()  # every workspace served, paused or not, at the last look
        # WORKER_WORKSPACES names the workspaces this worker may serve (a shard); empty: every one.
        self.shard = registry.Shard(served(), frozenset(
            n.strip() for n in (self.config.get("WORKER_WORKSPACES") or "").split(",") if n.strip()))
        self._places = _Places(int(self.config["WORKER_JOBS"]), int(self.config["WORKER_JOBS_PER_WORKSPACE"]))
        self._rotation = self.queues[:]  # every queue served, in RQ's turns; `_ordered_queues`: those read now
        self._idle_queue = self.queue_class(IDLE_QUEUE, connection=self.connection, serializer=self.serializer)
        self._burst = False  # `rq worker --burst`: jobs one after the other on the loop's thread, as RQ does
        self._next_job_beat = 0.0

    def bootstrap(self, *args, **kwargs):
        """RQ's start-up; then its per-job lines ("Job OK", "dequeued …") go quiet: one line per run is ours."""
        failpoints.hit("rq_start")  # tests only (inert unless ENGINE_FAILPOINTS is set)
        super().bootstrap(*args, **kwargs)
        # RQ lists a queue (rq:queues) only once something was enqueued on it; events no longer are,
        # so a worker names its queues, and RQ's dashboard shows them while they are empty.
        self.connection.sadd(self.queue_class.redis_queues_keys, *(queue.key for queue in self.queues))
        for name in ("rq.worker", "rq.job"):
            logging.getLogger(name).setLevel(logging.WARNING)

    def _start_scheduler(self, burst: bool = False, logging_level: str | None = "INFO", date_format: str = "",
                         log_format: str = "") -> None:
        """RQ's `_start_scheduler`, with our scheduler (one lock, every queue: ThreadScheduler) on a thread."""
        self.scheduler = ThreadScheduler([], connection=self.connection, serializer=self.serializer,
                                         logging_level=logging_level or self.log.level)
        self.scheduler.acquire_locks()
        if not self.scheduler.acquired_locks:
            return  # another worker schedules (for every queue); RQ's maintenance tries again every 10 s
        if burst:
            try:
                self.scheduler.register_birth()
                self.scheduler.enqueue_scheduled_jobs()
            finally:
                self.scheduler.release_locks()
                self.scheduler.register_death()
        else:
            self.scheduler.start()

    def request_stop(self, signum, frame):
        """Warm shutdown, noted rather than raised from the signal handler (as RQ does when idle).

        RQ's StopRequested, raised wherever the main thread happens to be, could land inside
        logging or redis-py and be printed or swallowed. RQ's own flag, `_stop_requested` (RQ sets
        it only while a job runs), is the one flag of a stop, whichever handler noted it; it is read
        where it is safe: RQ's loop, our heartbeat (each turn of the wait for work, within
        IDLE_WAKE_SECONDS, or of RQ's waits for Redis, within MAX_BACKOFF_SECONDS) and our restarts.
        """
        self._stop_requested = True
        self._shutdown_requested_date = now()  # a second signal within a second is not a cold stop
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        self.handle_warm_shutdown_request()

    def heartbeat(self, *args, **kwargs):
        if kwargs.get("pipeline") is not None or threading.current_thread() is not threading.main_thread():
            # A job's start on its thread, or the loop's renewal of running jobs (`_beat_jobs`), in a pipeline.
            return super().heartbeat(*args, **kwargs)
        # RQ's wait for work retries Redis errors in a loop of its own, where the StopRequested its
        # signal handler raises can be swallowed by redis-py; this is the first call of each turn.
        if self._stop_requested and self.get_state() != WorkerStatus.BUSY:
            self._stop_taking_work()
            raise StopRequested()
        self._follow_workspaces()
        self._narrow()
        self._consumer_beat()
        self._beat_jobs()
        return super().heartbeat(*args, **kwargs)

    def _stop_taking_work(self) -> None:
        """A warm stop: the consumer reads no more events and the poller starts no more polls (each ends what it has
        under way, `work`), while RQ's loop winds down its scheduler and its jobs."""
        if self.consumer is not None:
            self.consumer.stop_reading()  # its last read ends while RQ's scheduler stops
        if self.polling is not None:
            self.polling.stop_event.set()  # its polls under way end meanwhile too

    def _follow_workspaces(self) -> None:
        """Serve the running workspaces as the registry has them now: their event logs and RQ queues.

        A workspace created or resumed is taken up, one paused or deleted is let go (its events
        wait in its log, its jobs in its queue), within a second or two of the change.
        """
        try:
            known = self.shard.workspaces()
            running = sorted(n for n, ws in known.items() if not ws.paused)
            for gone in self._known - set(known):
                self._leftovers.let_go(gone)  # deleted: what this worker still writes of it goes soon after
            self._known = set(known)
            self._leftovers.purge_due(self.connection)
        except redis.RedisError as exc:
            log.warning("worker %s: could not read the workspace registry (%s)", self.name, exc)
            return
        if running == self._following:
            return
        if self._following is not None:
            log.info("worker %s: now serving %s", self.name, ", ".join(running) or "no workspace")
        self._following = running
        # RQ takes from the queues in turn; with none it would block on nothing: an empty queue stands in.
        self.queues = [self.queue_class(name, connection=self.connection, serializer=self.serializer)
                       for name in running or [IDLE_QUEUE]]
        self._rotation = self.queues[:]
        self._narrow()
        if self.consumer is not None:
            self.consumer.follow(running)

    def _consumer_beat(self) -> None:
        """Start a dead consumer, poller or answer-deadline watcher thread again, and say for /readyz (CONSUMER_BEAT)
        whether they run, and RQ's scheduler when this worker holds its lock (RQ's maintenance starts that again)."""
        if self.consumer is not None:
            self.consumer.keep_running()  # every turn (≤ IDLE_WAKE_SECONDS)
        if self.polling is not None:
            self.polling.keep_running()
        deadlines.keep_running()
        heap.keep()  # what the workspaces followed since built is frozen too
        if time.monotonic() < self._next_beat:
            return
        state = "none" if self.consumer is None else "running" if self.consumer.running() else self.consumer.trouble()
        if state in ("none", "running") and self.polling is not None:
            state = self.polling.trouble() or state
        if state in ("none", "running"):  # the poller's trouble says it already when the worker polls
            state = deadlines.trouble() or state
        if state in ("none", "running") and not self._burst:
            state = self._places.held() or state
        if state in ("none", "running") and isinstance(self.scheduler, ThreadScheduler):
            state = self.scheduler.trouble() or state  # due retries and holds moved: every workspace's
        if state == "running" and (refused := self.consumer.refused()):
            state += REFUSED + ", ".join(refused)
        try:
            self.connection.set(CONSUMER_BEAT + self.name, state, ex=CONSUMER_BEAT_TTL)
        except redis.RedisError:
            return  # Redis away: RQ's own heartbeat, next, waits for it; the beat is said again then
        self._next_beat = time.monotonic() + CONSUMER_BEAT_SECONDS

    def clean_registries(self):
        """RQ's cleaning of each queue's registries (abandoned jobs requeued, old ones dropped), lively first.

        RQ cleans every queue at each maintenance (every MAINTENANCE_SECONDS here): some ten
        commands per workspace, most of what an idle one cost Redis. A queue whose workspace is quiet
        (no activity stamp for a minute, workers/activity.py) is cleaned every QUIET_CLEAN_SECONDS,
        RQ's own default: a job left by a killed worker in a workspace where nothing happens is found
        later, and its run is started again by the sweeper (workers/recovery.py) meanwhile anyway.
        """
        quiet = activity.quiet(self.connection, [queue.name for queue in self.queues])
        moment = time.monotonic()
        for queue in self.queues:
            if queue.name in quiet and moment - self._cleaned.get(queue.name, -QUIET_CLEAN_SECONDS) < QUIET_CLEAN_SECONDS:
                continue
            if queue.acquire_maintenance_lock():  # one worker at a time cleans a queue (RQ's lock)
                try:
                    clean_registries(queue, self._exc_handlers)
                    worker_registration.clean_worker_registry(queue)
                    queue.intermediate_queue.cleanup(self, queue)
                except (redis.ConnectionError, redis.TimeoutError):
                    raise  # Redis away: the maintenance is skipped (run_maintenance_tasks)
                except Exception:  # noqa: BLE001 - one workspace's: Redis refusing a key of its queue, a damaged job
                    # Raised, it ended RQ's loop at every maintenance (started again after a backoff, every
                    # workspace's jobs waiting meanwhile), and the queues after it were never cleaned.
                    log.exception("worker %s: could not clean the registries of queue %s", self.name, queue.name)
                finally:
                    queue.release_maintenance_lock()
            self._cleaned[queue.name] = moment
        self.last_cleaned_at = now()

    def run_maintenance_tasks(self):
        """RQ's maintenance (every MAINTENANCE_SECONDS), skipped while Redis is away.

        RQ lets a connection error here end its loop with a traceback ("unhandled exception"); the
        loop is started again anyway (work), but an outage is expected, not a crash: a warning, and
        the next turn tries again.
        """
        try:
            super().run_maintenance_tasks()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("worker %s: maintenance skipped, Redis unavailable (%s)", self.name, exc)

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's check for `rq suspend` (the first step of each turn of its loop); Redis away, not suspended.

        RQ lets a Redis error here end its loop with a traceback. The turn goes on instead to RQ's wait
        for work, which waits for Redis with backoff and notices a stop signal meanwhile.
        """
        failpoints.hit("rq_turn")  # tests only (inert unless ENGINE_FAILPOINTS is set)
        try:
            super().check_for_suspension(burst)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("worker %s: could not check for suspension, Redis unavailable (%s)", self.name, exc)

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """RQ's wait for a job, from the queues whose workspace has a place left (`_Places`): none is taken
        before a place is free for it."""
        failpoints.hit("rq_wait")  # tests only
        while not self._narrow():
            if self._stop_requested:
                raise StopRequested()  # RQ's loop ends; its teardown waits for the jobs under way
            self.heartbeat()  # the workspaces followed, the consumer's beat, while every place is taken
            self._places.wait(IDLE_WAKE_SECONDS)
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def _narrow(self) -> list:
        """The queues RQ reads next (`_ordered_queues`): those of `_rotation`, in its order, whose workspace has a
        place left. Done at each turn of RQ's wait (our heartbeat), so a queue is read again once a place is free."""
        readable = self._places.readable(self._rotation)
        if len(readable) == 1 and len(self.queues) > 1:
            # RQ takes from a lone queue with BLMOVE into its intermediate list, and removes the job from there
            # only when the worker has one queue: the job would stay listed, and a finished one whose result is
            # kept be failed a minute later by RQ's cleanup ("stuck in intermediate queue"). An empty queue
            # beside it keeps RQ's take from several (BLPOP), as with every queue readable.
            readable.append(self._idle_queue)
        self._ordered_queues = readable
        return readable

    def reorder_queues(self, reference_queue):
        """RQ's turns (round robin) over every queue served, those left out of a read for want of places too."""
        self._ordered_queues = self._rotation
        super().reorder_queues(reference_queue)
        self._rotation = self._ordered_queues
        self._narrow()

    def execute_job(self, job, queue):
        """Run `job` on a thread of its own (see above); the loop goes on to the next one."""
        if self._burst:
            return super().execute_job(job, queue)
        execution = self.prepare_execution(job)  # in RQ's started registry before the loop goes on
        self._places.take(queue.name, job, execution)
        thread = threading.Thread(target=self._perform, args=(job, queue, execution), name=f"rq-job:{queue.name}",
                                  daemon=True)
        try:
            thread.start()
        except BaseException:  # no thread to be had: the job stays started, and is found abandoned and run again
            self._places.give_back(queue.name, job)
            raise

    def _perform(self, job, queue, execution) -> None:
        try:
            self.perform_job(job, queue, execution)  # records its own success or failure, as on RQ's thread
        except Exception:  # what it could not record (Redis away): found abandoned later, and run again
            log.exception("worker %s: job %s (%s) ended without its outcome recorded", self.name, job.id, queue.name)
        finally:
            if not self._places.give_back(queue.name, job):
                self.set_state(WorkerStatus.IDLE)

    def _beat_jobs(self) -> None:
        """Renew the started registry's lease of each job running on a thread (RQ's forking worker does so while
        its child runs), so that one past its time-out is not taken for abandoned while it runs."""
        if time.monotonic() < self._next_job_beat:
            return
        self._next_job_beat = time.monotonic() + JOB_BEAT_SECONDS
        for job, execution in self._places.jobs():
            running = _running_for(job)
            if running < JOB_BEAT_SECONDS:
                continue  # just started: its lease (the job's time-out) is fresh
            if _past_timeout(job):  # none should: each bounds its own requests
                log.warning("worker %s: job %s (%s) has run for %.0f s, past its time-out of %s s",
                            self.name, job.id, job.origin, running, job.timeout)
            try:
                self.maintain_heartbeats(job, execution)
            except redis.RedisError as exc:
                log.warning("worker %s: job %s's lease not renewed (%s)", self.name, job.id, exc)
                return

    def teardown(self):
        """RQ's, once the jobs under way have ended (a warm stop lets them finish, as RQ's own)."""
        if self._stop_requested:
            # RQ's loop also stops at the top of a turn, our heartbeat not called: a stop that came as its wait
            # handed it a job. The consumer read on while the jobs ended (up to JOBS_STOP_SECONDS), taking events a
            # supervisor's SIGKILL would leave to the claim of idle entries. Not on an error: RQ's loop starts again.
            self._stop_taking_work()
        if not self._places.wait_for_none(JOBS_STOP_SECONDS):
            log.warning("worker %s: stopping with %d job(s) still running; they are found abandoned and run again",
                        self.name, len(self._places.jobs()))
        super().teardown()

    def set_state(self, state: str, pipeline=None) -> None:
        """RQ's: the state is kept here and written to the worker's hash; Redis away, it is only kept here.

        The written state is for dashboards (`rq info`). RQ writes "idle" as it starts to wait for work,
        before the wait's own retries: a Redis error there ended its loop with a traceback, also when
        a stop signal had come. The wait's first step (our heartbeat) meets the same outage and
        waits for Redis with backoff, or stops. A state written in a pipeline fails with the pipeline.
        """
        if pipeline is not None:
            super().set_state(state, pipeline)
            return
        try:
            super().set_state(state)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("worker %s: its state not written, Redis unavailable (%s)", self.name, exc)

    def stop_scheduler(self) -> None:
        if self.scheduler is not None and self.scheduler._process is not None:
            self.scheduler.request_stop()
            self.scheduler._process.join(self.scheduler.interval + 5)

    @property
    def dequeue_timeout(self) -> int:
        return IDLE_WAKE_SECONDS

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        if job.timeout == -1:
            return DEFAULT_WORKER_TTL
        return int(job.timeout or DEFAULT_WORKER_TTL) + ABANDON_GRACE_SECONDS

    def work(self, burst: bool = False, **kwargs) -> bool:
        """RQ's loop, started again after a Redis error; the event consumer runs beside it (not in burst mode)."""
        # RQ installs its stop handlers only once its start-up is done, and the consumer and the poller
        # start before: a SIGTERM in between (honcho stopping a stack that is starting) killed the worker
        # outright, its poll leases left to expire. Until RQ's handlers take over, a stop signal is noted,
        # and RQ's loop stops at its first turn (it reads `_stop_requested`); a start-up that meets no
        # Redis is not started again (_work_until_stopped).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop_before_started)
        _lower_priority(int(self.config.get("WORKER_NICE") or 0))
        self._burst = burst
        metrics.batch(METRICS_BATCH_SECONDS)
        if not burst:
            self.consumer = self._start_consumer()
            if self.config.get("WORKER_POLLS") == "1":
                self.polling = Polling(self.config, with_scheduler=True, shard=self.shard)
                self.polling.start()
        heap.settle()  # what start-up built is no longer walked by the collector
        try:
            return self._work_until_stopped(burst, **kwargs)
        finally:
            if self.polling is not None:
                self.polling.stop_event.set()  # both wind down at once: a supervisor waits only seconds
            if self.consumer is not None:
                self.consumer.stop()
            if self.polling is not None:
                self.polling.stop(POLLING_STOP_SECONDS)

    def _stop_before_started(self, signum, frame) -> None:
        self._stop_requested = True  # nothing else in a signal handler: see workers/signals.py

    def _work_until_stopped(self, burst: bool, **kwargs) -> bool:
        backoff, base_name, restarts = 1.0, self.name, 0
        while True:
            try:
                worked = super().work(burst=burst, **kwargs)
                if burst or self._stop_requested:
                    return worked
                error = "RQ's loop stopped on an error"  # RQ logged it; it quits on any Redis error
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                error = str(exc)
            except StopRequested:
                return False  # a stop signal while RQ's loop was not running
            if self._stop_requested:
                # RQ's farewell (its registration's death) could not be written: the registration expires,
                # and what this worker took stays where another finds it (started registry, pending events).
                log.warning("worker %s: stopping while Redis is unreachable (%s)", self.name, error)
                return False
            log.warning("worker %s: %s; starting again in %.0fs", self.name, error, backoff)
            self._pause(backoff)
            if self._stop_requested:
                return False  # the stop came during the pause: no start-up against a Redis that is away
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            # The old registration may have outlived the outage (AOF): RQ refuses a second birth.
            restarts += 1
            self.name = f"{base_name}-{restarts}"

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested and time.monotonic() < deadline:
            time.sleep(0.1)

    def _start_consumer(self) -> EventConsumer:
        self._follow_workspaces()
        mine = self._following or []
        consumer = EventConsumer(redis_client(self.config), mine, name=self.name,
                                 pool_size=int(self.config["WORKER_THREADS"]),
                                 per_workspace=int(self.config["WORKER_THREADS_PER_WORKSPACE"]) or None,
                                 sample_seconds=float(self.config["SERIES_SAMPLE_SECONDS"]))
        consumer.start()
        log.info("worker %s: handling the events of %s with %d threads", self.name, ", ".join(mine) or "no workspace yet",
                 consumer.pool_size)
        return consumer


def _running_for(job) -> float:
    started = job.started_at
    return (now() - started).total_seconds() if started is not None else 0.0


def _past_timeout(job) -> bool:
    return (job.timeout or 0) > 0 and _running_for(job) > job.timeout  # -1: no time-out


def _lower_priority(nice: int) -> None:
    if nice > 0 and threading.current_thread() is threading.main_thread():
        try:
            os.nice(nice)
        except OSError:
            log.warning("could not lower the worker's CPU priority")
        _lower_autogroup(nice)


def _lower_autogroup(nice: int) -> None:
    """Lower the priority of the worker's scheduling group too, when the group is the worker's own.

    With Linux's autogroup on (the default on desktops and many servers), each session is a group
    and groups share the CPU equally: a process's own nice counts only inside its group. honcho and
    systemd start every process in a session of its own, so os.nice alone left the worker an equal
    share beside the web (a core of 2 while the web acked; bench/RESULTS.md section 15, "Acks").
    A group shared with other processes (a worker started from a shell) is left alone.
    """
    if os.getsid(0) != os.getpid():
        return
    try:
        with open("/proc/self/autogroup", "w") as group:
            group.write(str(nice))
    except OSError:  # no autogroup (not Linux, or a kernel without it): os.nice is all there is
        pass
