"""Events whose workspace's rules must be compiled first (a large bundle just activated) go to a thread of their own
(workers/consumer `_compile_apart`). That other workspaces' events are not held up meanwhile, with events of the
compiling one arriving all along, is shown by a real worker in tests/integration/test_workspaces.py; this is the
window between two turns of the loop in which a workspace is let go, which no real process can be held in."""
from __future__ import annotations

import redis

from workers import consumer
from workers.consumer import EventConsumer
from workers.eventlog import Entry


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
