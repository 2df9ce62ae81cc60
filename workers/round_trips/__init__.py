"""Redis round trips shared by the threads that want one at the same moment: `shared(connection).execute(pipe)`.

Against a slow InLoox a worker keeps hundreds of events in flight, one per thread (workers/consumer/),
and each of their runs stores its start and its end in a round trip of its own. At InLoox's 100 ms
those two were 43 % of the worker's GIL time (bench/RESULTS.md section 22), and a worker busy with
its own CPU writes no faster than that allows. A busy worker's batches store their runs together
(workers.jobs.handle_batch); threads with one event each can share their round trips instead.

A thread queues its commands on a pipeline of its own, as it would, and hands it to `execute` instead
of calling `pipe.execute()`. The first thread to arrive leads a round trip: when others are expected
within WINDOW (other threads' recent arrivals say so), it waits that long for them, out of the
process's gate (workers/consumer/gate.py) as every wait is, then sends every gathered pipeline's
commands in one and hands each thread its own replies. A thread that arrives alone, in a quiet worker, sends at once.

What a thread gets is what its own `pipe.execute()` would have given it: its replies in its order; an
error reply to one of its commands raised (another thread's error is that thread's); a lost
connection raised in every thread of the round trip. Nothing is acknowledged, ended or released
before its own round trip is back: a thread waits for it as it waited for its own.
"""
from __future__ import annotations

import threading
import time
import weakref

import redis
from redis.exceptions import ResponseError

from inloox.connections import exchanges
from workers.round_trips.pipeline import pipeline

WINDOW = 0.005  # seconds a leader waits for other threads' commands, when some are expected
MAX_COMMANDS = 5000  # a round trip that holds this many sends without waiting for more


class _Turn:
    """One thread's pipeline in a shared round trip: its commands, then its replies or the error.

    `done` is a bare lock, taken until the replies are in: its waiter blocks in C and wakes at the
    leader's release. A threading.Event is a Condition written in Python, and at InLoox's 1 s its wait
    and wake were 8 % of the worker's GIL time among 400 threads (bench/RESULTS.md section 23).
    """

    __slots__ = ("commands", "done", "replies", "error")

    def __init__(self, commands: list):
        self.commands = commands
        self.done = threading.Lock()
        self.done.acquire()
        self.replies: list | None = None
        self.error: BaseException | None = None


class RoundTrips:
    """The round trips of the threads that share `connection` (its pool): one gathering at a time."""

    def __init__(self, connection: redis.Redis, *, window: float = WINDOW, clock=time.monotonic, sleep=time.sleep):
        self.connection = connection
        self.window = window
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._gathering: list[_Turn] | None = None
        self._commands = 0  # in the gathering round trip
        self._last, self._last_thread = 0.0, 0  # when the last thread arrived, and which
        # A moving average of the time between arrivals of different threads (seconds), each at most
        # twice the window: a thread that comes back for its next round trip is no company for itself.
        self._gap = 2 * window
        self.sent = 0  # round trips sent, and pipelines they carried: how much was shared (bench, tests)
        self.carried = 0

    def execute(self, pipe) -> list:
        """`pipe.execute()`, in a round trip shared with other threads' pipelines; `pipe` is left empty."""
        commands, pipe.command_stack = pipe.command_stack, []
        if not commands:
            return []
        turn = _Turn(commands)
        with self._lock:
            now, thread = self._clock(), threading.get_ident()
            gap = min(now - self._last, 2 * self.window) if thread != self._last_thread else 2 * self.window
            self._gap += (gap - self._gap) / 8
            self._last, self._last_thread = now, thread
            group = self._gathering
            lead = group is None or self._commands + len(commands) > MAX_COMMANDS
            if lead:
                group = self._gathering = [turn]
                self._commands = 0
            else:
                group.append(turn)
            self._commands += len(commands)
            wait = self.window if self._gap < self.window else 0.0  # another thread due within the window
        gate = exchanges.gate
        left = gate.leave() if gate is not None else False
        try:
            if lead:
                self._lead(group, wait)
            else:
                turn.done.acquire()
        finally:
            if left:
                gate.enter()
        if turn.error is not None:
            raise turn.error
        for number, reply in enumerate(turn.replies, start=1):
            if isinstance(reply, ResponseError):
                pipe.annotate_exception(reply, number, commands[number - 1][0])
                raise reply
        return turn.replies

    def execute_each(self, pipes: list) -> list[list | BaseException]:
        """This thread's `pipes` in one round trip of their own, gathered with no other thread's: for each,
        what its `pipe.execute()` would have returned, or the error it would have raised (an error reply
        to one of its commands is its own; a lost connection is every one's). Each pipe is left empty.

        A batch run together holds several workspaces' pipelines (workers.jobs.handle_together): one round
        trip for all of them, as one workspace's batch has."""
        stacks = []
        for pipe in pipes:
            stacks.append(pipe.command_stack)
            pipe.command_stack = []
        try:
            with pipeline(self.connection) as pipe:
                for commands in stacks:
                    pipe.command_stack.extend(commands)
                replies = pipe.execute(raise_on_error=False) if pipe.command_stack else []
        except Exception as exc:  # noqa: BLE001 - every pipeline's error
            return [exc] * len(pipes)
        with self._lock:
            self.sent += 1
            self.carried += len(pipes)
        results: list[list | BaseException] = []
        at = 0
        for pipe, commands in zip(pipes, stacks):
            mine, at = replies[at:at + len(commands)], at + len(commands)
            failed = next((n for n, reply in enumerate(mine, start=1) if isinstance(reply, ResponseError)), None)
            if failed is not None:
                pipe.annotate_exception(mine[failed - 1], failed, commands[failed - 1][0])
                results.append(mine[failed - 1])
            else:
                results.append(mine)
        return results

    def _lead(self, group: list[_Turn], wait: float) -> None:
        interrupted = None
        if wait:
            try:
                self._sleep(wait)
            except BaseException as exc:  # noqa: BLE001 - a stop signal's, in an RQ job's main thread: raised
                interrupted = exc  # below, once the others' round trip went (they would wait for ever)
        with self._lock:
            if self._gathering is group:  # closed: whoever comes next leads the next one
                self._gathering = None
        try:
            with pipeline(self.connection) as pipe:
                for turn in group:
                    pipe.command_stack.extend(turn.commands)
                replies = pipe.execute(raise_on_error=False)
            at = 0
            for turn in group:
                turn.replies = replies[at:at + len(turn.commands)]
                at += len(turn.commands)
        except BaseException as exc:  # noqa: BLE001 - every thread of the round trip raises it
            for turn in group:
                turn.error = exc
        finally:
            with self._lock:  # leaders of successive round trips may finish together
                self.sent += 1
                self.carried += len(group)
            for turn in group[1:]:
                turn.done.release()
        if interrupted is not None:
            raise interrupted


_shared: weakref.WeakKeyDictionary[redis.Redis, RoundTrips] = weakref.WeakKeyDictionary()
_made = threading.Lock()


def shared(connection: redis.Redis) -> RoundTrips:
    """The process's round trips on `connection` (one per client, made at its first use)."""
    trips = _shared.get(connection)
    if trips is None:
        with _made:
            trips = _shared.get(connection)
            if trips is None:
                trips = _shared[connection] = RoundTrips(connection)
    return trips
