"""How long the process's waits for the outside have lasted (inloox.connections.Exchanges)."""
from __future__ import annotations

import threading
import time

from inloox.connections import Exchanges


def _waiting(exchanges: Exchanges, release: threading.Event) -> threading.Thread:
    inside = threading.Event()

    def wait() -> None:
        with exchanges.exchange():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=wait)
    thread.start()
    inside.wait(10)
    return thread


def test_the_oldest_wait_under_way_shows_an_answer_that_has_not_come():
    exchanges = Exchanges()
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
