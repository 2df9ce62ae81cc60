"""inloox/deadlines.py: the watcher that cuts off answers past their deadline."""
from __future__ import annotations

import socket
import time

import pytest

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


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the SystemExit below
def test_a_watcher_that_ended_is_said_stopped_and_started_again(monkeypatch):
    """/readyz tells the truth about every loop a process runs: the worker's beat carries `trouble()`, and
    its turns start an ended watcher again (`keep_running`). Before, one that ended kept no deadline, unseen."""
    ours, theirs = socket.socketpair()
    try:
        deadlines.unwatch(deadlines.watch(time.monotonic() + 60, ours))  # the watcher runs
        assert deadlines.trouble() is None and deadlines.keep_running() is False

        def ends(now):
            raise SystemExit  # not an Exception: the loop does not catch it, and its thread ends

        monkeypatch.setattr(deadlines, "_cut_overdue", ends)
        deadline = time.monotonic() + deadlines.CHECK_SECONDS * 6
        while deadlines._watcher.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert deadlines.trouble() == "answer deadlines stopped"
        monkeypatch.undo()

        assert deadlines.keep_running() is True
        assert deadlines.trouble() is None and deadlines._watcher.is_alive()
        deadlines.watch(time.monotonic(), ours)  # and it keeps deadlines again
        ours.settimeout(deadlines.CHECK_SECONDS * 4)
        assert ours.recv(1) == b""
        monkeypatch.setattr(deadlines, "STALL_SECONDS", -1.0)  # a watcher that has not turned for too long
        assert deadlines.trouble() == "answer deadlines stalled"
    finally:
        ours.close()
        theirs.close()
