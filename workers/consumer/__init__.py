"""The event consumer: a worker's loop over its workspaces' event logs, many events in flight at once.

One thread reads new entries in batches (XREADGROUP, one round trip for every workspace) and hands
each event to a thread pool, which matches it and runs its runs (workers.jobs.handle). Runs spend
their time waiting on InLoox, so one process keeps many of them in flight: as many as InLoox's
answers reward, up to `pool_size` (`in_flight.py`); when they wait for this process's CPU instead,
a few threads each take several events of one workspace, one after the other, and at the busy floor
(where a worker starts) one thread takes up to 16 events of every workspace, in turns, and runs them
together (workers.jobs.handle_together). Against a slow InLoox (the limit at FLOOR or above) the events
go to the lane instead of a thread each: batches of up to 16, every one in flight at once on one
thread's loop (inloox/together.py), each event a place of the limit; each
workspace's InLoox request budget is enforced at the client (workers/throttle.py), and the reader
takes at most `per_workspace` new events of one workspace per batch, so a busy account cannot fill
the pool alone. On the lane, a workspace with nothing in flight is read even while every place is held
(by another's events waiting out a hung InLoox), its event put beyond the limit (`_read_idle`).

Events that trickle in (a read brought a few, and there was room for more) are read every LINGER_SECONDS
at most, so that those arriving meanwhile are handled as one batch rather than each alone.

An entry is acknowledged once its event was handled: its runs are stored and ended or handed on
(retry, hold, concurrency queue). Until then it stays pending under this worker's name. Every few
seconds the loop
- touches the entries it is still handling (so nobody takes them over),
- takes over entries another worker has left unacknowledged for CLAIM_IDLE seconds (it died), and
  handles them again: run ids depend only on the event and the rule, and every write goes through
  the step ledger, so handling an event twice never writes twice;
- gives up on an entry delivered MAX_DELIVERIES times (an event that crashes every worker), keeping
  its error as the event's trace, so one bad event cannot stall the log;
Whatever goes wrong while handling one event (an encoding, a template, a bug) is kept as that
event's trace at once and counted (`events_failed`), and the loop goes on; an error in the loop
itself is logged and the loop starts its next turn, and the worker starts a consumer thread again
should it ever end (workers/worker.py).
- trims the log (workers/eventlog.py) and requeues overdue runs (workers/recovery.py);
- asks a workspace's InLoox whether it answers again, if runs were parked here while it was down, and
  starts them once it does (workers/recovery.py, on threads of their own);
- every `sample_seconds`, records the gauges the dashboard charts (workers/gauges.py).
A quiet workspace (no activity stamp for a minute, workers/activity.py, and nothing of it
in flight here) is looked after every QUIET_MAINTENANCE_SECONDS instead: most workspaces of a hosted
service are idle, and five housekeeping commands each every 5 s were most of what an idle one cost
Redis. Anything that makes work for it (an event accepted, a person on its dashboard) stamps it
active first; what a quiet look can be late for is a safety net (a run or delivery whose executor
died long after its event, a run waiting over a limit raised meanwhile): ≤ 30 s later than before.
One workspace's log that Redis refuses (WRONGTYPE: something else written under its key) is set aside for
REFUSED_SECONDS and the others are read meanwhile (one read covers them all, and that one log failed it for every
workspace); one whose log is gone under a read (its workspace deleted, the worker not told yet) is set aside for
GONE_SECONDS, and made again only if its workspace is still served then; housekeeping of one workspace that fails
other than by an outage is logged, and the others are looked after all the same. A Redis outage pauses the loop with
backoff; nothing is acknowledged that was not handled. Once Redis answers again, the loop gives back the run locks of
attempts the outage cut short (workers/recovery.py) and hands out again, at once, the events whose handling it cut
short (rather than CLAIM_IDLE later).
Of the threads in flight, at most a few run this process's own work at once; the others wait for
answers or for a place (gate.py).
"""
from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import redis

from inloox import together
from inloox.connections import exchanges
from workers import activity, eventlog, failpoints, gauges, metrics, recovery
from workers.consumer.gate import GATE
from workers.consumer.in_flight import TOGETHER, InFlightLimit
from workers.eventlog import Entry
from workers.metering import limits
from workers.jobs import Arrival, handle_batch, handle_together
from workers.worker_context import Compiling, served, worker_context
from workers.workspaces import using

log = logging.getLogger(__name__)

