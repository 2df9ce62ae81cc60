"""Several calls on one thread at once: each on a greenlet, their InLoox requests awaited together.

A busy worker's thread takes 8 events at a time (workers/consumer/in_flight.py) and ran them one after
the other, so each InLoox write waited for its answer with nothing else to do on the thread. Running two
such threads overlapped those waits, at a quarter more CPU per event in GIL hand-overs (bench/RESULTS.md
section 27). `run(calls)` runs each call on a greenlet of this thread; a call that reaches an InLoox
request (inloox/awaited.py) hands it to the thread's event loop (`wait_for`), and the next call goes on
meanwhile: one thread, the batch's requests in flight together. This is how SQLAlchemy drives asyncio
database drivers from synchronous code (sqlalchemy.util.concurrency: greenlet_spawn, await_only).

Only `wait_for` switches from one call to another (and `sleep`, a request budget's wait for a slot, and
`blocking`). Everything else a call does (Redis, templates, the rules' own code) runs as on a thread of its
own, to its end or its next request, so thread-locals hold over that stretch, and a call that blocks (a
Redis round trip) holds up the thread's other calls as it held up the next event of the batch before.
What may block for long, a rule's `http` step or notification to a receiver the customer chose, goes
through `blocking`: on a thread of BLOCKING_THREADS while the calls beside it go on, since one customer's
slow receiver must not hold up the events of others in the batch. Each call starts with a copy of the
caller's context variables (the workspace entered, a template's budget).

A `Lane` is a thread whose loop runs for good: calls submitted from other threads (a worker's batches of
events awaiting a slow InLoox, workers/consumer/) each start on a greenlet of it at once, so that many
batches are in flight on one thread, bounded by what the submitter keeps in flight rather than by threads.
A `run` inside one of them runs its calls together on the lane's loop beside the other batches.

greenlet, asyncio and uvloop are imported at the first `run` (or lane): a process that never runs calls
together (the web, an idle worker) does not carry them.
"""
from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)
_local = threading.local()  # `loop`: this thread's event loop; `running`: inside `run` now
# Threads for `blocking`, shared by the process: a busy worker's batch has 16 calls at most, but a lane holds
# as many events as a worker keeps in flight against a slow InLoox (hundreds), each of which may notify a
# receiver: a hung one takes a thread for its time out. Started as needed.
BLOCKING_THREADS = 64
LANE_STALL_SECONDS = 30.0  # a lane whose loop has not turned for this long, calls in flight, is stalled
LANE_BEAT_SECONDS = 1.0
_blocking_pool = None
_blocking_lock = threading.Lock()


def awaiting() -> bool:
    """Whether this code runs on one of `run`'s greenlets, so that a request may be awaited (`wait_for`)."""
    if not getattr(_local, "running", False):
        return False
    import greenlet

    return isinstance(greenlet.getcurrent(), _call_class())


def run(calls: list[Callable[[], Any]], *, every: tuple[float, Callable[[], None]] | None = None) -> list[Any]:
    """Call each of `calls` on a greenlet of this thread, their waits overlapping: what each returned, or
    the Exception it raised, in order. Inside a run already (a call of a call), one after the other.

    `every=(seconds, tick)`: `tick()` is also called every that many seconds while calls wait (between
    their stretches, never in the middle of one), until the last call is done.
    """
    if getattr(_local, "running", False):
        if _on_lane():  # a lane's batch: its calls together on the lane's loop, beside the other batches
            return wait_for(_all(calls, every))
        return [_outcome(call) for call in calls]
    loop = _loop()
    _local.running = True
    try:
        return loop.run_until_complete(_all(calls, every))
    finally:
        _local.running = False


def wait_for(awaitable) -> Any:
    """Await `awaitable` on this thread's loop, the thread's other calls going on meanwhile; its result."""
    import greenlet

    return greenlet.getcurrent().parent.switch(awaitable)


def sleep(seconds: float) -> None:
    """Wait `seconds`: on one of `run`'s greenlets the thread's other calls go on meanwhile, else the thread sleeps."""
    if awaiting():
        import asyncio

        wait_for(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


def blocking(call: Callable[[], Any]) -> Any:
    """`call()`, which may block for long (a request through a proxy, to a receiver outside InLoox): on one
    of `run`'s greenlets, on another thread, awaited while the thread's other calls go on, the wait seen by
    the worker's in-flight limit (`exchanges.awaited`; `call` records its own duration); else here. What it
    returned, or raises what it raised."""
    if not awaiting():
        return call()
    from inloox.connections import exchanges

    with exchanges.awaited():
        return wait_for(_loop().run_in_executor(_pool(), contextvars.copy_context().run, call))


def _pool():
    global _blocking_pool
    with _blocking_lock:
        if _blocking_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _blocking_pool = ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix="blocking")
        return _blocking_pool


