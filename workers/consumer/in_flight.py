"""How many events a worker keeps in flight: as many as InLoox's answers reward, within a ceiling.

A run spends most of its time waiting for InLoox. Against a fast InLoox a worker is bound by its own
CPU, and more events in flight only add contention (48 threads wrote no faster than 12); against an
InLoox that answers in a second, 300 writes a second need about 300 events in flight. A fixed thread
count is right for one of the two at most, so the number adapts, every WINDOW_SECONDS, from what the
process's InLoox requests, notifications and outbound requests took (`inloox.connections.exchanges`):

- answers SLOWED times slower than usual (a slow average of earlier windows) mean that InLoox, or
  this process, is queueing what it is sent: the limit is cut by a quarter (or, below the floor, set
  back to it: the events wait for InLoox now);
- when the limit is what holds events back (in flight ≈ the limit) and most of the events in flight
  are waiting for an answer (Little's law: the requests awaiting answers = the answer time summed
  over the window / the window), the limit doubles, up to the ceiling (`WORKER_THREADS`);
- a doubling is judged a window later: if the answers became slower by as much as the limit grew
  (the server queues, or this process is out of CPU), it bought nothing and is taken back, and
  the limit holds for HOLD_WINDOWS before it tries again;
- when half the limit or more is in flight and few of those events wait for InLoox, the process
  is busy with its own work: the limit is cut by a quarter, down to BUSY_FLOOR threads, and each
  thread takes BATCH events at a time (`batch`). A thread handing the GIL to another at every socket
  call is what a CPU-bound worker spends most on besides its own work: 4 threads with 8 events each
  used 16 % less CPU per event than 48 threads with one (bench/RESULTS.md section 18), 2 threads 16 %
  less again (section 22); fewer threads with one event each bought nothing. Against an InLoox whose
  answers are what the events wait for, the limit stays at FLOOR or above and a thread takes one
  event, as before: eight writes one after the other would wait eight answers (there the events run on
  the consumer's lane, every one in flight at once on one thread's loop, not a thread each; the limit is
  then in events, workers/consumer/). The busy floor's thread
  runs its TOGETHER events together (inloox/together.py), so that their answers overlap; its batches
  take every workspace's new events in turns (workers/consumer/), so a quiet workspace's event runs
  beside a noisy one's batch, not behind it;
- a worker starts at the busy floor, and goes back to it from below FLOOR once less than half a thread is
  busy on average (the backlog gone; what it learned of a slow InLoox, FLOOR or more, it keeps): against
  a quick InLoox that is the cheapest way from the first event on, and a burst met while the web takes
  the cores is not handled at 48 threads, the dearest way (bench/RESULTS.md sections 28 and 29). Answers
  slower than TOGETHER_QUICK there (InLoox's own) send it to FLOOR within a window, and a wait for one
  answer longer than TOGETHER_LONG sends it there at once: the thread's next batch, other workspaces'
  events, would wait behind it. After such answers (or a window's typical answer over TOGETHER_QUICK) the
  backlog gone brings it to FLOOR, not to the busy floor, until SLOW_MEMORY has passed without them: a
  hosted worker with one workspace whose InLoox or receiver is slow keeps a thread per event, as it did
  before it started at the busy floor; one at FLOOR whose answers were quick for that long goes back;
- the same cut when the process used BUSY_CPU of a core or more in the window, however long the
  answers took: its threads share one GIL, so a thread whose answer came waits for the others before
  it sees it, and the answer times (and the events "awaiting one") grow with the threads until a quick
  InLoox looks like a slow one. Against a quick InLoox that fed itself: more threads, slower answers,
  more threads (to the ceiling of 400; bench/RESULTS.md section 19). This cut is a probe: straight
  down to BUSY_FLOOR threads, one event each, for a window (a quarter fewer threads made the answers
  only 10-15 % quicker, inside the noise; a few threads, ten times quicker: section 20). The window that
  judges it is the first in which no more than those few were in flight: the threads over the cut finish
  what they hold first (8 events each, a second or more), and their answers are not the probe's. If the answers
  did not get quicker (they are InLoox's own), it is taken back and held for minutes (for ten
  seconds if the answers were quick: the machine, not InLoox, was then the likelier cause), and the
  process keeps what it has in flight; if they did, each thread takes BATCH events. A busy CPU never doubles
  the limit. Once there, answers under QUICK never send it back, however much slower than usual.

A window lasts WINDOW_SECONDS, or the usual answer time if that is longer, so that a doubling's
answers are back before it is judged. A request that times out counts as a slow answer, so an
InLoox that stops answering cuts the limit too. This is the idea of TCP's slow start and of Netflix's
concurrency-limits (a latency gradient), with Little's law added so that a CPU-bound worker does not
grow. What InLoox may be sent per workspace is still capped by the workspace's request budget
(workers/throttle.py), whatever the limit.
"""
from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

