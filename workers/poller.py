"""The InLoox change poller process (`python -m workers.poller`).

Not built yet: the poller belongs to the event-pipeline issue. Until then this entry point says so
and idles, so the Procfile, `make run` and process supervision already have their final shape.
"""
from __future__ import annotations

import signal
import sys


def main() -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    print(
        "poller: not built yet (event-pipeline issue). It will watch the InLoox entity sets that "
        "enabled rules trigger on, through the Dynamic views, and enqueue their changes. Idling.",
        flush=True,
    )
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    return 0


if __name__ == "__main__":
    sys.exit(main())