CLAIM_IDLE = 20.0  # seconds an entry may go unacknowledged and untouched (its worker touches it every 5 s)
MAINTENANCE_SECONDS = 5.0
TRIM_SECONDS = 30.0
# How often a trim also deletes the consumers of workers gone (eventlog.CONSUMER_FORGET_MS): they only pile up
# with restarts, and the look (XINFO CONSUMERS) at every trim of every quiet workspace was a command more each.
FORGET_SECONDS = 600.0
MAX_DELIVERIES = 5
READ_BLOCK_MS = 500
MAX_BACKOFF = 5.0  # a Redis back from a restart is used again within seconds
SAMPLE_SECONDS = 60.0  # the dashboard's charts show gauges per minute
STALL_SECONDS = 30.0  # a loop that has not turned for this long is not running (/readyz says so)
FAILING_SECONDS = 5.0  # a loop whose every turn failed for this long is not running either
QUIET_MAINTENANCE_SECONDS = 30.0
# A workspace's log that Redis refuses (WRONGTYPE: something else was written under its key) is left aside this long,
# then tried again: one read covers every workspace, and one refused log failed it for all of them.
REFUSED_SECONDS = 10.0
# A workspace's log gone under a read (NOGROUP: its workspace deleted a moment ago, the worker not told yet) is left
# aside this long: the registry's view is re-read within a second, and a workspace still served then has its log made
# again. Read on, the one missing log failed every workspace's read, each a second apart, until the worker followed.
GONE_SECONDS = 2.0
QUESTION_THREADS = 4  # threads asking down InLoox accounts whether they answer again (each bounded by INLOOX_TIMEOUT)
# After a read that brought a few events and left none behind (a trickle: a quiet worker's events come one at a
# time), the next read waits this long first, so that those arriving meanwhile are read, planned, stored and ended
# together: at 200 events a second, each read brought one and each batch of one paid alone for what a batch costs,
# ~2 ms of the worker's CPU per event against ~0.9 in a busy batch (bench/RESULTS.md section 31). Kafka's
# producers do the same (linger.ms). A workspace that gave a read all it asked of it, twice in a row, has a
# backlog: no linger then (`_trickle`). 50 ms rather than 20: ~10 events a batch at 200/s instead of ~4, the
# worker's CPU 17-20 % lower again (section 31); an event still reaches its rule well within the time InLoox takes
# to answer its write.
LINGER_SECONDS = 0.050


@dataclass
class _Stream:
    workspace: str
    key: str
    handling: set[str] = field(default_factory=set)  # entry ids in the pool now
    done: list[str] = field(default_factory=list)  # handled, to acknowledge
    next_quiet_look: float = 0.0  # monotonic time of the next housekeeping while the workspace is quiet
    # No longer served (paused, deleted, another shard's), kept only until its events in flight are done and
    # acknowledged: neither read nor looked after. A deleted workspace's log and group are gone, and the worker
    # knows it no more: read (NOGROUP), its group made again, or looked after (no such workspace), each turn failed
    # before it read any workspace's events, for as long as that workspace's last event ran (up to a lease).
    let_go: bool = False
    # Redis refused this workspace's log (a key of another type in its place; see `_refused`): neither read nor
    # looked after until then (monotonic), so that the other workspaces' events go on being read.
    refused_until: float = 0.0
    gone: bool = False  # set aside because its log was missing (GONE_SECONDS), not refused: /readyz does not name it