from inloox.connections import exchanges

log = logging.getLogger(__name__)

# Never fewer than the fixed pool that came before (48 threads) while events wait for InLoox: a mix of
# workspaces with different answer times can mislead the limit, and it then falls back to what was
# known to work. Fewer threads alone bought nothing against a fast InLoox (12 used as much CPU per
# event as 48); fewer threads each taking several events did (BUSY_FLOOR, BATCH).
FLOOR = 48
# One thread whose events run together (workers.jobs.handle_batch, inloox/together.py): their InLoox
# answers overlap on the thread's event loop, where two threads overlapped them at the price of GIL
# hand-overs. With the limit fixed at each (bench/RESULTS.md section 28, one run each in one window), 10,000
# events against a quick InLoox cost the worker 10.0 s at 1 thread of 16 together, 12.4 s at 2 threads of 8.
BUSY_FLOOR = 1
BATCH = 8  # events a thread takes at a time, one after the other, between the floors
TOGETHER = 16  # events the busy floor's thread takes at a time, and runs together
# Threads busy on average below which the backlog is gone. Not 1: a single busy thread is idle for the
# consumer's read between its batches (a probe's single events: a fifth of the time).
GONE = 0.5
LONG_SECONDS = 1.0  # a wait for one answer longer than this: a hung receiver, not a busy process
# At the busy floor one thread runs every workspace's events, a batch at a time: a wait for one answer longer
# than this (a workspace's slow InLoox, a receiver's slow answer) holds up the events of others queued behind
# its batch. A busy worker's own answers on a crowded machine stay under ~50 ms (bench/RESULTS.md section 28).
TOGETHER_LONG = 0.2
SLOW_MEMORY = 60.0  # seconds after such an answer during which the worker does not go back to its busy floor
WINDOW_SECONDS, MAX_WINDOW_SECONDS = 0.5, 3.0
SLOWED = 2.0  # answers this many times slower than usual: queueing somewhere
QUEUED = 1.3  # answers this much slower after a doubling: it bought queueing, not answers
GROW, CUT = 2, 0.75
HOLD_WINDOWS = 10
CUT_HOLD_WINDOWS = 300  # after a probe for a busy CPU that bought nothing: InLoox's answer times change slowly
# ...unless the answers were quick: then what kept them from getting quicker was more likely the machine
# than InLoox (the web acknowledging a burst on the same cores makes every answer slower for a while),
# and a probe costs half a second of a few threads. Held for the whole drain of 10,000 events, such a
# failed probe left a worker on 20-36 threads (8 events each) instead of 2: 24.7-26.9 s of CPU against
# 18.8-21.4 s for runs that ended most of their events on 2 threads (bench/RESULTS.md section 25).
QUICK_PROBE_HOLD_WINDOWS, SLOW_ANSWERS = 20, 0.050
# A backlog whose answers come this quickly is probed for even when this process gets less than BUSY_CPU:
# the web acknowledging a burst on the same cores leaves a worker a fraction of a core, and its answers,
# slowed by its own threads, stay in 10-20 ms. With 50 ms here one pair drained 10,000 events with 9.6-9.7
# s of the worker's CPU against 11.2 without; with 20 ms, two pairs stayed inside the noise (11.1 and 12.6
# against 11.9 and 11.9 s; bench/RESULTS.md section 28). 20 ms: no InLoox across a network answers this
# quickly, and a probe of a self-hosted one on a LAN costs it a window of one event at a time.
CROWDED_ANSWERS = 0.020
# Answers slower than this at the busy floor are InLoox's own (the thread's 16 events delay each other's
# by a few milliseconds at most): the events wait for InLoox, and one per thread, 48 threads, do better.
TOGETHER_QUICK = 0.030
WAITING = 0.5  # the share of the events in flight awaiting an answer above which more in flight helps
IDLE_WAITING = 0.2  # below it, the process is busy with its own work
FULL = 0.8  # in flight this close to the limit: the limit is what holds events back
BACKLOG = 0.5  # in flight this close to the limit: events are waiting to be taken (the reader lags a little)
USUAL_UP, USUAL_DOWN = 0.05, 0.3  # how fast the usual answer time follows slower and faster answers
# Of a core, over a window: a process whose Python threads share one GIL can use little more than one
# (a niced worker sharing two cores with the web got 0.8 in the benches, section 18).
BUSY_CPU = 0.75
EASED = 0.8  # a cut for a busy CPU that made answers no quicker than this bought nothing
# Windows a probe waits, at most, for the threads over it to finish before it is judged anyway. Judged in
# the first window after the cut, while 40 threads finished their 8 events each, a probe saw their answers
# (36 ms against 27 before it), was taken back, and the stack's drain went on at 30-40 threads (2026-12-06).
SETTLE_WINDOWS = 6
# Answers this quick never send a busy worker's few threads back to one event each, however much slower
# than usual (a pause of Valkey's, a neighbour's burst): 8 events one after the other wait 80 ms at most.
QUICK = 0.010


