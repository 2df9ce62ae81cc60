"""The poller process (`python -m workers.poller`): the poller's loop and the schedules', on threads it watches over.

A worker started with WORKER_POLLS=1 runs the same loops on threads of its own (workers/worker.py),
so one class, Polling, sets them up for either process; what a round does is workers/poller/loop.py's.
A loop that stops on a bug is started again rather than ending the process, and the process says how
its loops are in its beat (workers/poller/beats.py), for /readyz.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from typing import Callable

import redis

from inloox import deadlines
from workers import cores, failpoints, heap
from workers.logs import configure_logging, follow_registry
from workers.poller import beats as poller_beats
from workers.poller.loop import Following, run
from workers.poller.settings import poller_settings
from workers.registry import Shard
from workers.settings import redis_client
from workers.signals import stop_event
from workers.worker_context import served

log = logging.getLogger("poller")  # as loop.py's: the poller's lines carry one logger name, whichever module wrote them

SUPERVISE_SECONDS = 1.0  # how soon a poller process starts a dead loop again
# A loop started again is said stopped this long after (its beat, or its worker's): a probe every
# 10 s sees a loop that died once; one that keeps dying is said all along.
RESTARTED_SHOWN_SECONDS = 15.0
STOP_SECONDS = 10.0  # a stopping poller process waits this long for its polls under way (then its leases expire)
# The schedules' loop is stuck (said "scheduler stalled") once it has not turned for this many of its intervals, and
# not before STALL_FLOOR_SECONDS (a Redis command may take REDIS_SOCKET_TIMEOUT): 30 s at SCHEDULE_INTERVAL=5, as the
# event consumer's. The poller's loop is stuck once it has not turned for a lease period beyond its wait between rounds:
# its leases have expired, and the other pollers count it gone (workers/poller/leases.py).
STALL_ROUNDS = 6
STALL_FLOOR_SECONDS = 5.0


class Polling:
    """The poller's loop, and the schedules' (workers/scheduler.py), on threads of the process that starts it.

    `python -m workers.poller` runs them while its main thread watches over them (`supervise`); a
    worker started with WORKER_POLLS=1 runs both beside its event consumer, one process fewer, and
    watches over them from its heartbeat (workers/worker.py). Either way the
    process polls only the workspaces whose lease it holds, so any number of them may poll.
    """

    def __init__(self, config: dict, *, with_scheduler: bool, stop: threading.Event | None = None,
                 shard: Shard | None = None, polls: bool = True):
        self.config = config
        self.settings = poller_settings(config)
        self.connection = redis_client(config)  # room for every poll thread, and for the scans running beside them
        self.served = shard or Shard(served(), frozenset())  # a worker's shard (WORKER_WORKSPACES), or every one
        self.follow = Following(config, self.connection, self.served, self.settings.lease_seconds)
        self.me = uuid.uuid4().hex[:8]
        self.stop_event = stop or threading.Event()
        # Without `polls`: `python -m workers.scheduler`, the schedules' loop alone, watched over and beating the same way.
        self.kind = "poller" if polls else "scheduler"
        self.loops: dict[str, Callable[[], None]] = {"poller": self.poll} if polls else {}
        if with_scheduler:
            self.loops["scheduler"] = self.schedule
        self.threads: dict[str, threading.Thread] = {}
        self.starts: dict[str, int] = {}  # loop name → how many times it was started (failpoint subjects)
        self.restarted_at: dict[str, float] = {}  # loop name → when (monotonic) it was last started again
        self.failing: set[str] = set()  # the loops whose last round failed on something other than Redis
        # A thread that is alive says nothing of a loop blocked for good (a lock, a socket without a time-out): each
        # loop notes when it last turned (a round, or a workspace's turn in one), and one silent past its bound is
        # stalled.
        self.turned_at: dict[str, float] = {}  # loop name → when (monotonic) it last turned
        # The loops that have not yet made a round: their first builds what the process keeps of the workspaces it
        # follows (contexts, rules), and leaves what it parsed and compiled on the way as garbage. Once each made
        # one, the heap is settled (workers/heap.py): that garbage collected, its pages given back, the rest frozen.
        self.first_rounds = set(self.loops)
        self.stall_after = {"poller": self.settings.lease_seconds + self.settings.interval}
        if with_scheduler:
            from workers import scheduler

            self.stall_after["scheduler"] = max(STALL_FLOOR_SECONDS,
                                                STALL_ROUNDS * scheduler.settings_from(config).interval)

    def announce(self) -> None:
        poller = self.settings
        log.info("poller %s: %s, every %.1fs, scans every %gs; quiet sets back off after %gs up to %gs (scans %gs)",
                 self.me, ", ".join(a.workspace.name for a in self.follow()) or "no workspace yet", poller.interval,
                 poller.scan_interval(""), poller.idle_after, poller.max_interval, poller.scan_max)
        for name, seconds in {"(default)": poller.scan_every, **poller.scan_every_set}.items():
            if seconds < poller.scan_floor:
                log.warning("scan interval %gs of %s is below the floor: scanning every %gs", seconds, name,
                            poller.scan_floor)

    def poll(self) -> None:
        """The polling loop on the calling thread, until `stop_event` is set."""
        try:
            self.announce()
        except redis.RedisError as exc:  # Redis restarting: the rounds wait for it
            log.warning("poller %s: starting while Redis is unavailable (%s)", self.me, exc)
        run(self.connection, self.follow, self.settings, self.stop_event, me=self.me, rounds=self._round_went,
            turned=lambda: self._turned("poller"))

    def _turned(self, loop: str) -> None:
        self.turned_at[loop] = time.monotonic()

    def _round_went(self, ok: bool, loop: str = "poller") -> None:
        if ok:
            self.failing.discard(loop)
        else:
            self.failing.add(loop)
        if self.first_rounds:
            self.first_rounds.discard(loop)
            if not self.first_rounds:
                heap.settle()  # the rest of start-up: what the first rounds built is kept, what they freed given back

    def schedule(self) -> None:
        """The schedules' loop on the calling thread, until `stop_event` is set."""
        from workers import scheduler

        self.starts["scheduler"] = self.starts.get("scheduler", 0) + 1
        # Tests only: `scheduler_loop~start 1.` ends the first run of the loop as a bug escaping it would.
        failpoints.hit("scheduler_loop", subject=f"start {self.starts['scheduler']}.")
        scheduler.run(self.connection, self.served, scheduler.settings_from(self.config), self.stop_event,
                      rounds=lambda ok: self._round_went(ok, "scheduler"), turned=lambda: self._turned("scheduler"))

    def start(self, *names: str) -> None:
        """The loops named (all by default) on threads of their own, named after them."""
        for name in names or self.loops:
            thread = threading.Thread(target=self._loop, args=(name,), name=name, daemon=True)
            self.threads[name] = thread
            self._turned(name)
            thread.start()

    def _loop(self, name: str) -> None:
        """The loop `name` on this thread; a bug escaping it ends the thread, logged here (so redacted), not
        by Python's hook on stderr. `keep_running` starts it again."""
        try:
            self.loops[name]()
        except Exception:
            log.exception("the %s loop stopped on an error", name)

    def keep_running(self) -> None:
        """Start again a loop whose thread ended while no stop was asked for (its traceback is in the log),
        and the watcher of InLoox's answer deadlines (inloox/deadlines.py)."""
        for name, thread in list(self.threads.items()):
            if not thread.is_alive() and not self.stop_event.is_set():
                log.error("the %s loop had stopped; starting it again", name)
                self.restarted_at[name] = time.monotonic()
                self.start(name)
        deadlines.keep_running()

    def trouble(self) -> str | None:
        """What is wrong with the loops ("poller failing", "scheduler stopped", "poller stalled", …); None when all
        run.

        A loop started again within RESTARTED_SHOWN_SECONDS counts as stopped: one that dies at every
        start is alive only for moments, and a beat taken in one of them would say all is well.
        """
        moment = time.monotonic()
        dead = sorted(name for name, thread in self.threads.items() if not thread.is_alive()
                      or moment - self.restarted_at.get(name, float("-inf")) < RESTARTED_SHOWN_SECONDS)
        if dead:
            return f"{' and '.join(dead)} stopped"
        stalled = sorted(name for name in self.threads
                         if moment - self.turned_at.get(name, moment) > self.stall_after[name])
        if stalled:
            return f"{' and '.join(stalled)} stalled"
        failing = sorted(self.failing)  # once: the loops' threads change it
        return f"{' and '.join(failing)} failing" if failing else deadlines.trouble()

    def supervise(self) -> None:
        """The loops on threads of their own until `stop_event` is set; this thread starts a dead one again
        and says how they are (workers/poller/beats.py) for /readyz. The poller process's main thread.
        """
        self.start()
        next_beat = 0.0
        while not self.stop_event.is_set():
            self.keep_running()
            heap.keep()  # the collector off what the workspaces followed built (workers/heap.py)
            if time.monotonic() >= next_beat and self._beat():
                next_beat = time.monotonic() + poller_beats.BEAT_SECONDS
            self.stop_event.wait(SUPERVISE_SECONDS)
        self.stop(STOP_SECONDS)
        try:
            poller_beats.leave(self.connection, self.me)
        except redis.RedisError:
            pass  # Redis went first: /readyz says this poller gone until a live one forgets it (FORGET_AFTER)

    def _beat(self) -> bool:
        """Say how the loops are; False when Redis is away (the loops wait for it; the beat is said again)."""
        try:
            poller_beats.beat(self.connection, self.me, self.trouble() or poller_beats.POLLING, now=time.time(),
                              kind=self.kind)
        except redis.RedisError as exc:
            log.debug("%s %s: beat not written (%s)", self.kind, self.me, exc)
            return False
        return True

    def stop(self, timeout: float) -> None:
        """Ask both loops to stop and wait for them: the poller releases its leases on its way out."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))


def main(argv: list[str] | None = None) -> int:
    """`python -m workers.poller [--with-scheduler] [--no-pin]`: poll every workspace; with the flag, also
    fire their schedules (workers/scheduler.py) on a thread of this process, one process fewer. The
    process keeps to the core it starts on (workers/cores.py: a poll round's loop and its pool pass the
    GIL back and forth), unless `--no-pin`."""
    from workers.settings import load_config  # the one place settings are read from the environment

    argv = sys.argv[1:] if argv is None else argv
    if len(set(argv)) != len(argv) or not set(argv) <= {"--with-scheduler", "--no-pin"}:
        print("usage: python -m workers.poller [--with-scheduler] [--no-pin]", file=sys.stderr)
        return 2
    if "--no-pin" not in argv:
        cores.pin()

    config = load_config()
    configure_logging(config)
    follow_registry(served().view)  # workspaces added or rotated later have their secrets redacted too
    polling = Polling(config, with_scheduler="--with-scheduler" in argv, stop=stop_event())
    # A dead loop is started again in the process rather than ending it: under honcho (the Procfile's
    # runner) one process that exits stops the whole stack, and the worker's loops are kept the same way.
    polling.supervise()
    return 0


if __name__ == "__main__":
    sys.exit(main())
