"""inloox/deadlines.py: the watcher that cuts off answers past their deadline."""
from __future__ import annotations

import socket
import time

from inloox import deadlines


class _Broken:
    def shutdown(self, how):
        raise RuntimeError("a socket nobody foresaw")


def test_the_watcher_keeps_cutting_off_overdue_answers_after_one_it_could_not():
    ours, theirs = socket.socketpair()
    try:
        deadlines.watch(0.0, _Broken())
        time.sleep(deadlines.CHECK_SECONDS * 2.5)
        assert deadlines._watcher.is_alive()  # a watcher that died would keep no deadline again
        deadlines.watch(time.monotonic(), ours)
        ours.settimeout(deadlines.CHECK_SECONDS * 4)
        assert ours.recv(1) == b""  # shut: the read waiting on it ends at once
    finally:
        ours.close()
        theirs.close()
