"""The InLoox change poller: finds what changed in InLoox (which has no webhooks) and hands it over as events.

    process.py    the poller process (`python -m workers.poller`, or a worker's threads with
                  WORKER_POLLS=1): the poller's loop and the schedules' on threads, watched over
    loop.py       the poller's loop: its rounds, each polling the workspaces held that have something due
    leases.py     which workspaces a poller polls: their leases, and the fair share between pollers
    settings.py   the POLL_* settings: intervals, scan intervals per set, the lease period, the threads
    beats.py      each poller process's beat (`pollers:beats`), for /readyz
    poll.py       one poll of one entity set's change feed: read, diff, hand the events over
    scan.py       one scan of an entity set without a change feed: read it whole, compare, hand over
    snapshots.py  what the poller last saw of each watched entity: the cursors and snapshots in Redis
    pace.py       how often a watched set is polled: its active interval, backing off while quiet
    status.py     the poller's state per entity set (last poll, lag), for /metrics, the dashboard and the CLI

Nothing is re-exported here: callers import the module they use
(`from workers.poller import status as poll_status`, `from workers.poller.poll import poll_once`).
"""
