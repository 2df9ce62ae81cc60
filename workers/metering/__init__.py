"""Metering and plan limits: what each workspace used, per UTC day and month, and what it may use.

    usage.py   the counts (events by source, runs, billable runs, InLoox reads and writes,
               notifications, change-feed deliveries, billable runs per rule) in one hash per
               workspace and day and one per month, written with the shared metrics batch
               (workers/metrics.py) or on the pipeline of the write they belong to; read back
               as the usage report of the API, the CLI and the dashboard
    limits.py  the plan limits `runs_per_month` (billable runs) and `events_per_day`: runs over
               the monthly limit wait as `over_limit` and are released in order when there is
               room again; alerts at 80 % and 100 %, once each per period

Only `usage` is imported here: workers/metrics.py imports this package, and `limits` needs
modules (outbound, runs, enqueue) that import metrics in turn.
"""
from workers.metering.usage import SOURCES, month_of, over, report, usage_fields

__all__ = ["SOURCES", "month_of", "over", "report", "usage_fields"]
