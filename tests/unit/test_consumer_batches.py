"""A thread of the event consumer may take several events of one workspace (workers/consumer/): each is
handled, acknowledged or left pending on its own, and workspaces still take turns."""
from __future__ import annotations

from concurrent.futures import Future

import redis

from workers.consumer import EventConsumer, _chunks, _in_turns
from workers.eventlog import Entry


def _entries(*ids: str) -> list[Entry]:
    return [Entry(entry_id, {"id": f"event-{entry_id}"}) for entry_id in ids]


def test_chunks_keep_each_workspaces_order_and_workspaces_take_turns():
    a, b = _entries("1-0", "2-0", "3-0"), _entries("4-0", "5-0")
    read = [("ws:a", a[0]), ("ws:b", b[0]), ("ws:a", a[1]), ("ws:a", a[2]), ("ws:b", b[1])]
    assert _in_turns(_chunks(read, 2)) == [("ws:a", a[:2]), ("ws:b", b), ("ws:a", a[2:])]
    assert _in_turns(_chunks(read, 1)) == [("ws:a", [a[0]]), ("ws:b", [b[0]]), ("ws:a", [a[1]]), ("ws:b", [b[1]]),
                                           ("ws:a", [a[2]])]


def _consumer_with(entries: list[Entry]) -> tuple[EventConsumer, object]:
    taker = EventConsumer(redis.Redis(), ["default"], name="test", pool_size=8)  # no thread started, no command sent
    stream = next(iter(taker.streams.values()))
    stream.handling.update(e.id for e in entries)
    taker._in_flight = 1
    return taker, stream


def test_each_event_of_a_thread_is_acknowledged_or_left_pending_on_its_own():
    entries = _entries("1-0", "2-0", "3-0")
    taker, stream = _consumer_with(entries)
    done = Future()
    # A Redis error is left for the next delivery (no trace to keep): the others are acknowledged.
    done.set_result([None, redis.ConnectionError("gone"), None])
    taker._finished(stream, entries, done)
    assert stream.done == ["1-0", "3-0"] and stream.handling == set() and taker._in_flight == 0


def test_a_thread_that_failed_as_a_whole_leaves_all_its_events_pending():
    entries = _entries("1-0", "2-0")
    taker, stream = _consumer_with(entries)
    failed = Future()
    failed.set_exception(redis.ConnectionError("gone"))
    taker._finished(stream, entries, failed)
    assert stream.done == [] and stream.handling == set() and taker._in_flight == 0
