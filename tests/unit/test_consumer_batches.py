"""A thread of the event consumer may take several events of one workspace (workers/consumer/): each is
handled, acknowledged or left pending on its own, and workspaces still take turns."""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import redis

from inloox import together
from inloox.connections import exchanges
from workers import consumer
from workers.consumer import EventConsumer, _chunks, _in_turns
from workers.consumer.gate import GATE
from workers.consumer.in_flight import BUSY_FLOOR, FLOOR, LONG_SECONDS, TOGETHER, TOGETHER_LONG
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
    taker._finished([(stream, e) for e in entries], done)
    assert stream.done == ["1-0", "3-0"] and stream.handling == set() and taker._in_flight == 0


def test_a_thread_that_failed_as_a_whole_leaves_all_its_events_pending():
    entries = _entries("1-0", "2-0")
    taker, stream = _consumer_with(entries)
    failed = Future()
    failed.set_exception(redis.ConnectionError("gone"))
    taker._finished([(stream, e) for e in entries], failed)
    assert stream.done == [] and stream.handling == set() and taker._in_flight == 0


def _busy_consumer(monkeypatch, handle) -> EventConsumer:
    """A consumer whose in-flight limit found the process busy with its own work (one thread, several
    events together), handing one event to `handle(workspace, entries)` on its thread of batches."""
    monkeypatch.setattr(consumer, "_handle_together", lambda batches: handle(*batches[0]))
    # The process's answer times are global (inloox.connections.exchanges): earlier tests' slow answers
    # (test_client_http's time-outs) would be this consumer's first window, and send it to 48 threads.
    exchanges.take()
    taker = EventConsumer(redis.Redis(), ["default"], name="test", pool_size=400)  # no command sent
    taker.limit.value = BUSY_FLOOR
    assert taker.limit.batch() == TOGETHER
    taker._submit(next(iter(taker.streams.values())), _entries("1-0"), how="together")
    return taker


def test_an_event_slow_for_want_of_cpu_keeps_a_busy_worker_on_a_few_threads(monkeypatch):
    # While the web takes most of the cores, one event of a worker can take seconds: its thread waits for
    # the GIL and for a place among 48 others. It waits for no answer: more threads, one event each (the
    # dearest way to run events) would only make it slower. Before: every such event sent it there.
    release = threading.Event()
    taker = _busy_consumer(monkeypatch, lambda workspace, entries, together=False: release.wait(10) and [None] * len(entries))
    try:
        time.sleep(LONG_SECONDS + 0.2)
        taker._wait_for_space()
        assert (taker.limit.value, taker.limit.batch()) == (BUSY_FLOOR, TOGETHER)
    finally:
        release.set()
        taker._together.shutdown(wait=True)


def test_an_answer_that_does_not_come_sends_a_busy_worker_back_to_one_event_per_thread(monkeypatch):
    release = threading.Event()

    def hung(workspace, entries, together=False):
        with GATE.held(), exchanges.exchange():  # an event's thread; a receiver that does not answer
            release.wait(10)
        return [None] * len(entries)

    taker = _busy_consumer(monkeypatch, hung)
    try:
        # At the busy floor a fraction of a second will do: the thread's next batches wait behind it.
        time.sleep(TOGETHER_LONG + 0.1)
        taker._wait_for_space()
        assert (taker.limit.value, taker.limit.batch()) == (FLOOR, 1)
    finally:
        release.set()
        taker._together.shutdown(wait=True)


