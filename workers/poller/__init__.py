"""The InLoox change poller: finds what changed in InLoox (which has no webhooks) and hands it over as events.

    loop.py       the poller's loop and process (`python -m workers.poller`, or a worker's threads
                  with WORKER_POLLS=1): the workspaces' leases, the rounds, the schedules' loop
    beats.py      each poller process's beat (`pollers:beats`), for /readyz
    poll.py       one poll of one entity set's change feed: read, diff, hand the events over
    scan.py       one scan of an entity set without a change feed: read it whole, compare, hand over
    snapshots.py  what the poller last saw of each watched entity: the cursors and snapshots in Redis
    pace.py       how often a watched set is polled: its active interval, backing off while quiet
    status.py     the poller's state per entity set (last poll, lag), for /metrics, the dashboard and the CLI

Nothing is re-exported here: callers import the module they use
(`from workers.poller import status as poll_status`, `from workers.poller.poll import poll_once`).
"""
