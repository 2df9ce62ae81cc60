"""Recovery: no run waits for a process that is gone.

Every run that is neither finished nor waiting for a person has a deadline in the workspace's
`runs:active` sorted set, written with the run record by workers/runs.py: when it should have
started, retried or ended its hold, plus a grace. Each worker sweeps the set every few seconds (workers/consumer/). An overdue run whose lock nobody holds and whose job no
longer waits its turn in RQ (`_job_waits`: a backlog is no lost executor) lost its executor (a killed
worker, an RQ job that was lost with its worker or with Redis): it gets a fresh RQ job, or a fresh
hold check. Run locks, the step ledger and run ids derived from (event, rule) make a second
executor harmless, so the sweeper may be early, never wrong. See docs/execution.md.

An attempt that Redis failed under (an outage, a restart) may end with its run's lock still held:
the round trip that gave it back, or its status with it, did not get through. Its worker knows the
attempt is over, so it keeps the lock's token (`abandoned`) and, once Redis answers, gives the lock
back if it is still its own and starts the run again (`give_back`): a Redis blip of seconds then
delays the run by seconds, not by its lease (45 s by default). A change-feed delivery's attempt does
the same (`left_behind`), rather than wait for its lock's time-out and its sweeper's grace (~75 s).

A run that met its InLoox down waits for it with backoff up to 30 minutes (workers/jobs.py); its workspace is noted
(`wait_for_inloox`) in the process that parked it and in Redis (OUTAGES), whence every worker following the
workspace learns it (`learn_outages`, a worker that started since too), and each asks InLoox at its maintenance with
one read whether it answers again (`inloox_back`, on threads of their own: an InLoox that hangs holds up no other
workspace). Once it does, those runs start at once rather than at the end of their backoff, which is why that
backoff may be long: a run's own tries during an outage cost an RQ job each (10,000 runs waiting took ~67 a second
with a 5-minute cap), and these questions one read per worker every few seconds.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import redis

from inloox.errors import InLooxError, Throttled
from workers import deliveries, enqueue, metrics, scripts, workspaces
from workers.enqueue import queue_run
from workers.holds import check_job_name, schedule_check
from workers.runs import ACTIVE, GRACE, is_active, load_run, load_trace, save_run, save_trace

log = logging.getLogger(__name__)

SWEEP_BATCH = 100
SWEEP_LEASE = 4  # seconds: one worker sweeps a workspace at a time
WAITING = "inloox:waiting"  # runs waiting for their InLoox to answer again: sorted set, run id -> resume time
WAITING_TTL = 3 * 24 * 3600  # ids of runs that were taken up otherwise go with it, whoever noted them
OUTAGES = "inloox:outages"  # set of the workspaces with runs in their WAITING (every workspace's: few at a time)
# The workspace is no longer noted once nothing waits: in one step, or a run parked in between would not be noted.
_OUTAGE_OVER = scripts.script("""
if redis.call('ZCARD', KEYS[1]) == 0 then return redis.call('SREM', KEYS[2], ARGV[1]) end
return 0
""")


def overdue(connection: redis.Redis, *, now: float, limit: int = SWEEP_BATCH) -> list[str]:
    """Ids of the current workspace's runs whose deadline has passed."""
    ids = connection.zrangebyscore(workspaces.key(ACTIVE), "-inf", now, start=0, num=limit)
    return [i.decode() for i in ids]


def sweep(connection: redis.Redis, workspace: workspaces.Workspace, *, now: float | None = None) -> list[str]:
    """Give every overdue run of `workspace` without a live executor a new start; returns their ids."""
    with workspaces.using(workspace):
        if not connection.set(workspaces.key("runs:sweeping"), 1, nx=True, ex=SWEEP_LEASE):
            return []  # another worker is sweeping right now
        now = time.time() if now is None else now
        restarted = []
        for run_id in overdue(connection, now=now):
            if _restart(connection, run_id, now):
                restarted.append(run_id)
        deliveries.sweep(connection, now=now)  # change-feed deliveries whose job was lost
        return restarted


