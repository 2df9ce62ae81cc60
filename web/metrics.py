"""`GET /metrics`: Prometheus metrics of the whole stack, read from Redis at each scrape.

Web, worker and poller are separate processes, so their counters live in Redis (`workers.metrics`)
and this collector reads them; gauges (queue depth, poll lag, held floods, workers) are measured
from Redis as they are now. Every series has a `workspace` label but the queue depths' (a `queue`, named
after its workspace), the step histogram's (summed over the workspaces shown) and the workers' count
(the deployment's). `/metrics` shows all workspaces
(the operator's token, when OPERATOR_TOKEN is set); `/workspaces/<ws>/metrics` shows one workspace's
series only, to its admin token.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timezone

from typing import TYPE_CHECKING

import redis
from flask import Blueprint, Response
from rq import Queue, Worker
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from web.resources import get_redis, get_registry
from web.workspace import WORKSPACE_PREFIX, require_admin_token, require_view_of_every_workspace
from workers import eventlog, rule_files, workspaces
from workers.metrics import COUNTERS, STEP_MS_BUCKETS, parse_field
from workers.poller.status import poll_status

if TYPE_CHECKING:
    from prometheus_client.core import HistogramMetricFamily

# prometheus_client is imported in the functions that write a scrape, not here: no idle request
# needs it, and imported with the app it cost each web process ~0.8 MB of RSS (issue 22).

bp = Blueprint("metrics", __name__)
log = logging.getLogger(__name__)

PREFIX = "inloox_automation_"
# name in Redis → (Prometheus name, help, label names)
COUNTER_METRICS = {
    "events": ("events", "Events received, by source, kind and outcome (accepted, duplicate, rejected)",
               ("source", "kind", "outcome")),
    "rule_matches": ("rule_matches", "Rules matched by an event", ("rule",)),
    "runs": ("runs", "Runs reaching a status", ("status",)),
    "steps": ("steps", "Steps finished, by verb and status (done, skipped, error)", ("verb", "status")),
    "inloox_requests": ("inloox_requests", "Requests to InLoox by status class (error: no answer)",
                        ("method", "status_class")),
    "retries": ("retries", "Runs retried (automatic: backoff after a transient error; unavailable: InLoox "
                "could not be reached, no attempt counted; manual: a person)",
                ("kind",)),
    "loops_stopped": ("loops_stopped", "Runs refused by the loop guards", ("reason",)),
    "runs_restarted": ("runs_restarted", "Runs queued again after their executor was lost (executor_lost) or "
                       "Redis failed under their attempt (redis_failed)", ("why",)),
    "held_changes": ("held_changes", "Changes held back by flood protection", ("entity_set",)),
    "events_failed": ("events_failed", "Handlings of an event that failed (its trace says why), by error type",
                      ("error",)),
    "polls": ("polls", "Polls of an entity set", ("entity_set",)),
    "poll_failures": ("poll_failures", "Polls of an entity set that failed (*: every poll of the workspace, before "
                      "any set's); the Poller page says why", ("entity_set",)),
    "deliveries": ("deliveries", "Change-feed deliveries finished, by status (delivered, failed)", ("status",)),
    "runs_started": ("runs_started", "Runs started (stored for a matched rule): the usage's runs", ()),
    "billable_runs": ("billable_runs", "Runs that performed at least one InLoox write or notification, by rule",
                      ("rule",)),
    "subscriptions_disabled": ("subscriptions_disabled", "Subscriptions disabled after days of failed deliveries", ()),
    "schedule_failures": ("schedule_failures", "Turns of the schedules loop that failed for the workspace (a bug, a rule "
                          "nobody foresaw, a key Redis refuses): its ticks wait", ()),
}


@bp.get("/metrics")
def metrics():
    """Every metric of every workspace in Prometheus' text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # here: see the note above bp

    require_view_of_every_workspace()
    served = list(get_registry().workspaces().values())
    return Response(generate_latest(RedisCollector(get_redis(), served)), content_type=CONTENT_TYPE_LATEST)