class InFlightLimit:
    """The number of events to keep in flight now (`value`), between a floor and `ceiling`."""

    def __init__(self, ceiling: int, *, floor: int = FLOOR, take: Callable[[], list[float]] = exchanges.take,
                 clock: Callable[[], float] = time.monotonic, cpu: Callable[[], float] = time.process_time):
        self.ceiling = max(1, ceiling)
        self.floor = max(1, min(floor, self.ceiling))
        self.busy_floor = min(BUSY_FLOOR, self.floor)
        self.value = self.busy_floor
        self.usual: float | None = None  # seconds, the usual answer time
        self._take = take
        self._clock = clock
        self._cpu = cpu  # the process's CPU seconds so far
        self._window_start, self._window_cpu = clock(), cpu()
        self._in_flight_sum = 0.0  # in flight, sampled at each `observe`, summed over the window
        self._samples = 0
        self._in_flight_most = 0  # the most in flight at one `observe` of the window
        self._grown_from: tuple[int, float] | None = None  # the limit and answer time before a doubling
        self._cut_from: tuple[int, float] | None = None  # the same before a probe for a busy CPU (one under way)
        self._hold = 0  # windows left before the next doubling may be tried
        self._settling = 0  # windows a probe may still wait for the threads over it to finish
        self._probe_hold = 0  # windows left before the next probe for a busy CPU may be tried
        self._slow_at = float("-inf")  # when an answer last took over TOGETHER_LONG, or a window's typical over TOGETHER_QUICK

    def observe(self, in_flight: int, *, longest: float = 0.0) -> int:
        """Note how many events are in flight now, and how long the oldest wait for an answer under way
        has lasted (seconds, `exchanges.oldest_wait()`); at the end of a window, adapt. The limit now."""
        if longest > TOGETHER_LONG:
            self._slow_at = self._clock()
        if longest > LONG_SECONDS and self.value < self.floor or longest > TOGETHER_LONG and self.together():
            # A wait this long is for an answer that does not come (a hung receiver, one workspace's slow
            # InLoox), which no window has seen yet: with few threads, a few such events would hold up
            # every other event and workspace. Back to one event per thread.
            if self._cut_from is not None:  # a probe's events wait that long: the answers are InLoox's own
                self._probe_back(self._cut_from)
            else:
                if self.value != self.floor:
                    log.debug("events in flight: at most %d now, was %d (an answer awaited for %.2f s)", self.floor,
                              self.value, longest)
                self.value = self.floor
        self._in_flight_sum += in_flight
        self._samples += 1
        self._in_flight_most = max(self._in_flight_most, in_flight)
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed >= min(MAX_WINDOW_SECONDS, max(WINDOW_SECONDS, self.usual or 0.0)):
            cpu = self._cpu()
            self._adapt(self._take(), self._in_flight_sum / self._samples, elapsed, (cpu - self._window_cpu) / elapsed,
                        most=self._in_flight_most)
            self._window_start, self._window_cpu, self._in_flight_sum, self._samples = now, cpu, 0.0, 0
            self._in_flight_most = 0
        return self.value

    def batch(self) -> int:
        """Events one thread takes at a time: TOGETHER at the busy floor (the process is busy with its own
        work, not waiting for InLoox, `together`), BATCH between the floors, else 1 (a probe too)."""
        if self.value >= self.floor or self._cut_from is not None:
            return 1
        return TOGETHER if self.together() else BATCH

    def together(self) -> bool:
        """Whether a thread's events run together (at the busy floor, no probe under way) or one after the other.

        Only there: a few threads of many events each keep the GIL's hand-overs few, and an event's lease
        and deadline wait only for its own thread's other events.
        """
        return self.value <= self.busy_floor and self._cut_from is None

    def _probe_back(self, cut_from: tuple[int, float]) -> None:
        """A probe that bought nothing (the answers are InLoox's own): what was in flight, back, and no
        probe for CUT_HOLD_WINDOWS (QUICK_PROBE_HOLD_WINDOWS if the answers were quick)."""
        hold = CUT_HOLD_WINDOWS if cut_from[1] >= SLOW_ANSWERS else QUICK_PROBE_HOLD_WINDOWS
        log.debug("events in flight: a probe of %d taken back to %d, no probe for %d windows", self.value,
                  cut_from[0], hold)
        self.value, self._probe_hold, self._cut_from = cut_from[0], hold, None

    def _adapt(self, durations: list[float], in_flight: float, elapsed: float, cpu: float = 0.0, *,
               most: int = 0) -> None:
        self._hold, self._probe_hold = max(0, self._hold - 1), max(0, self._probe_hold - 1)
        if durations and (max(durations) > TOGETHER_LONG or statistics.median(durations) > TOGETHER_QUICK):
            self._slow_at = self._clock()
        quick_lately = self._clock() - self._slow_at >= SLOW_MEMORY
        if in_flight < GONE and (self.value < self.floor or self.value == self.floor and quick_lately
                                 and self._cut_from is None and self.busy_floor < self.floor):
            # The backlog is gone: the next burst starts at the busy floor (a probe under way ends too), unless
            # answers were slow lately (SLOW_MEMORY): then with one event per thread, as known to work. A
            # limit grown over FLOOR (a slow InLoox) is kept.
            back = self.busy_floor if quick_lately else self.floor
            if (self.value, self._cut_from) != (back, None):
                log.debug("events in flight: at most %d now, was %d (%.2f in flight: the backlog is gone)",
                          back, self.value, in_flight)
            self.value, self._cut_from = back, None
            return
        if not durations and self._cut_from is not None:
            self._probe_back(self._cut_from)  # a probe's window without one answer back: the answers are slow
            return
        if not durations:
            return  # nothing was asked of InLoox: nothing learned
        if self._cut_from is not None and self._settling and most > self.value:
            self._settling -= 1  # threads from before the probe still finishing: their answers, not the probe's
            return
        typical = statistics.median(durations)
        usual = self.usual if self.usual is not None else typical
        grown_from, self._grown_from = self._grown_from, None
        cut_from, self._cut_from = self._cut_from, None
        waiting = sum(durations) / elapsed
        busy_cpu = cpu >= BUSY_CPU
        idle = waiting < IDLE_WAITING * max(in_flight, 1.0)  # few of the events in flight await an answer
        before = self.value
        if grown_from is not None and typical > QUEUED * grown_from[1]:
            self.value, self._hold = grown_from[0], HOLD_WINDOWS  # the doubling bought queueing: back, and hold
        elif cut_from is not None and (typical > EASED * cut_from[1] or typical > TOGETHER_QUICK):
            # Not quicker; or quicker, but still too slow for the busy floor, which would go back to FLOOR
            # within a window: a lane's answers include its loop's lag, which a few events do not have, and
            # against a 100 ms InLoox each such probe cost a window of one event at a time (section 30).
            self._probe_back(cut_from)
        elif cut_from is not None:
            # the answers were this process's own waiting: a few threads, several events each
            log.debug("events in flight: a probe of %d kept (answers in %.0f ms, were %.0f)", self.value,
                      typical * 1000, cut_from[1] * 1000)
        elif self.together() and typical > TOGETHER_QUICK:
            self.value = self.floor  # answers this slow are InLoox's: one event per thread, as many as help
        elif typical > SLOWED * usual and self.value < self.floor and typical > QUICK:
            self.value = self.floor  # the events wait for InLoox now, not for this process: one each, as before
        elif typical > SLOWED * usual and self.value >= self.floor:
            self.value = max(self.floor, int(self.value * CUT))
        elif (not self._hold and not busy_cpu and in_flight >= FULL * self.value and not self.together()
              and waiting >= WAITING * in_flight):
            # Not at the busy floor: its thread has TOGETHER events awaiting answers at once, which is
            # no sign that more threads would help.
            if self.value < self.ceiling:
                self._grown_from = (self.value, typical)
                self.value = min(self.ceiling, self.value * GROW)
        elif self.value > self.busy_floor and in_flight >= BACKLOG * self.value and len(durations) >= in_flight and (
                idle or (busy_cpu or typical < CROWDED_ANSWERS) and not self._probe_hold):
            # A backlog the process does not take faster however many wait for InLoox: its own CPU. Only
            # with at least one answer per event in flight: answers not back yet (a slow InLoox's first
            # second) would otherwise look like nobody waiting.
            if idle:
                self.value = max(self.busy_floor, min(self.value - 1, int(self.value * CUT)))
            else:  # for a busy CPU alone: a probe, judged once the threads over it have finished
                self._cut_from, self.value, self._settling = (self.value, typical), self.busy_floor, SETTLE_WINDOWS
        self.usual = usual + (USUAL_UP if typical > usual else USUAL_DOWN) * (typical - usual)
        if self.value != before:
            log.debug("events in flight: at most %d now, was %d (answers in %.0f ms, usually %.0f; %.0f of %.0f "
                      "in flight awaiting one; %.2f of a core)", self.value, before, typical * 1000, usual * 1000,
                      waiting, in_flight, cpu)