def _restart(connection: redis.Redis, run_id: str, now: float) -> bool:
    active = workspaces.key(ACTIVE)
    lock_ttl = connection.pttl(workspaces.key(f"run-lock:{run_id}"))
    if lock_ttl > 0:  # an executor holds it: look again when its lease would have run out
        connection.zadd(active, {run_id: now + lock_ttl / 1000 + 1})
        return False
    run = load_run(connection, run_id)
    if run is None or not is_active(run):
        connection.zrem(active, run_id)
        return False
    if _job_waits(connection, run):
        # Its job waits its turn (queued behind a backlog, scheduled while no scheduler runs, held back by its rule's
        # `concurrency`; a held run's check scheduled again while InLoox is down): not lost. Started again now, it
        # would be a job more beside it at every look for as long as the backlog lasts, each a false `executor_lost`.
        connection.zadd(active, {run_id: now + GRACE})
        return False
    if not _start_again(connection, run, now, why="executor_lost"):
        return False
    log.warning("run %s (%s) was %s past its deadline with no executor: started again",
                run_id, run["rule_id"], run["status"])
    return True


def _job_waits(connection: redis.Redis, run: dict) -> bool:
    """Whether a job that will move the run on is still to run: a held run's check; any other run's first job
    (named after the run: a run with `concurrency`, one a hold's end or a `for_each` started), or the job last
    queued for it with its record (`job`: a retry's, a released limit's, a person's, the sweeper's)."""
    names = [check_job_name(run)] if run["status"] == "held" else [run["id"], *([run["job"]] if run.get("job") else [])]
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(*enqueue.job_status_key(name))
        return any(enqueue.waiting(status) for status in pipe.execute())


def _start_again(connection: redis.Redis, run: dict, now: float, *, why: str) -> bool:
    """Queue the run again (a hold check for a held one), counted as `runs_restarted{why}`: an operator sees
    how often workers die under runs (`executor_lost`) or Redis fails under them (`redis_failed`). False, and
    nothing done, when an executor took the run's lock meanwhile or the run moved on.

    The new job is named in the run's record (`job`), so that the next look finds it waiting its turn. The record
    is written under the run's lock, taken for that moment: read before an executor's last write and written after
    it, it would undo that write. A held run's check is named after the record already (holds.check_job_name)."""
    if run["status"] == "held":
        with connection.pipeline(transaction=False) as pipe:
            pipe.zadd(workspaces.key(ACTIVE), {run["id"]: now + GRACE})
            metrics.count(pipe, "runs_restarted", why=why)
            pipe.execute()
        schedule_check(connection, run)
        return True
    lock = connection.lock(workspaces.key(f"run-lock:{run['id']}"), timeout=SWEEP_LEASE, blocking=False)
    if not lock.acquire():
        return False  # an executor has it now
    try:
        run = load_run(connection, run["id"])  # under the lock: as its last executor left it
        if run is None or not is_active(run) or run["status"] == "held":
            return False
        run["job"] = f"{run['id']}-sweep{int(now)}"
        with connection.pipeline(transaction=False) as pipe:
            save_run(pipe, run, now=datetime.fromtimestamp(now, timezone.utc))  # its deadline with it
            metrics.count(pipe, "runs_restarted", why=why)
            scripts.call(pipe, lock.lua_release, keys=[lock.name], args=[lock.local.token])
            pipe.execute()
        lock.local.token = None  # given back with the record, before the job that takes it can start
    finally:
        if lock.local.token is not None:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass  # it ran out: nothing of ours to give back
    queue_run(connection, run, job_id=run["job"])
    return True


@dataclass(frozen=True)
class _Abandoned:
    workspace: workspaces.Workspace
    key: str  # the lock of a run (or of a delivery)
    token: bytes
    name: str  # the run's id (or the delivery's)
    until: float  # when its lease runs out (monotonic): the lock is nobody's then anyway
    again: Callable[[redis.Redis], bool]  # starts the work again, once its lock is given back (True if it did)


_abandoned: list[_Abandoned] = []
_abandoned_lock = threading.Lock()