class EventConsumer:
    """Reads the event logs of `workspaces` as `name` and handles their events on a pool of `pool_size` threads."""

    def __init__(self, connection: redis.Redis, workspaces: list[str], *, name: str, pool_size: int,
                 per_workspace: int | None = None, sample_seconds: float = SAMPLE_SECONDS):
        self.connection = connection
        self.name = name
        self.pool_size = max(1, pool_size)
        self.per_workspace = per_workspace or self.pool_size
        self.streams = {eventlog.stream_key(w): _Stream(w, eventlog.stream_key(w)) for w in workspaces}
        self._wanted: list[str] | None = None  # the workspaces to serve from the next turn on (follow)
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._in_flight = 0
        self._stop = threading.Event()
        self.limit = InFlightLimit(self.pool_size)  # how many of the pool's threads to keep busy now
        exchanges.gate = GATE  # of those, how many run at once: the others wait for answers or a place
        self._pool = ThreadPoolExecutor(self.pool_size, thread_name_prefix="event")  # threads start as needed
        # Batches run together (the busy floor's, one at a time) always on this one thread: each thread that
        # runs one keeps an event loop and its InLoox connections open for good (inloox/together.py), and
        # the pool's hundreds of threads taking turns would each keep theirs.
        self._together = ThreadPoolExecutor(1, thread_name_prefix="events-together")
        # Against a slow InLoox (the limit at FLOOR or above), events run on a lane instead of a thread each:
        # one thread whose loop has every batch in flight at once (inloox/together.py), bounded in events by
        # the limit. Hundreds of threads each awaiting one answer spent the worker's CPU on handing the GIL
        # around (bench/RESULTS.md section 30).
        self._lane = together.Lane("events-lane")
        # Whether a down InLoox answers again is asked on threads of their own (workers/recovery.py): on the
        # events' pool, accounts whose InLoox hangs would each hold a thread other workspaces' events wait for.
        self._questions = ThreadPoolExecutor(QUESTION_THREADS, thread_name_prefix="inloox-back")
        self._asking: set[str] = set()  # workspaces whose question is queued or being asked (one at a time)
        self._thread: threading.Thread | None = None
        self._next_maintenance = 0.0
        self._claim_soon: set[str] = set()  # streams whose last claim may have left more to take over
        self._cut_short: list[tuple[str, Entry]] = []  # (stream key, entry) whose handling lost Redis: again soon
        self._again: set[str] = set()  # entry ids handed out again so (once: then the claim, which counts them)
        self._to_compile: list[tuple[str, Entry]] = []  # (stream key, entry) whose rules compile first: `_compile_apart`
        self._next_trim = 0.0
        self._next_forget = 0.0
        self.sample_seconds = sample_seconds
        self._next_sample = 0.0
        self._last_turn = time.monotonic()
        self._failing_since: float | None = None  # when the loop's turns began to fail (None: the last one worked)
        self._linger = False  # the last read brought a few events: let more gather before the next
        self._full: set[str] = set()  # the streams that gave the last read all it asked of them
        self._aside: set[str] = set()  # the streams set aside (Redis refused them), not tried again since

    def start(self) -> None:
        """Run the loop on a thread of its own (the RQ worker's main thread keeps taking RQ jobs)."""
        self._thread = threading.Thread(target=self.run, name="event-consumer", daemon=True)
        self._thread.start()

    def follow(self, workspaces: list[str]) -> None:
        """Serve these workspaces' event logs from the loop's next turn (one created, resumed, paused or deleted)."""
        with self._lock:
            self._wanted = list(workspaces)

    def running(self) -> bool:
        """The loop's thread is alive and turned within STALL_SECONDS (each turn takes ≤ READ_BLOCK_MS when idle)."""
        now = time.monotonic()
        return (self._thread is not None and self._thread.is_alive() and now - self._last_turn < STALL_SECONDS
                and (self._failing_since is None or now - self._failing_since < FAILING_SECONDS)
                and self._lane.trouble() is None and not self._serves_none())

    def trouble(self) -> str:
        """Why `running()` is False: "stopped" (no thread), "failing" (every turn errs), "stalled", or why
        its lane does not run its batches ("event lane stalled")."""
        if self._thread is None or not self._thread.is_alive():
            return "stopped"
        lane = self._lane.trouble()
        if lane is not None and self._failing_since is None and time.monotonic() - self._last_turn < STALL_SECONDS:
            return f"event lane {lane}"
        return "failing" if self._failing_since is not None or self._serves_none() else "stalled"

    def _serves_none(self) -> bool:
        """Every workspace's log is set aside (Redis refuses each): the loop turns, and handles nothing. Some of them:
        the others are served, and the worker says which are not (`refused`), as ready."""
        now = time.monotonic()
        kept = [stream for stream in self.streams.values() if not stream.let_go]
        return bool(kept) and all(stream.refused_until > now for stream in kept)

    def keep_running(self) -> bool:
        """Start the loop's thread again if it ended without being stopped, and its lane's; True if it had to."""
        if not self._stop.is_set() and self._lane.keep_running():
            log.error("event consumer %s: its lane's loop had ended; starting it again", self.name)
        if self._stop.is_set() or self._thread is None or self._thread.is_alive():
            return False
        log.error("event consumer %s: its thread had ended; starting it again", self.name)
        self.start()
        return True

    def stop_reading(self) -> None:
        """Read no more events (the loop ends within READ_BLOCK_MS); `stop` waits for the rest."""
        self._stop.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop reading, let the events in flight finish (up to `timeout`), acknowledge them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._together.shutdown(wait=True, cancel_futures=True)
        self._questions.shutdown(wait=False, cancel_futures=True)
        self._lane.shutdown()
        try:
            self._flush_acks()
            metrics.flush(self.connection)
        except redis.RedisError as exc:
            # Stopping while Redis is away: the unacknowledged events are taken over by another worker.
            log.warning("event consumer %s: could not acknowledge on the way out (%s)", self.name, exc)

    def run(self) -> None:
        """The loop: read, hand out, acknowledge, maintain; riding out Redis outages."""
        backoff = 1.0
        ready = False
        while not self._stop.is_set():
            try:
                if self._take_wanted():
                    ready = False
                if not ready:
                    for stream in self._served():
                        self._apart(stream, eventlog.ensure_group, self.connection, stream.key)
                    ready = True
                self._take_back()
                self._cycle()
                self._failing_since = None
                backoff = 1.0
            except redis.RedisError as exc:
                if not isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) and self._failing_since is None:
                    # Redis answered and refused (a key of the wrong type, out of memory, a read-only replica): no
                    # outage that /readyz's own check of Redis shows, and it may refuse every turn from now on.
                    self._failing_since = time.monotonic()
                log.warning("event consumer %s: Redis error (%s); retrying in %.0fs", self.name, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                ready = False  # a restarted Redis without its data has no group: make it again
            except Exception:  # a bug in the loop itself: never the end of every later event
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                log.exception("event consumer %s: error in its loop; going on in %.0fs", self.name, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _cycle(self) -> None:
        failpoints.hit("consumer_turn", subject=self.name)  # tests only (inert unless ENGINE_FAILPOINTS is set)
        self._last_turn = time.monotonic()
        metrics.flush_due(self.connection)
        recovery.give_back(self.connection)  # run locks left behind when Redis failed under their attempts
        self._hand_out_cut_short()
        self._compile_apart()
        if time.monotonic() >= self._next_maintenance:
            self._maintain()
        if self._linger:
            self._stop.wait(LINGER_SECONDS)
        free = self._wait_for_space()
        if not free and self._how() == "lane":
            if not self._read_idle():
                self._flush_acks()  # what was handled meanwhile, acknowledged as when nothing is read
            return
        readable = self._readable() if free else []
        if not readable:  # no room; or no workspace served now, or every one paused
            self._flush_acks()
            if free:
                self._stop.wait(READ_BLOCK_MS / 1000)
            return
        self._claim_again()
        per_thread = self.limit.batch()
        if self.limit.together():
            # A busy worker's batches run together on one thread (in_flight.py): each takes `per_thread`
            # events of every workspace, in turns, so that a quiet workspace's event runs beside a noisy
            # one's instead of waiting behind its batch.
            count = max(self._least(), min(self.per_workspace, free * per_thread // len(readable)))
            batch = self._read(readable, count, room=free * per_thread, most=self.per_workspace)
            self._linger = self._trickle(batch, count)
            self._hand_out_mixed(batch, per_thread, how="together")
            return
        # A fair share of the free threads for each workspace, handed out in turns (one of each
        # workspace, then the next of each), so one with a backlog cannot go ahead of the others.
        # A thread takes `per_thread` events of one workspace, one after the other (in_flight.py).
        share = max(self._least(), min(self.per_workspace, free // len(readable)))
        batch = self._read(readable, share * per_thread, room=free * per_thread, most=self.per_workspace * per_thread)
        self._linger = self._trickle(batch, share * per_thread)
        if self._how() == "lane":  # the free places are events: up to TOGETHER of any workspaces per batch
            self._hand_out_mixed(batch, TOGETHER, how="lane")
            return
        for stream_key, entries in _in_turns(_chunks(batch, per_thread)):
            self._submit(self.streams[stream_key], entries)

    def _read_idle(self) -> bool:
        """No place free on the lane (a slow InLoox's mode, where each event holds a place until its answer): still
        read the workspaces with nothing in flight, `_least` events each, without waiting, and put them on the lane
        beyond the limit. One customer whose InLoox hangs fills every place with events that wait out the InLoox
        time-out, and another's events used to wait for them (10 s with the default INLOOX_TIMEOUT). Beyond the
        limit by at most that many events per workspace; the limit itself is left to grow as its answers say.
        Whether it read (the handled entries are acknowledged in the same round trip)."""
        with self._lock:
            idle = [key for key, stream in self.streams.items() if not stream.handling]
        readable = [key for key in self._readable() if key in idle] if idle else []
        if not readable:
            return False
        batch = self._read(readable, self._least(), room=0, most=self._least(), block_ms=None)
        self._hand_out_mixed(batch, TOGETHER, how="lane")
        return True

    def _readable(self) -> list[str]:
        """The logs to read this turn: not those of a workspace paused since the worker last followed the registry.

        The worker follows the registry between RQ jobs (up to IDLE_WAKE_SECONDS apart, longer while
        a job runs); a pause must hold from the next read on, so each turn asks the registry's view
        (re-read within a second, workers/registry) itself.
        """
        try:
            known = served().workspaces()
        except Exception:  # the view could not be read now: the worker's own following still applies
            log.warning("event consumer %s: could not read the workspace registry", self.name, exc_info=True)
            return [stream.key for stream in self._served()]
        return [stream.key for stream in self._served()
                if not (stream.workspace in known and known[stream.workspace].paused)]

    def _take_wanted(self) -> bool:
        """Apply `follow`: streams added; streams let go once their events in flight are done and acknowledged.

        True when streams were added (their consumer group is made before the next read).
        """
        with self._lock:
            wanted, self._wanted = self._wanted, None
        if wanted is None:
            return False
        keys = {eventlog.stream_key(w): w for w in wanted}
        added = [k for k in keys if k not in self.streams or self.streams[k].let_go]
        for key in added:
            self.streams[key] = self.streams.get(key) or _Stream(keys[key], key)
            self.streams[key].let_go = False  # served again (resumed) before its last events were done
        for key in [k for k in self.streams if k not in keys]:
            stream = self.streams[key]
            with self._lock:
                busy = bool(stream.handling or stream.done)
            if busy:  # its events in flight finish first; try again at the next turn
                stream.let_go = True
                with self._lock:
                    self._wanted = self._wanted if self._wanted is not None else wanted
                continue
            del self.streams[key]
        return bool(added)

    def _wait_for_space(self) -> int:
        with self._space:
            # The oldest wait for an answer, not the oldest event: an event of a worker short of CPU takes
            # seconds at times (its thread waits for the GIL and a place), and taking that for an answer
            # that does not come sent a busy worker back to a thread per event, its dearest way (section 25).
            limit = self.limit.observe(self._in_flight, longest=exchanges.oldest_wait())
            if self._in_flight >= limit:
                self._space.wait(0.2)
            return max(0, limit - self._in_flight)

    def _how(self) -> str:
        """Where events go now: "together" (the busy floor's thread), "lane" (a slow InLoox's) or "pool"."""
        if self.limit.together():
            return "together"
        return "lane" if self.limit.value >= self.limit.floor else "pool"

    def _submit(self, stream: _Stream, entries: list[Entry], *, how: str = "pool") -> None:
        """Hand `entries` (of one stream) to one thread of the pool, which handles them one after the other,
        or as `_hand_out` does for `how`."""
        self._hand_out([(stream, entry) for entry in entries], how=how)

    def _hand_out(self, items: list[tuple[_Stream, Entry]], *, how: str) -> None:
        """Hand `items` to one thread: the pool's, one after the other (one stream's; "compile": outside the in-flight
        limit), or the one that runs batches together (of any streams, "together"); or to the lane as one batch among
        many ("lane"), each of its events one place of the in-flight limit."""
        with self._lock:
            items = [(stream, entry) for stream, entry in items if entry.id not in stream.handling]
            if not items:
                return
            for stream, entry in items:
                stream.handling.add(entry.id)
            weight = len(items) if how == "lane" else 0 if how == "compile" else 1
            self._in_flight += weight
        groups: dict[str, tuple[_Stream, list[Entry]]] = {}
        for stream, entry in items:
            groups.setdefault(stream.key, (stream, []))[1].append(entry)
        items = [(stream, entry) for stream, entries in groups.values() for entry in entries]  # as handled
        batches = [(s.workspace, es) for s, es in groups.values()]
        if how == "together":
            future = self._together.submit(_handle_together, batches)
        elif how == "lane":
            future = self._lane.submit(lambda: _handle_on_lane(batches))
        else:
            (stream, entries), = groups.values()
            future = self._pool.submit(_compile_events if how == "compile" else _handle_events, stream.workspace,
                                       entries)
        future.add_done_callback(lambda f, i=items, w=weight: self._finished(i, f, weight=w))

    def _hand_out_mixed(self, batch: list[tuple[str, Entry]], size: int, *, how: str) -> None:
        """Hand `batch` out in batches of `size` events of any workspaces, taken in turns."""
        mixed = [(self.streams[key], entry) for key, entry in _in_turns(batch)]
        for i in range(0, len(mixed), size):
            self._hand_out(mixed[i:i + size], how=how)

    def _finished(self, items: list[tuple[_Stream, Entry]], future: Future, *, weight: int = 1) -> None:
        if future.cancelled():
            errors = [None] * len(items)
        else:  # what each entry raised; or, should the thread itself have failed, that for all of them
            errors = future.result() if future.exception() is None else [future.exception()] * len(items)
        cut_short, to_compile = [], []
        for (stream, entry), error in zip(items, errors):
            if isinstance(error, Compiling):  # not handled: its workspace's rules compile first, on a thread apart
                to_compile.append((stream.key, entry))
            elif error is not None:
                # Left pending: another delivery (after CLAIM_IDLE) tries again, up to MAX_DELIVERIES; or, when
                # Redis went away under it, this worker once Redis answers (`_hand_out_cut_short`).
                log.error("event %s (%s) not handled: %r", entry.event.get("id"), stream.workspace, error,
                          exc_info=error if not isinstance(error, redis.RedisError) else None)
                if isinstance(error, (redis.ConnectionError, redis.TimeoutError)) and entry.id not in self._again:
                    cut_short.append((stream.key, entry))
                elif not isinstance(error, redis.RedisError):
                    _note_failure(self.connection, stream, entry, error)
        with self._space:
            if self._again:
                self._again.difference_update(entry.id for _, entry in items)
            if cut_short:
                self._again.update(entry.id for _, entry in cut_short)
                self._cut_short += cut_short
            self._to_compile += to_compile
            for (stream, entry), error in zip(items, errors):
                stream.handling.discard(entry.id)
                if not future.cancelled() and error is None:
                    stream.done.append(entry.id)
            self._in_flight -= weight
            self._space.notify()

    def _hand_out_cut_short(self) -> None:
        """Hand out again the events whose handling Redis failed under, once it answers (a turn whose first
        commands worked; else this turn fails and the loop backs off): the outage, not the event, was at fault,
        and waiting for CLAIM_IDLE would add 20 s to every event of a seconds-long outage. Handled twice (had
        another worker claimed it meanwhile) it writes nothing twice, as after any claim. Once per event: one
        that meets Redis away again is left to the claim, which counts its deliveries (an event that somehow
        brings Redis down each time is given up on, not handed out again at every return)."""
        if not self._cut_short:
            return
        self.connection.ping()
        with self._lock:
            todo, self._cut_short = self._cut_short, []
            self._again.difference_update(entry.id for key, entry in todo if key not in self.streams)
        by_stream: dict[str, list[Entry]] = {}
        for key, entry in todo:
            if key in self.streams and not self.streams[key].let_go:  # the others: claimed by a worker serving them
                by_stream.setdefault(key, []).append(entry)
        how = self._how()
        size = TOGETHER if how == "lane" else self.limit.batch()
        for key, entries in by_stream.items():
            log.info("event consumer %s: %d event(s) of %s whose handling Redis cut short, handled again",
                     self.name, len(entries), self.streams[key].workspace)
            for i in range(0, len(entries), size):
                self._submit(self.streams[key], entries[i:i + size], how=how)

    def _compile_apart(self) -> None:
        """Hand the events whose workspace's rules must be compiled first (a large bundle just activated: 5-8 s of CPU
        for 1 MB) to threads of the pool, outside the in-flight limit: one compiles them, and each handles its events
        then. On the busy floor's thread or the lane every other workspace's events waited for the compile (8-24 s
        on a loaded 2-core machine); now they share the CPU with it. Entries of a workspace no longer served are left
        pending, for the worker that serves it to take over."""
        with self._lock:
            todo, self._to_compile = self._to_compile, []
        by_stream: dict[str, list[Entry]] = {}
        for key, entry in todo:
            if key in self.streams and not self.streams[key].let_go:  # let go: paused or deleted, nothing of it runs
                by_stream.setdefault(key, []).append(entry)
        for key, entries in by_stream.items():
            self._submit(self.streams[key], entries, how="compile")

    def _least(self) -> int:
        """The fewest entries a read asks of each stream: 1, or 2 after a trickle, so that a workspace giving one
        new event at a read is not taken for one with a backlog (`_trickle`) by a hosted worker, whose free
        places, shared among many workspaces, come to less than one each."""
        return 2 if self._linger else 1

    def _trickle(self, batch: list[tuple[str, Entry]], count: int) -> bool:
        """Whether a read of up to `count` entries per stream was a trickle, to linger after: some events,
        fewer than a busy batch's, and no stream that gave all it was asked for at this read and the last (a
        backlog). A hosted worker asks each of many workspaces for one event a turn: one that gives it may
        have a backlog or one new event; twice in a row, a backlog, which is then read without waiting (after
        one linger at most at its start)."""
        given: dict[str, int] = {}
        for key, _ in batch:
            given[key] = given.get(key, 0) + 1
        full = {key for key, n in given.items() if n >= count}
        busy, self._full = full & self._full, full
        return 0 < len(batch) < TOGETHER and not busy

    def _read(self, readable: list[str], count: int, *, room: int, most: int,
              block_ms: int | None = READ_BLOCK_MS) -> list[tuple[str, Entry]]:
        """Read up to `count` new entries of each readable stream, acknowledging the handled ones in the same
        round trip: a quiet worker's events come one at a time, and an acknowledgement of its own was a
        fifth of the round trips each cost (bench/RESULTS.md section 29).

        `count` shares the `room` for events (the free places) among every stream served, most of them quiet in a
        hosted worker: one workspace with a backlog among 50 was read one event at a time, its batches too small
        to pay for themselves (3.9 ms of CPU an event against 2.1 alone, bench/RESULTS.md section 40). The streams
        that gave all they were asked at the last read (a backlog: `_full`) share the `room` among themselves
        instead (up to `most` each), read in the same round trip after the fair share of every stream; a quiet
        one still gets its `count` at each read."""
        todo = self._take_acks()
        busy = [key for key in readable if key in self._full]
        extra = min(most, room // len(busy)) - count if busy else 0
        try:
            return eventlog.read_new(self.connection, readable, self.name, count=count, block_ms=block_ms,
                                     acks=todo, more=(busy, extra) if extra > 0 else None)
        except redis.ResponseError as exc:  # Redis answered and refused: one workspace's log, or every one?
            self._give_back_acks(todo)
            if not self._refused(readable, exc):
                raise
            return []
        except Exception:  # Redis away, or anything else: acknowledged at a later turn
            self._give_back_acks(todo)
            raise

    def _flush_acks(self) -> None:
        todo = self._take_acks()
        if not todo:
            return
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                for key, ids in todo.items():
                    eventlog.ack(pipe, key, ids)
                pipe.execute()
        except Exception:  # Redis away, or anything else: acknowledged at a later turn
            self._give_back_acks(todo)
            raise

    def _take_acks(self) -> dict[str, list[str]]:
        now = time.monotonic()
        with self._lock:  # none for a log set aside: not a stream now, its entries are gone with it
            todo = {s.key: s.done[:] for s in self.streams.values() if s.done and s.refused_until <= now}
            for stream in self.streams.values():
                stream.done.clear()
        return todo

    def _give_back_acks(self, todo: dict[str, list[str]]) -> None:
        with self._lock:  # acknowledged later; until then the entries stay pending (harmless)
            for key, ids in todo.items():
                self.streams[key].done.extend(ids)

    def _maintain(self) -> None:
        self._next_maintenance = time.monotonic() + MAINTENANCE_SECONDS
        for stream in self._due_for_maintenance():
            self._look_after(stream, self._maintain_one, stream)
        recovery.learn_outages(self.connection, self._followed)  # parked by another process too (one SMEMBERS)
        for stream in self._served():  # quiet or not: a workspace quiet for a minute may wait on its InLoox
            self._ask_inloox(stream.workspace)
        if time.monotonic() >= self._next_trim:
            self._next_trim = time.monotonic() + TRIM_SECONDS
            forget = eventlog.CONSUMER_FORGET_MS if time.monotonic() >= self._next_forget else None
            if forget is not None:
                self._next_forget = time.monotonic() + FORGET_SECONDS
            for stream in self._served():
                self._look_after(stream, eventlog.trim, self.connection, stream.key, forget_idle_ms=forget)
        if time.monotonic() >= self._next_sample:
            self._next_sample = time.monotonic() + self.sample_seconds
            for stream in self._served():
                self._look_after(stream, gauges.sample, self.connection, worker_context(stream.workspace).workspace,
                                 now=time.time(), every=self.sample_seconds)

    def _maintain_one(self, stream: _Stream) -> None:
        with self._lock:
            handling = list(stream.handling)
        eventlog.touch(self.connection, stream.key, self.name, handling)
        self._claim(stream)
        recovery.sweep(self.connection, worker_context(stream.workspace).workspace)
        limits.release_waiting(self.connection, worker_context(stream.workspace).workspace)  # room again?

    def _look_after(self, stream: _Stream, step, *args, **kwargs) -> None:
        """`step(*args)`, housekeeping of one workspace: should it fail other than by an outage (Redis refusing a key
        of that workspace, a record it cannot read), the log says so and the others are looked after all the same.
        An outage stops the turn, as any other, to wait for Redis."""
        try:
            step(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception:
            log.exception("event consumer %s: could not look after workspace %s", self.name, stream.workspace)

    def _served(self) -> list[_Stream]:
        """The streams of the workspaces served now (not those let go, whose last events are still in flight, nor
        those whose log Redis refused a moment ago)."""
        now = time.monotonic()
        return [stream for stream in self.streams.values() if not stream.let_go and stream.refused_until <= now]

    def refused(self) -> list[str]:
        """The workspaces whose event log is set aside now (Redis refused it), by name."""
        now = time.monotonic()
        return sorted(stream.workspace for stream in self.streams.values()
                      if stream.refused_until > now and not stream.gone)

    def _refused(self, keys: list[str], error: redis.ResponseError) -> bool:
        """After `error` from a command on the logs `keys`: set aside those of another type than a stream, which
        Redis refuses whatever is asked of them; whether there were any (if not, the error is everybody's)."""
        with self.connection.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.type(key)
            kinds = pipe.execute()
        refused = [key for key, kind in zip(keys, kinds) if eventlog.as_text(kind) not in ("stream", "none")]
        for key in refused:
            self._set_aside(self.streams[key], error)
        gone = [key for key, kind in zip(keys, kinds) if eventlog.as_text(kind) == "none"] \
            if "NOGROUP" in str(error) else []  # (in a pipeline, after "Command # n … caused error:")
        for key in gone:
            stream = self.streams[key]
            stream.refused_until, stream.gone = time.monotonic() + GONE_SECONDS, True
            self._aside.add(key)
            log.info("event consumer %s: the event log of workspace %s is gone (the workspace deleted?); looked at "
                     "again in %.0fs", self.name, stream.workspace, GONE_SECONDS)
        return bool(refused or gone)

    def _set_aside(self, stream: _Stream, error: BaseException) -> None:
        stream.refused_until, stream.gone = time.monotonic() + REFUSED_SECONDS, False
        self._aside.add(stream.key)
        log.error("event consumer %s: Redis refuses the event log of workspace %s (%s): its events are not read; "
                  "again in %.0fs", self.name, stream.workspace, error, REFUSED_SECONDS)

    def _take_back(self) -> None:
        """Try again the logs set aside whose time is up: a log mended by deleting the key has no group now."""
        if not self._aside:
            return
        now = time.monotonic()
        for key in list(self._aside):
            stream = self.streams.get(key)
            if stream is None or stream.let_go:  # no longer served
                self._aside.discard(key)
            elif stream.refused_until > now:
                continue
            elif stream.gone and not self._still_served(stream.workspace):
                stream.refused_until = now + GONE_SECONDS  # deleted: its log is not made again; the worker lets it go
            else:
                self._aside.discard(key)
                stream.gone = False
                self._apart(stream, eventlog.ensure_group, self.connection, stream.key)

    @staticmethod
    def _still_served(workspace: str) -> bool:
        try:
            return workspace in served().workspaces()
        except Exception:  # the view cannot be read now: taken as served, its log made again as before
            log.warning("event consumer: could not read the workspace registry", exc_info=True)
            return True

    def _apart(self, stream: _Stream, step, *args, **kwargs) -> None:
        """`step(*args)` for one workspace: should Redis refuse it (a key of that workspace of another type, not an
        outage, which stops the turn as before), that workspace's log is set aside and the turn goes on for the
        others."""
        try:
            step(*args, **kwargs)
        except redis.ResponseError as exc:
            self._set_aside(stream, exc)

    def _followed(self, name: str):
        """The workspace `name` if this consumer follows it, else None."""
        stream = self.streams.get(eventlog.stream_key(name))
        return worker_context(name).workspace if stream is not None and not stream.let_go else None

    def _ask_inloox(self, workspace: str) -> None:
        """Runs parked here while the workspace's InLoox was down start once it answers (workers/recovery.py). The
        question goes to InLoox on a thread of `_questions`: one account's InLoox that hangs holds up no turn of this
        loop and no event; one question of each workspace at a time, so none pile up behind a hanging one."""
        if not recovery.parked(workspace) or workspace in self._asking:
            return  # nothing waits here; or its last question is still queued or asked
        ctx = worker_context(workspace)
        self._asking.add(workspace)
        asked = self._questions.submit(recovery.inloox_back, self.connection, ctx.workspace, ctx.client.me)
        asked.add_done_callback(lambda _, w=workspace: self._asking.discard(w))

    def _due_for_maintenance(self) -> list[_Stream]:
        """The streams to look after this turn: every busy or lively one, a quiet one every QUIET_MAINTENANCE_SECONDS.

        One MGET of the activity stamps (workers/activity.py) decides, whatever the number of workspaces.
        """
        served = self._served()
        quiet = activity.quiet(self.connection, [s.workspace for s in served])
        now = time.monotonic()
        due = []
        for stream in served:
            with self._lock:
                busy = bool(stream.handling)
            if busy or stream.workspace not in quiet or now >= stream.next_quiet_look:
                # Spread over a fifth of the period: quiet workspaces taken up together do not stay in step.
                stream.next_quiet_look = now + QUIET_MAINTENANCE_SECONDS * random.uniform(0.9, 1.1)
                due.append(stream)
        return due

    def _claim(self, stream: _Stream) -> None:
        """Take over the stream's entries another worker left pending (it died): as many as there is room
        for, in events (the limit's places times the events each takes), and at least one place's worth,
        since they are older than any new event. If there may be more, again at the next turn."""
        per_thread = self.limit.batch()
        with self._lock:
            room = self.limit.value * per_thread - sum(len(s.handling) for s in self.streams.values())
        count = max(room, per_thread)
        claimed = eventlog.claim_stale(self.connection, stream.key, self.name,
                                       min_idle_ms=int(CLAIM_IDLE * 1000), count=count)
        taken = []
        for entry, entry_id, deliveries in claimed:
            if entry is None or entry.event.get("damaged") or deliveries >= MAX_DELIVERIES:
                _give_up(self.connection, stream, entry, entry_id, deliveries)
                continue
            log.warning("event %s (%s): taken over from a worker that did not finish it (delivery %d)",
                        entry.event.get("id"), stream.workspace, deliveries + 1)
            taken.append(entry)
        how = self._how()
        size = TOGETHER if how == "lane" else per_thread
        for i in range(0, len(taken), size):
            self._submit(stream, taken[i:i + size], how=how)
        if len(claimed) >= count:
            self._claim_soon.add(stream.key)

    def _claim_again(self) -> None:
        """The claims that found as many entries as they asked for, again (there may be more) without
        waiting for the next maintenance."""
        soon, self._claim_soon = self._claim_soon, set()
        for key in soon:
            if key in self.streams and not self.streams[key].let_go:
                self._look_after(self.streams[key], self._claim, self.streams[key])


def _chunks(batch: list[tuple[str, Entry]], size: int) -> list[tuple[str, list[Entry]]]:
    """The batch as (stream, up to `size` of its entries in its order), each stream's chunks in order."""
    by_stream: dict[str, list[Entry]] = {}
    for stream_key, entry in batch:
        by_stream.setdefault(stream_key, []).append(entry)
    return [(stream_key, entries[i:i + size]) for stream_key, entries in by_stream.items()
            for i in range(0, len(entries), size)]


def _in_turns(batch: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """The batch reordered round-robin across its streams, each stream's own order kept."""
    by_stream: dict[str, list[tuple[str, object]]] = {}
    for item in batch:
        by_stream.setdefault(item[0], []).append(item)
    turns = itertools.zip_longest(*by_stream.values())
    return [item for turn in turns for item in turn if item is not None]


def _give_up(connection: redis.Redis, stream: _Stream, entry: Entry | None, entry_id: str, deliveries: int) -> None:
    """Acknowledge an entry that failed every delivery (or was trimmed, or cannot be decoded), keeping a trace that
    says so: one that cannot be decoded, under its stand-in's id (eventlog.damaged), which the event pages show."""
    damaged = entry is not None and entry.event.get("damaged")
    why = ("this entry of the event log cannot be decoded (damaged, or written by no web of ours): nothing ran"
           if damaged else f"not handled after {deliveries} deliveries; see the workers' logs")
    if entry is not None:
        try:
            recovery.record_unhandled(connection, worker_context(stream.workspace).workspace, entry.event, why,
                                      entry_id=entry_id, keep_error=not damaged)
        except redis.RedisError:
            raise  # acknowledged at a later turn, once Redis answers
        except Exception:  # even its trace cannot be kept: the log line is all there is
            log.exception("event entry %s (%s): could not keep its trace", entry_id, stream.workspace)
    log.error("event entry %s (%s) given up after %d deliveries", entry_id, stream.workspace, deliveries)
    eventlog.ack(connection, stream.key, [entry_id])


def _note_failure(connection: redis.Redis, stream: _Stream, entry: Entry, error: BaseException) -> None:
    """Keep a failed handling's error as the event's trace now (a later delivery that works replaces it)."""
    try:
        with using(worker_context(stream.workspace).workspace):
            metrics.count(connection, "events_failed", error=type(error).__name__)
        recovery.record_unhandled(connection, worker_context(stream.workspace).workspace, entry.event,
                                  f"handling failed: {type(error).__name__}: {error}", entry_id=entry.id)
    except Exception:  # Redis away, or the error itself cannot be kept: the log line above has it
        log.exception("event %s (%s): could not keep the error as its trace", entry.event.get("id"), stream.workspace)


def _handle_events(workspace: str, entries: list[Entry]) -> list[BaseException | None]:
    """Handle the entries one after the other (workers.jobs.handle_batch); what each raised (None:
    handled), so one failure stops none of the others. Inside the process's gate (gate.py), out of it
    while waiting for answers."""
    ctx = worker_context(workspace)
    with GATE.held(), using(ctx.workspace):
        outcomes = handle_batch(ctx, [_arrival(e) for e in entries])
    return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]


def _compile_events(workspace: str, entries: list[Entry]) -> list[BaseException | None]:
    """`_handle_events` for events whose rules must be compiled first (`_compile_apart`): the compile, or the wait for
    another thread's, outside the gate. Events of the workspace arriving during a compile come back from the busy
    floor's thread each turn, each hand-out a thread that waits for that compile: inside the gate, WIDTH of them held
    every place, and the busy floor's thread (every other workspace's events) waited for the compile after all. A
    compile that fails is each event's error (kept as its trace), not compiled again for each of them."""
    ctx = worker_context(workspace)
    with using(ctx.workspace):
        try:
            ctx.rules.current(not_before=max(entry.accepted_at for entry in entries))
        except Exception as exc:  # noqa: BLE001 - the events' error: left pending, delivered again later
            return [exc] * len(entries)
    return _handle_events(workspace, entries)


def _handle_together(batches: list[tuple[str, list[Entry]]]) -> list[BaseException | None]:
    """Handle the entries of each workspace, all at once (workers.jobs.handle_together); what each raised,
    in order, one workspace after the other."""
    log.debug("%d events of %d workspace(s) together", sum(len(entries) for _, entries in batches), len(batches))
    with GATE.held():
        return _handle_on_lane(batches)


def _handle_on_lane(batches: list[tuple[str, list[Entry]]]) -> list[BaseException | None]:
    """`_handle_together` on a greenlet of the lane, outside the gate: its thread holds no place (the gate
    is per thread, and the lane's batches take turns on one), and the waits in it switch greenlets, not threads."""
    outcomes = handle_together([(worker_context(w), [_arrival(e) for e in entries]) for w, entries in batches])
    return [outcome if isinstance(outcome, BaseException) else None for part in outcomes for outcome in part]


def _arrival(entry: Entry) -> Arrival:
    return Arrival(entry.event, entry.accepted_at, entry.id)
