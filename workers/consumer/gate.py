"""How many of a worker's event threads run this process's own work at once: `Gate`.

A worker keeps as many events in flight as InLoox's answers reward (in_flight.py): against an InLoox
that answers in a second, 300 writes a second need about 300 threads. Each thread spends most of its
event waiting for the answer, but between two waits it runs Python, and the threads share one GIL:
when hundreds come back from their answers at once, every one of them waits for the GIL, each wait
times out and asks the holder to let go (sys.getswitchinterval), and the process spends its CPU on
handing the GIL around. Measured (bench/RESULTS.md section 21, InLoox at 1 s, 400 threads): the worker
used 26-36 s of CPU for 10,000 events and wrote 242-305 a second; with a gate of WIDTH, 22-27 s and
261-333.

So an event thread holds one of WIDTH places while it runs (its plan, its runs' records, their Redis
round trips) and steps out while it waits for an answer from outside: an InLoox request, a
notification, an outbound request (`inloox.connections.exchanges.exchange()`) or a slot of the
workspace's request budget (workers/throttle.py). A thread waiting for a place blocks and costs
nothing meanwhile. Not first come first served (a Semaphore): a freed place goes to whichever thread
asks first after it, often one back from its answer, while the thread woken for it still waits for the
GIL. Handing each place to the longest-waiting thread instead halved the waits' p99 (bench/gate.py) but
left places empty while their new holders woke: at InLoox's 1 s a worker wrote 263-281 a second against
257-313 (five pairs, medians 268 and 287; bench/RESULTS.md section 25). What is in flight is still the in-flight
limit's; only what runs at once is bounded. A thread that waits on something else while it holds a
place (Redis, a few milliseconds) keeps it: every thread waits on the same Redis.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Places: more than one, so that a thread's Redis round trip overlaps another's Python; few enough that
# those waiting for the GIL are few (8 measured; any thread beyond them waits for a place instead).
WIDTH = 8


class Gate:
    """At most `width` threads inside at once; a thread inside steps out while it waits (`leave`, `enter`)."""

    def __init__(self, width: int = WIDTH):
        self.width = width
        self._places = threading.Semaphore(width)
        self._inside = threading.local()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Inside the gate for the block (waiting for a place first)."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def enter(self) -> None:
        self._places.acquire()
        self._inside.held = True

    def leave(self) -> bool:
        """Give this thread's place up; whether it had one (a thread outside the gate, e.g. a poller's or
        an RQ job's, has none to give: it never waits for a place either)."""
        if not getattr(self._inside, "held", False):
            return False
        self._inside.held = False
        self._places.release()
        return True


GATE = Gate()  # the process's: its event threads (workers/consumer) enter it, the waits for answers leave it
