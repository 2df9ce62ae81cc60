"""The worker's beat, for /readyz: whether its event consumer runs, or else what is wrong with its poller.

Each worker says it under its RQ name ("running"; "failing", "stalled" or "stopped" when not; "none"
before it has one; or "poller failing", "scheduler stopped", …), every CONSUMER_BEAT_SECONDS; a running
consumer that sets aside the event logs Redis refuses says "running" followed by REFUSED and their workspaces
("a, b"): the others are served;
/readyz reads it beside RQ's heartbeat. Here rather than in workers/worker.py, which writes it: the
web reads it, and importing the worker (its consumer, its poller) cost each web process ~0.5 MB of
RSS (issue 22).
"""
CONSUMER_BEAT = "consumer:beat:"
CONSUMER_STATES = ("failing", "stalled", "stopped")
REFUSED = "; event logs refused: "
CONSUMER_BEAT_SECONDS = 5
CONSUMER_BEAT_TTL = 30