async def _all(calls: list[Callable[[], Any]], every: tuple[float, Callable[[], None]] | None) -> list[Any]:
    import asyncio

    ticking = asyncio.ensure_future(_ticks(*every)) if every is not None else None
    try:
        return await asyncio.gather(*(_on_greenlet(call) for call in calls), return_exceptions=True)
    finally:
        if ticking is not None:
            ticking.cancel()
            await asyncio.gather(ticking, return_exceptions=True)


async def _ticks(seconds: float, tick: Callable[[], None]) -> None:
    import asyncio

    while True:
        await asyncio.sleep(seconds)
        tick()


class Lane:
    """A thread of its own whose event loop runs every call submitted to it at once, each on a greenlet
    (`submit`): what one waits for (`wait_for`), the others go on meanwhile. Nothing bounds how many are
    in flight but the submitter."""

    def __init__(self, name: str):
        self.name = name
        self._loop = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._lock = threading.Lock()
        self._pending: set[Future] = set()
        self._turned = time.monotonic()  # when the loop last ran its beat

    def trouble(self) -> str | None:
        """Why the lane does not run its calls: "stopped" (its thread ended), "stalled" (calls in flight,
        and its loop has not turned for LANE_STALL_SECONDS: one of them blocks the thread), or None."""
        thread = self._thread
        if thread is None:
            return None
        if not thread.is_alive():
            return "stopped"
        with self._lock:
            pending = bool(self._pending)
        return "stalled" if pending and time.monotonic() - self._turned > LANE_STALL_SECONDS else None

    def submit(self, call: Callable[[], Any]) -> Future:
        """Start `call()` on a greenlet of the lane's thread (started at the first call); a Future of what it
        returns or raises."""
        import asyncio

        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # the first call, or the loop ended
                self._start()
            future = asyncio.run_coroutine_threadsafe(_on_greenlet(call, _lane_class()), self._loop)
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def keep_running(self) -> bool:
        """Start the thread again if its loop ended (and the lane was not shut down); True if it had to.
        Else `trouble` would say "stopped" until the next call, which a worker back at its busy floor may
        not make for long."""
        with self._lock:
            if self._thread is None or self._thread.is_alive():
                return False
            self._start()
        return True

    def _start(self) -> None:
        """The thread and its loop, running (called holding the lock)."""
        self._started.clear()
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()
        self._started.wait()

    def shutdown(self, timeout: float | None = None) -> None:
        """Wait (up to `timeout` seconds) for the calls in flight, then stop the thread."""
        import concurrent.futures

        with self._lock:
            pending, thread, loop = list(self._pending), self._thread, self._loop
            self._thread = None
        if thread is None:
            return
        concurrent.futures.wait(pending, timeout=timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    def _beat(self, loop) -> None:
        self._turned = time.monotonic()
        loop.call_later(LANE_BEAT_SECONDS, self._beat, loop)

    def _done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)

    def _serve(self) -> None:
        loop = self._loop = _loop()
        _local.running = True  # every call here runs on a greenlet of the loop (`awaiting`)
        loop.call_soon(self._beat, loop)
        self._started.set()
        try:
            loop.run_forever()
        except BaseException:  # noqa: BLE001 - said, and the lane starts again at the next call
            log.exception("%s: its event loop ended", self.name)
        finally:  # stopped, or a call raised what ends a loop (SystemExit): its calls in flight fail, none hangs
            _local.running = False
            with self._lock:
                pending = list(self._pending)
            for future in pending:
                if not future.done():
                    try:
                        future.set_exception(RuntimeError(f"{self.name}: its loop stopped with this call in flight"))
                    except Exception:  # noqa: BLE001 - done meanwhile
                        pass


def _on_lane() -> bool:
    import greenlet

    return type(greenlet.getcurrent()) is _lane_class()


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the caller's to judge, as `run` hands it over
        return exc


async def _on_greenlet(call: Callable[[], Any], kind: type | None = None) -> Any:
    """Run `call` on a greenlet of its own (of `kind`, else a `run` call's); await what it hands over
    (`wait_for`) and send the result back."""
    child = (kind or _call_class())(call)
    child.gr_context = contextvars.copy_context()
    handed = child.switch()
    while not child.dead:
        try:
            result = await handed
        except BaseException as exc:  # noqa: BLE001 - raised in the call, where its request was
            handed = child.throw(exc)
        else:
            handed = child.switch(result)
    return handed


def _loop():
    loop = getattr(_local, "loop", None)
    if loop is None:
        import uvloop

        loop = _local.loop = uvloop.new_event_loop()
    return loop


_Call = None


def _call_class() -> type:
    """The greenlet class of `run`'s calls (made at the first use: greenlet is imported then)."""
    global _Call
    if _Call is None:
        import greenlet

        _Call = type("_Call", (greenlet.greenlet,), {})
    return _Call


_LaneCall = None


def _lane_class() -> type:
    """The greenlet class of a lane's calls: a `run` call's kind (`awaiting` holds on it), told apart by `run`."""
    global _LaneCall
    if _LaneCall is None:
        _LaneCall = type("_LaneCall", (_call_class(),), {})
    return _LaneCall