def test_batches_run_together_always_run_on_the_same_thread(monkeypatch):
    """Each thread that runs a batch together keeps an event loop and its InLoox connections open for good
    (inloox/together.py): among a pool of 400 threads taking turns, hundreds would each keep theirs."""
    release, ran = threading.Event(), []

    def handle(workspace, entries, together=False):
        ran.append((together, threading.get_ident()))
        if not together:
            release.wait(10)
        return [None] * len(entries)

    monkeypatch.setattr(consumer, "_handle_events", handle)
    monkeypatch.setattr(consumer, "_handle_together",
                        lambda batches: [None for b in batches for e in handle(*b, together=True)])
    taker = EventConsumer(redis.Redis(), ["default"], name="test", pool_size=400)  # no command sent
    stream = next(iter(taker.streams.values()))
    try:
        for n in range(8):  # threads of the pool busy with one event each, then idle, taking turns
            taker._submit(stream, _entries(f"{n}-0"))
        release.set()
        for n in range(8):
            taker._submit(stream, _entries(f"{n}-1", f"{n}-2"), how="together")
            deadline = time.monotonic() + 5
            while sum(1 for together, _ in ran if together) <= n and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        release.set()
        taker._pool.shutdown(wait=True)
        taker._together.shutdown(wait=True)
    threads = {thread for together, thread in ran if together}
    assert len([1 for together, _ in ran if together]) == 8 and len(threads) == 1


def test_acknowledgements_that_went_with_a_failed_read_are_sent_again_later():
    """The handled entries are acknowledged in the round trip that reads the next ones (eventlog.read_new):
    should it fail, they are still to be acknowledged at a later turn, none forgotten."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from tests.support.processes import free_port

    gone = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))  # nothing listens
    taker = EventConsumer(gone, ["default"], name="test", pool_size=8)
    stream = next(iter(taker.streams.values()))
    stream.done.extend(["1-0", "2-0"])
    try:
        taker._read([stream.key], 16, room=16, most=16)
    except redis.ConnectionError:
        pass
    else:
        raise AssertionError("the read should have failed")
    assert stream.done == ["1-0", "2-0"]


def test_against_a_slow_inloox_batches_are_in_flight_together_on_the_lane_each_event_a_place(monkeypatch):
    """At FLOOR or above (the events wait for InLoox) batches of any workspaces go to the lane, all in flight
    on one thread at once, and the limit counts their events, not the batches: what it allows is events."""
    release, ran = threading.Event(), []

    def handle(batches):
        ran.append(threading.current_thread().name)
        together.blocking(lambda: release.wait(10))  # an answer awaited: the lane takes the next batch meanwhile
        return [None for _, entries in batches for _ in entries]

    monkeypatch.setattr(consumer, "_handle_on_lane", handle)
    taker = EventConsumer(redis.Redis(), ["a", "b"], name="test", pool_size=400)  # no command sent
    taker.limit.value = FLOOR
    a, b = taker.streams.values()
    try:
        taker._hand_out([(a, e) for e in _entries("1-0", "2-0")] + [(b, e) for e in _entries("3-0")], how=taker._how())
        taker._hand_out([(a, e) for e in _entries("4-0")], how=taker._how())
        deadline = time.monotonic() + 5
        while len(ran) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ran == ["events-lane", "events-lane"] and taker._in_flight == 4
    finally:
        release.set()
        taker._lane.shutdown(5)
    assert taker._in_flight == 0 and sorted(a.done) == ["1-0", "2-0", "4-0"] and b.done == ["3-0"]


def test_a_read_lingers_after_a_trickle_not_after_a_backlog():
    taker = EventConsumer(redis.Redis(), ["a", "b"], name="test", pool_size=400)  # no command sent
    a, b = [("ws:a", e) for e in _entries("1-0", "2-0", "3-0")], [("ws:b", e) for e in _entries("4-0")]
    assert taker._trickle(a, 48)  # three came, there was room for more: the log is drained, let more gather
    assert taker._trickle(a, 3)  # as many as asked, once: a backlog, or just those
    assert not taker._trickle(a, 3)  # as many as asked, twice in a row: a backlog, read again at once
    assert taker._trickle(b, 1) and taker._trickle(a[:1], 1)  # a hosted worker's one event a workspace a turn
    assert not taker._trickle(a[1:2], 1)  # the same workspace's again: a backlog
    many = [("ws:a", e) for e in _entries(*(f"{n}-1" for n in range(TOGETHER)))]
    assert not taker._trickle(many, 400)  # a busy batch
    assert not taker._trickle([], 48)  # nothing came: the read's own block waited already
