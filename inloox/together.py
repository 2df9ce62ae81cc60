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

greenlet, asyncio and uvloop are imported at the first `run`: a process that never runs calls together
(the web, an idle worker) does not carry them.
"""
from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from typing import Any

_local = threading.local()  # `loop`: this thread's event loop; `running`: inside `run` now
# Threads for `blocking`, shared by the process: a together batch has 16 calls at most, and a worker runs
# one batch at a time (workers/consumer/). Started as needed.
BLOCKING_THREADS = 16
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


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the caller's to judge, as `run` hands it over
        return exc


async def _on_greenlet(call: Callable[[], Any]) -> Any:
    """Run `call` on a greenlet of its own; await what it hands over (`wait_for`) and send the result back."""
    child = _call_class()(call)
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
