"""Events whose workspace's rules must be compiled first (a large bundle just activated) go to a thread of their own
(workers/consumer `_compile_apart`): other workspaces' events, on the busy floor's thread, are not held up by it."""
from __future__ import annotations

import threading
import time
import types

import redis

from workers import consumer
from workers.consumer import EventConsumer
from workers.eventlog import Entry
from workers.worker_context import RuleSource
from workers.workspaces import Workspace


class _SlowRules(RuleSource):
    """A bundle of 1 MB just activated: its compile takes until `done` is set."""

    def __init__(self, workspace: Workspace, done: threading.Event):
        super().__init__(connection=None, workspace=workspace)
        self.done, self.compiles = done, 0

    def _stamp_now(self, not_before):
        return time.time(), "1:abc"

    def _pending(self, stamp):
        return 0 if self._stamp == stamp else 1 << 20

    def _load(self, stamp):
        self.compiles += 1
        self.done.wait(20)
        return object(), "v1", stamp


def test_events_arriving_while_a_large_bundle_compiles_do_not_hold_up_another_workspaces_events(monkeypatch):
    compiled = threading.Event()
    big, quick = Workspace("big", "http://x", "k"), Workspace("quick", "http://x", "k")
    contexts = {w.name: types.SimpleNamespace(workspace=w, rules=_SlowRules(w, compiled) if w is big else None)
                for w in (big, quick)}
    monkeypatch.setattr(consumer, "worker_context", lambda name: contexts[name])
    handled = []

    def plan(ctx, arrivals, wait):
        if ctx.rules is not None:
            ctx.rules.current(not_before=arrivals[0].accepted_at, wait=wait)
        handled.append(ctx.workspace.name)

    def handle_together(batches):  # as workers.jobs.handle_together: plans without waiting for a compile
        outcomes = []
        for ctx, arrivals in batches:
            try:
                plan(ctx, arrivals, wait=False)
                outcomes.append([{}] * len(arrivals))
            except Exception as exc:  # noqa: BLE001
                outcomes.append([exc] * len(arrivals))
        return outcomes

    def handle_batch(ctx, arrivals):  # as workers.jobs.handle_batch: plans waiting for the compile
        plan(ctx, arrivals, wait=True)
        return [{}] * len(arrivals)

    monkeypatch.setattr(consumer, "handle_together", handle_together)
    monkeypatch.setattr(consumer, "handle_batch", handle_batch)
    taker = EventConsumer(redis.Redis(), ["big", "quick"], name="test", pool_size=64)  # no command sent
    streams = {s.workspace: s for s in taker.streams.values()}
    now = int(time.time() * 1000) - 1000
    try:
        # big's events keep arriving during its compile, a few each turn of the loop: each read hands them to the
        # busy floor's thread, which gives them back (Compiling), and the next turn hands them to the pool.
        for turn in range(12):
            taker._submit(streams["big"], [Entry(f"{now + turn}-0", {"id": f"b{turn}"})], how="together")
            deadline = time.monotonic() + 0.5
            while not taker._to_compile and time.monotonic() < deadline:
                time.sleep(0.005)
            taker._compile_apart()
        assert not compiled.is_set() and "big" not in handled
        taker._submit(streams["quick"], [Entry(f"{now}-1", {"id": "q0"})], how="together")
        deadline = time.monotonic() + 3
        while "quick" not in handled and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "quick" in handled, "quick's event waited for big's compile"
    finally:
        compiled.set()
        taker._pool.shutdown(wait=True)
        taker._together.shutdown(wait=True)
    assert handled.count("big") == 12 and contexts["big"].rules.compiles == 1


def test_events_to_compile_of_a_workspace_let_go_are_left_pending(monkeypatch):
    # Paused (or deleted) between the busy floor's thread giving its events back and the next turn: nothing of it
    # runs from then on, as for the events Redis cut short (`_hand_out_cut_short`); they stay pending, for the claim.
    handed = []
    monkeypatch.setattr(consumer, "_compile_events", lambda workspace, entries: handed.append(workspace) or [])
    taker = EventConsumer(redis.Redis(), ["big"], name="test", pool_size=4)  # no command sent
    stream = next(iter(taker.streams.values()))
    taker._to_compile.append((stream.key, Entry("1-0", {"id": "b0"})))
    stream.let_go = True
    try:
        taker._compile_apart()
    finally:
        taker._pool.shutdown(wait=True)
    assert handed == [] and stream.handling == set() and taker._to_compile == []
