"""`python -m workers.poller [--with-scheduler]`: the poller process (workers/poller/process.py has it)."""
import sys

from workers.poller.process import main

sys.exit(main())