def abandoned(key: str, token: bytes, run_id: str, lease: float) -> None:
    """The attempt at `run_id` on this thread is over (nothing of it is in flight) and Redis failed before it
    gave back the lock `key` it holds with `token` (which runs out within `lease` seconds): `give_back` does it,
    and starts the run again unless it finished or waits for a retry's time. Called inside the run's workspace."""
    left_behind(key, token, run_id, lease, functools.partial(_run_again, run_id=run_id))


def left_behind(key: str, token: bytes, name: str, lease: float, again: Callable[[redis.Redis], bool]) -> None:
    """As `abandoned`, for any work held by a lock (a change-feed delivery, `name`): once the lock is given back,
    `again(connection)` queues the work again if it still has to be done (True when it did). Called inside its
    workspace."""
    gone = _Abandoned(workspaces.current(), key, token, name, time.monotonic() + lease, again)
    with _abandoned_lock:
        _abandoned.append(gone)


def give_back(connection: redis.Redis) -> list[str]:
    """Give back the locks attempts here left behind (`abandoned`, `left_behind`) that are still theirs, and start
    that work again now unless it is done or waits for its time; the ids (of runs, of deliveries) started. Raises
    what Redis raised (those not yet given back are kept for the next call)."""
    with _abandoned_lock:
        if not _abandoned:
            return []
        now = time.monotonic()
        todo = [gone for gone in _abandoned if gone.until > now]
        _abandoned.clear()
    started = []
    for i, gone in enumerate(todo):
        try:
            if _given_back(connection, gone):
                started.append(gone.name)
        except redis.RedisError:
            with _abandoned_lock:
                _abandoned.extend(todo[i:])
            raise
        except Exception:  # a record that cannot be read: that run's lease runs out, the others go on
            log.exception("%s: its lock, left by an attempt Redis cut short, could not be given back; "
                          "it is taken up again when its lease runs out", gone.name)
    return started


def _given_back(connection: redis.Redis, gone: _Abandoned) -> bool:
    # redis-py's Lock releases by token (GET and DEL in one script): a lock another executor took since is left.
    lock = connection.lock(gone.key, thread_local=False)
    lock.local.token = gone.token
    try:
        lock.release()
    except redis.exceptions.LockError:
        return False  # given back after all (the round trip did get through), or run out
    with workspaces.using(gone.workspace):
        return gone.again(connection)


def _run_again(connection: redis.Redis, *, run_id: str) -> bool:
    run = load_run(connection, run_id)
    if run is None or not is_active(run) or (run.get("resume_at") or 0) > time.time():
        return False  # finished, or waiting for a retry's time: its deadline stands
    if not _start_again(connection, run, time.time(), why="redis_failed"):
        return False  # another executor took it meanwhile
    log.warning("run %s (%s): its attempt here was cut short by Redis; its lock given back, started again",
                run["id"], run["rule_id"])
    return True


_outages: dict[str, workspaces.Workspace] = {}  # workspaces this process parked runs of, while InLoox was down
# After runs were started because InLoox answered, the next start waits this long, doubling each time (up to 5
# min): an InLoox that answers our question but not the runs' requests (reads served, writes refused in a
# maintenance) must not have them retried at every look.
_next_start: dict[str, tuple[float, float]] = {}  # workspace -> (monotonic time of the next start allowed, gap)
FIRST_GAP, MAX_GAP = 5.0, 300.0
MAX_STARTED = 10_000  # runs started at one answer (a round trip each, off the loop); the rest at the next
_outages_lock = threading.Lock()


def wait_for_inloox(pipe, run_id: str, resume_at: float) -> None:
    """Queue, with the run's `retrying` status, that it waits for the current workspace's InLoox (`inloox_back`)."""
    waiting = workspaces.key(WAITING)
    workspace = workspaces.current()
    pipe.zadd(waiting, {run_id: resume_at})
    pipe.expire(waiting, WAITING_TTL)
    pipe.sadd(OUTAGES, workspace.name)
    with _outages_lock:
        _outages[workspace.name] = workspace


def not_waiting(pipe, run_id: str) -> None:
    """Queue that the run no longer waits for InLoox (it answered the run, with an error of another kind)."""
    pipe.zrem(workspaces.key(WAITING), run_id)