@bp.get(WORKSPACE_PREFIX + "/metrics")
def workspace_metrics():
    """The metrics of one workspace (its admin token)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # here: see the note above bp

    require_admin_token()
    collector = RedisCollector(get_redis(), [workspaces.current()])
    return Response(generate_latest(collector), content_type=CONTENT_TYPE_LATEST)


class RedisCollector:
    """A prometheus_client collector over the counters and queues of some workspaces in one Redis database."""

    def __init__(self, connection: redis.Redis, served: list[workspaces.Workspace]):
        self.connection = connection
        self.served = served

    def collect(self):
        names = {w.name for w in self.served}
        counters = [(name, labels, int(v)) for f, v in self.connection.hgetall(COUNTERS).items()
                    for name, labels in [parse_field(f)] if labels.get("workspace") in names]
        yield from _counter_families(counters)
        yield _step_histogram(counters)
        yield from self._poll_gauges()
        yield from self._queue_gauges()
        yield from self._rule_file_gauges()

    def _poll_gauges(self):
        from prometheus_client.core import GaugeMetricFamily  # here: see the note above bp

        labels = ["workspace", "entity_set"]
        lag = GaugeMetricFamily(PREFIX + "poll_lag_seconds", "How stale our view of InLoox is: now minus the "
                                "start of the last complete poll (or scan), per watched entity set", labels=labels)
        held = GaugeMetricFamily(PREFIX + "held_floods", "Changes waiting in a held flood, per entity set",
                                 labels=labels)
        cost = GaugeMetricFamily(PREFIX + "scan_requests", "InLoox requests one scan of the set costs at its "
                                 "current row count (sets without a change feed)", labels=labels)
        every = GaugeMetricFamily(PREFIX + "scan_interval_seconds", "Seconds between two scans of the set",
                                  labels=labels)
        for workspace in self.served:
            with workspaces.using(workspace):
                status = _read(workspace, "poll status", poll_status, self.connection, now=datetime.now(timezone.utc))
                for entry in status or ():
                    series = [workspace.name, entry["entity_set"]]
                    if entry["lag_seconds"] is not None:
                        lag.add_metric(series, entry["lag_seconds"])
                    held.add_metric(series, entry["held"])
                    if entry["requests_per_scan"] is not None and entry["watched"]:
                        cost.add_metric(series, entry["requests_per_scan"])
                        every.add_metric(series, entry["every"])
        return lag, held, cost, every

    def _queue_gauges(self):
        from prometheus_client.core import GaugeMetricFamily  # here: see the note above bp

        depth = GaugeMetricFamily(PREFIX + "queue_jobs", "RQ jobs by state", labels=["queue", "state"])
        for workspace in self.served:
            for state, count in (_read(workspace, "RQ queue", _queue_counts, self.connection, workspace.queue) or ()):
                depth.add_metric([workspace.queue, state], count)
        waiting = GaugeMetricFamily(PREFIX + "events_waiting", "Accepted events not handled yet (event log)",
                                    labels=["workspace"])
        for workspace in self.served:
            backlog = _read(workspace, "event log", eventlog.backlog, self.connection, workspace=workspace.name)
            if backlog is not None:
                waiting.add_metric([workspace.name], backlog)
        workers = GaugeMetricFamily(PREFIX + "workers", "RQ workers registered")
        workers.add_metric([], len(Worker.all(connection=self.connection)))
        return depth, waiting, workers


    def _rule_file_gauges(self):
        """Broken rule files (workers/rule_files.py): running their last good version, or nothing of them."""
        from prometheus_client.core import GaugeMetricFamily  # here: see the note above bp

        broken = GaugeMetricFamily(PREFIX + "rule_file_broken", "A rule file that does not load (1)",
                                   labels=["workspace", "file", "running"])
        since = GaugeMetricFamily(PREFIX + "rule_file_broken_since_seconds",
                                  "When the rule file broke (Unix time)", labels=["workspace", "file"])
        for workspace in self.served:
            for entry in _read(workspace, "rule file states", rule_files.broken_files, self.connection,
                               workspace.prefix) or ():
                broken.add_metric([workspace.name, entry["file"], rule_files.running(entry)], 1)
                since.add_metric([workspace.name, entry["file"]], entry["since"])
        return broken, since


def _read(owner, what: str, read, /, *args, **kwargs):
    """`read(*args)` for one workspace's (`owner`'s) series, or None when a key of that workspace cannot be read (Redis refuses
    it, WRONGTYPE; or it is no JSON): its series are left out, said in the log, not the scrape of every workspace (a
    500). Redis away still fails the scrape."""
    try:
        return read(*args, **kwargs)
    except (redis.ResponseError, ValueError) as exc:
        log.warning("metrics: the %s of workspace %s cannot be read: %s", what, owner.name, exc)
        return None


def _queue_counts(connection, name: str) -> list[tuple[str, int]]:
    queue = Queue(name, connection=connection, serializer="json")
    return [("queued", queue.count), *((state, registry(queue=queue).count) for state, registry in (
        ("started", StartedJobRegistry), ("scheduled", ScheduledJobRegistry), ("failed", FailedJobRegistry)))]


def _counter_families(counters: list[tuple[str, dict, int]]):
    from prometheus_client.core import CounterMetricFamily  # here: see the note above bp

    sums = defaultdict(int)  # summed by the labels shown, so no series appears twice
    for name, labels, value in counters:
        if name in COUNTER_METRICS:
            sums[name, tuple(labels.get(n, "") for n in ("workspace", *COUNTER_METRICS[name][2]))] += value
    families = {name: CounterMetricFamily(PREFIX + prom, text, labels=["workspace", *labels])
                for name, (prom, text, labels) in COUNTER_METRICS.items()}
    for (name, values), value in sorted(sums.items()):
        families[name].add_metric(list(values), value)
    return families.values()


def _step_histogram(counters: list[tuple[str, dict, int]]) -> HistogramMetricFamily:
    """Step latency in seconds; Redis keeps per-bucket counts in ms, Prometheus wants them cumulative."""
    from prometheus_client.core import HistogramMetricFamily  # here: see the note above bp

    per_bucket = defaultdict(int)
    sum_ms = 0
    for name, labels, value in counters:
        if name == "step_ms_bucket":
            per_bucket[labels["le"]] += value
        elif name == "step_ms_sum":
            sum_ms += value  # the histogram adds up the workspaces shown
    buckets, total = [], 0
    for bound in (*STEP_MS_BUCKETS, "+Inf"):
        total += per_bucket.get(str(bound), 0)
        buckets.append((str(bound / 1000) if bound != "+Inf" else "+Inf", total))
    return HistogramMetricFamily(PREFIX + "step_duration_seconds", "Duration of finished steps",
                                 buckets=buckets, sum_value=sum_ms / 1000)
