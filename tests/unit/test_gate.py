"""The worker's gate: few event threads run at once, and none holds a place while it waits for an answer."""
from __future__ import annotations

import threading

import pytest

from inloox.connections import exchanges
from workers.consumer.gate import Gate


@pytest.fixture
def gate():
    gate, before = Gate(width=2), exchanges.gate
    exchanges.gate = gate
    yield gate
    exchanges.gate = before


def test_at_most_width_threads_run_at_once_and_every_one_waits_for_its_answer_at_the_same_time(gate):
    """Six events in flight through a gate of two: never more than two run at once, yet all six wait
    for InLoox together (their requests are in flight at once), as 300 writes a second at a 1 s InLoox
    need 300 requests in flight."""
    threads = 6
    all_waiting = threading.Barrier(threads)
    inside, most_inside, lock = 0, 0, threading.Lock()
    broken = []

    def note(change: int) -> None:
        nonlocal inside, most_inside
        with lock:
            inside += change
            most_inside = max(most_inside, inside)

    def event() -> None:
        with gate.held():
            note(+1)
            for _ in range(2):  # a run's plan, then its end, each between two answers
                note(-1)
                with exchanges.exchange():
                    try:
                        all_waiting.wait(timeout=5)
                    except threading.BrokenBarrierError:
                        broken.append(True)
                note(+1)
            note(-1)

    started = [threading.Thread(target=event) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join(10)
    assert not broken, "threads waiting for an answer kept their places: the others could not send"
    assert most_inside <= 2


def test_a_thread_outside_the_gate_waits_for_answers_without_taking_or_giving_a_place(gate):
    """A poller's or an RQ job's request: the gate is the event threads' only."""
    with exchanges.exchange():
        pass
    with exchanges.waiting():
        pass
    holders = [threading.Thread(target=gate.enter) for _ in range(2)]
    for thread in holders:
        thread.start()
    for thread in holders:
        thread.join(5)
    assert not any(thread.is_alive() for thread in holders), "a place was taken by a thread outside the gate"


def test_many_threads_coming_and_going_all_get_their_places_and_never_more_than_width_at_once():
    """400 event threads at a 1 s InLoox step out and back in at every answer: each one gets a place
    again (none waits for ever), and the places never exceed the width, however they interleave."""
    gate, inside, most_inside, lock = Gate(width=3), 0, 0, threading.Lock()
    rounds = []

    def event() -> None:
        nonlocal inside, most_inside
        done = 0
        for _ in range(50):
            gate.enter()
            with lock:
                inside += 1
                most_inside = max(most_inside, inside)
            with lock:
                inside -= 1
            assert gate.leave()
            done += 1
        rounds.append(done)

    started = [threading.Thread(target=event) for _ in range(40)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join(20)
    assert rounds == [50] * 40, "a thread was left waiting for a place"
    assert most_inside <= 3
    assert not gate.leave(), "this thread holds no place"
