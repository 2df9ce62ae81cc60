"""How long the process's waits for the outside have lasted (inloox.connections.Exchanges)."""
from __future__ import annotations

import threading
import time

from inloox.connections import Exchanges
from workers.consumer.gate import Gate


def _waiting(exchanges: Exchanges, release: threading.Event, *, event_thread: bool = True) -> threading.Thread:
    """A thread waiting for an answer until `release`: an event's (inside the gate) or a poller's (outside)."""
    inside = threading.Event()

    def wait() -> None:
        if event_thread:
            exchanges.gate.enter()
        with exchanges.exchange():
            inside.set()
            release.wait(10)
        if event_thread:
            exchanges.gate.leave()

    thread = threading.Thread(target=wait)
    thread.start()
    inside.wait(10)
    return thread


def test_the_oldest_wait_under_way_shows_an_answer_that_has_not_come():
    exchanges = Exchanges()
    exchanges.gate = Gate(width=4)
    assert exchanges.oldest_wait() == 0.0
    first, second = threading.Event(), threading.Event()
    hung = _waiting(exchanges, first)
    time.sleep(0.2)
    quick = _waiting(exchanges, second)
    assert exchanges.oldest_wait() >= 0.2  # the first, not the one that began since
    assert exchanges.take() == []  # no duration is recorded before the answer comes
    first.set()
    hung.join(10)
    assert exchanges.oldest_wait() < 0.2  # the first is over: the second is the oldest now
    second.set()
    quick.join(10)
    assert exchanges.oldest_wait() == 0.0
    assert len(exchanges.take()) == 2


def test_a_wait_outside_the_gate_is_no_events_wait():
    """A poller's slow scan in a worker process holds up no event: it does not count as an answer awaited."""
    exchanges = Exchanges()
    exchanges.gate = Gate(width=4)
    release = threading.Event()
    poller = _waiting(exchanges, release, event_thread=False)
    time.sleep(0.1)
    assert exchanges.oldest_wait() == 0.0
    release.set()
    poller.join(10)
    assert len(exchanges.take()) == 1  # its answer's time still counts among the process's answers
