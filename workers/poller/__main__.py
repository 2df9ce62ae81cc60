"""`python -m workers.poller [--with-scheduler]`: the poller process (workers/poller/loop.py has it)."""
import sys

from workers.poller.loop import main

sys.exit(main())