def learn_outages(connection: redis.Redis, followed: Callable[[str], workspaces.Workspace | None]) -> None:
    """Note the workspaces whose runs wait for their InLoox (OUTAGES) among those `followed` names here (the
    workspace, or None), also when another process parked them: its questions are asked here too, and a worker that
    stopped or died during the outage does not take them with it."""
    for name in connection.smembers(OUTAGES):
        workspace = followed(name.decode())
        if workspace is not None:
            with _outages_lock:
                _outages.setdefault(workspace.name, workspace)


def parked(workspace: str) -> bool:
    """Whether runs of `workspace` were parked here while its InLoox was down (and not all taken up since)."""
    return workspace in _outages


def inloox_back(connection: redis.Redis, workspace: workspaces.Workspace, probe) -> list[str]:
    """If runs of `workspace` were parked here while its InLoox was down: ask InLoox (`probe`, one cheap read) and,
    once it answers, start every run waiting for it now; their ids. Nothing while InLoox is still down, or while
    our own request budget says wait. The caller asks one question of a workspace at a time (workers/consumer/)."""
    with _outages_lock:
        allowed, _ = _next_start.get(workspace.name, (0.0, 0.0))
        if workspace.name not in _outages or time.monotonic() < allowed:
            return []
    try:
        with workspaces.using(workspace):
            try:
                probe()
            except InLooxError as exc:
                if exc.unavailable or isinstance(exc, Throttled):
                    return []  # still down (or not now): the runs keep their backoff
            return _take_up_waiting(connection, workspace)
    except Exception:  # Redis away, or a bug: asked again at the next look; the runs keep their backoff meanwhile
        log.warning("runs of %s waiting for InLoox: could not look whether it answers again", workspace.name,
                    exc_info=True)
        return []


def _take_up_waiting(connection: redis.Redis, workspace: workspaces.Workspace) -> list[str]:
    waiting = workspaces.key(WAITING)
    ids = [i.decode() for i in connection.zrange(waiting, 0, MAX_STARTED - 1)]
    if not ids:  # each was taken up, and none met InLoox down again: the outage is over
        scripts.call(connection, _OUTAGE_OVER, keys=[waiting, OUTAGES], args=[workspace.name])
        with _outages_lock:
            _outages.pop(workspace.name, None)
            _next_start.pop(workspace.name, None)
        return []
    now, started = time.time(), []
    for run_id in ids:
        # Taken by the process whose ZREM removed it: several ask at once. One that meets InLoox down again is noted again.
        if not connection.zrem(waiting, run_id):
            continue
        run = load_run(connection, run_id)
        if run is None or run["status"] != "retrying":
            continue  # taken up by its own retry meanwhile
        queue_run(connection, run, job_id=f"{run_id}-back{int(now)}")
        started.append(run_id)
    if started:
        log.info("InLoox of %s answers again: %d run(s) waiting for it started now", workspace.name, len(started))
        with _outages_lock:
            _, gap = _next_start.get(workspace.name, (0.0, 0.0))
            gap = min(MAX_GAP, gap * 2 if gap else FIRST_GAP)
            _next_start[workspace.name] = (time.monotonic() + gap, gap)
    return started


def record_unhandled(connection: redis.Redis, workspace: workspaces.Workspace, event: dict, reason: str, *,
                     entry_id: str | None = None, keep_error: bool = False) -> None:
    """Keep, as the event's trace, that it could not be handled (shown by `flask events show` and the dashboard).

    `keep_error`: the error an earlier failed handling kept in the trace is kept in the new reason.
    """
    with workspaces.using(workspace):
        if keep_error:
            earlier = load_trace(connection, event["id"]) or {}
            if earlier.get("error"):
                reason = f"{reason}; last error: {earlier['error']}"
        report = {"event": event, "not_candidates": 0, "skipped": [], "rules": [], "error": reason, "entry": entry_id}
        with connection.pipeline(transaction=False) as pipe:
            save_trace(pipe, report, [], now=datetime.now(timezone.utc))
            pipe.execute()
