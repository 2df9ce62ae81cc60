"""Run a command whose own children outlive it (`make run`: make starts honcho, honcho the stack) so that they all
end with the test process, however it ends.

    python -m tests.support.reaper COMMAND [ARG ...]

A test's processes die with it (tests/support/processes.py: PR_SET_PDEATHSIG), but the kernel signals only the
direct child: a `make run` started by a test killed with SIGKILL got its SIGTERM and exited, and honcho with the
whole stack under it ran on for good. This process stands between the test and the command, in the command's
process group: told that the test is gone (its SIGTERM arrives and its parent is no longer the test), it stops the
whole group as a person's Ctrl+C would. Otherwise it waits for the command and ends as the command did, so a
test's signals to the group and its look at the exit status see the command's.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    parent = os.getppid()

    def stop(signum, frame) -> None:
        if os.getppid() != parent:  # the test is gone: nobody else will stop what the command started
            os.killpg(0, signal.SIGTERM)
        # Else the test signalled the group, the command included: it stops by itself, and we wait for it.

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    child = subprocess.Popen(argv)  # its signals start at their defaults (exec resets the handlers set here)
    code = child.wait()
    if code < 0:  # end by the same signal, as the command did
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
