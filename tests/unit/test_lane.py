"""A lane (inloox/together.py): calls submitted from other threads are in flight at once on one thread,
and a `run` inside one of them runs its calls together with the lane's other calls."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from inloox import together


@pytest.fixture
def lane():
    lane = together.Lane("test-lane")
    yield lane
    lane.shutdown(5)


def test_a_call_waiting_on_a_lane_lets_the_next_one_run(lane):
    opened: dict[str, asyncio.Event] = {}

    def first():
        opened["event"] = asyncio.Event()  # made on the lane's loop, as each of its waits is
        together.wait_for(opened["event"].wait())  # done only once the second call has run
        return "first", threading.get_ident(), together.awaiting()

    def second():
        opened["event"].set()
        return "second", threading.get_ident(), together.awaiting()

    a, b = lane.submit(first), lane.submit(second)
    (name_a, thread_a, awaiting_a), (name_b, thread_b, awaiting_b) = a.result(5), b.result(5)
    assert (name_a, name_b) == ("first", "second")
    assert thread_a == thread_b != threading.get_ident() and awaiting_a and awaiting_b


def test_a_run_inside_a_lane_call_runs_its_calls_together_beside_the_lanes_other_calls(lane):
    """A batch on the lane runs its events with `together.run`: their waits overlap (one after the other,
    the first would wait for the second for good), and the other batches go on meanwhile."""
    opened: dict[str, asyncio.Event] = {}

    def waiting(name):
        together.wait_for(opened[name].wait())
        return "waited"

    def batch():
        opened["own"], opened["other"] = asyncio.Event(), asyncio.Event()
        return together.run([lambda: waiting("own"), lambda: opened["own"].set() or "set", lambda: waiting("other")])

    def other_batch():
        opened["other"].set()
        return "other"

    a, b = lane.submit(batch), lane.submit(other_batch)
    assert a.result(5) == ["waited", "set", "waited"] and b.result(5) == "other"


def test_what_a_lane_call_raises_is_its_futures(lane):
    def failing():
        raise ValueError("the event's own error")

    with pytest.raises(ValueError, match="own error"):
        lane.submit(failing).result(5)
    assert lane.submit(lambda: "next").result(5) == "next"  # the lane goes on


def test_shutdown_waits_for_the_calls_in_flight():
    lane = together.Lane("test-lane")
    started, release = threading.Event(), threading.Event()

    def slow():
        started.set()
        together.blocking(lambda: release.wait(5))  # on another thread, the lane free meanwhile
        return "done"

    future = lane.submit(slow)
    assert started.wait(5)
    stopping = threading.Thread(target=lane.shutdown, args=(10,))
    stopping.start()
    stopping.join(0.3)
    assert stopping.is_alive() and not future.done()  # still waiting for the call
    release.set()
    stopping.join(10)
    assert not stopping.is_alive() and future.result(0) == "done"


def test_a_lane_whose_call_blocks_its_thread_says_it_is_stalled(monkeypatch):
    """/readyz tells the truth about every loop a worker runs (workers/consumer/): a call that blocks the
    lane's thread (not a wait it hands to the loop) holds up every batch in flight."""
    monkeypatch.setattr(together, "LANE_STALL_SECONDS", 0.3)
    monkeypatch.setattr(together, "LANE_BEAT_SECONDS", 0.05)
    lane = together.Lane("test-lane")
    release = threading.Event()
    try:
        assert lane.submit(lambda: "quick").result(5) == "quick" and lane.trouble() is None
        blocked = lane.submit(lambda: release.wait(10))  # on the lane's thread itself
        deadline = time.monotonic() + 5
        while lane.trouble() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lane.trouble() == "stalled"
        release.set()
        assert blocked.result(5) is True
        time.sleep(0.2)
        assert lane.trouble() is None
    finally:
        release.set()
        lane.shutdown(5)


def test_a_lane_whose_loop_ended_fails_its_calls_in_flight_and_starts_again(lane):
    """A call that raises what ends an event loop (SystemExit) ends the lane's thread: the other calls in
    flight fail (their events are left for another delivery) rather than wait for good, /readyz says the
    lane stopped, and the next batch starts it again."""
    opened: dict[str, asyncio.Event] = {}

    def waiting():
        opened["event"] = asyncio.Event()
        together.wait_for(opened["event"].wait())  # never set

    def ending():
        raise SystemExit(3)

    waiter = lane.submit(waiting)
    with pytest.raises(SystemExit):
        lane.submit(ending).result(5)
    with pytest.raises(RuntimeError, match="loop stopped"):
        waiter.result(5)
    deadline = time.monotonic() + 5
    while lane.trouble() is None and time.monotonic() < deadline:  # its thread ends after failing them
        time.sleep(0.01)
    assert lane.trouble() == "stopped"
    assert lane.submit(lambda: "again").result(5) == "again" and lane.trouble() is None


def test_a_lane_whose_loop_ended_is_started_again_by_the_workers_beat(lane):
    """/readyz said "event lane stopped" until the next batch came to the lane; a worker back at its busy
    floor may send none for hours, while nothing is wrong with it. The worker's beat (keep_running) starts it."""
    def ending():
        raise SystemExit(3)

    assert lane.keep_running() is False  # never started: nothing to start again
    with pytest.raises(SystemExit):
        lane.submit(ending).result(5)
    deadline = time.monotonic() + 5
    while lane.trouble() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lane.trouble() == "stopped"
    assert lane.keep_running() is True and lane.trouble() is None
    assert lane.keep_running() is False and lane.submit(lambda: "again").result(5) == "again"
