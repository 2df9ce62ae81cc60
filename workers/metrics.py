"""Counters shared by the web, worker and poller processes, kept in one Redis hash.

Each process adds to `metrics:counters` (HINCRBY), usually on the pipeline of the write the count
belongs to, so counting costs no extra round trip; `web/metrics.py` turns the hash into Prometheus
metrics at `/metrics`. Fields are JSON `[name, {label: value}]`; every counter carries the
`workspace` it was counted for, so each workspace's figures can be shown to it alone:

    events        {source, kind, outcome}   accepted | duplicate | rejected
    rule_matches  {rule}
    runs          {status}            each time a run reaches a status
    steps         {verb, status}      done | skipped | error
    inloox_requests {method, status_class}            2xx … 5xx, or "error" when no answer came
    retries       {kind}              automatic | unavailable (InLoox unreachable, no attempt used) | manual
    runs_restarted {why}              executor_lost (the sweeper) | redis_failed (workers/recovery.py)
    loops_stopped {reason}            the guards' refusals: paused | hops | frequency
    held_changes  {entity_set}        changes held back by flood protection
    events_failed {error}             handlings of an event that failed (workers/consumer/): its trace says why
    polls         {entity_set}
    poll_failures {entity_set}        polls that failed (* for all of a workspace's); workers/poller/status.py says why

A few of these are also kept per minute for the dashboard's charts (workers/series.py), and some
add to the workspace's usage per day and month (workers/metering): both are gathered in memory here
and written with the same batch.
"""
from __future__ import annotations

import functools
import json
import threading
import time
from collections import Counter

from redis.client import Pipeline

from workers import series, workspaces
from workers.metering import usage

COUNTERS = "metrics:counters"
STEP_MS_BUCKETS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000)

_pending: Counter = Counter()  # counts of this process not yet written (InLoox requests; all when batching)
_pending_series: Counter = Counter()  # (workspace, series) → counted since the last write
_pending_usage: Counter = Counter()  # (workspace, usage field) → counted since the last write
_batch_seconds = 0.0
_last_flush = 0.0
_pending_lock = threading.Lock()
_seen = threading.local()  # InLoox requests made by each thread, ever (the poller reports them per poll)


def field(name: str, labels: dict) -> str:
    """The hash field of one counter: JSON of [name, labels] with sorted keys."""
    return _field(name, tuple(sorted((k, str(v)) for k, v in labels.items())))


@functools.lru_cache(maxsize=4096)
def _field(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    # Cached: a run counts four or five times, nearly always the same few fields, and the JSON of
    # each was 2 % of a worker's CPU under load. Label values are rule ids, statuses and methods.
    return json.dumps([name, dict(labels)], sort_keys=True)


def parse_field(raw: str | bytes) -> tuple[str, dict]:
    """(name, labels) of a hash field written by `field`."""
    name, labels = json.loads(raw)
    return name, labels


def forget(connection, **labels) -> int:
    """Delete every counter whose labels include all of `labels` (what they counted is gone); how many went.

    One HSCAN of the shared hash: for what is rare (a webhook source removed), not for a request's path.
    """
    wanted = {k: str(v) for k, v in labels.items()}
    fields = [f for f, _ in connection.hscan_iter(COUNTERS, count=1000)
              if wanted.items() <= parse_field(f)[1].items()]
    return connection.hdel(COUNTERS, *fields) if fields else 0


def batch(seconds: float) -> None:
    """Keep this process's counts in memory and write them at most every `seconds` (0: with each write).

    The worker batches (a second): its many runs at once would otherwise add several HINCRBYs to
    every round trip; the figures at /metrics are then up to a second behind.
    """
    global _batch_seconds
    _batch_seconds = seconds


def count(target, name: str, amount: int = 1, **labels) -> None:
    """Add `amount` to a counter; `target` is a Redis connection or a pipeline (batched with its writes).

    Also writes the counts this process gathered since its last write (InLoox requests, the
    per-minute series, and all counts when batching) once they are due.
    """
    workspace = workspaces.current().name
    counter, followed, metered = _counted(name, workspace, **labels)
    with _pending_lock:
        for each in followed:
            _pending_series[workspace, each] += amount
        for each in metered:
            _pending_usage[workspace, each] += amount
        if _batch_seconds:
            _pending[counter] += amount
    if not _batch_seconds:
        target.hincrby(COUNTERS, counter, amount)
        _flush_requests(target)
        return
    flush_due(target)


@functools.lru_cache(maxsize=4096, typed=True)
def _counted(name: str, workspace: str, **labels) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(hash field, series, usage fields) of a count: what `count` adds to.

    Cached whole: a busy worker counts eight times an event, nearly always the same few counters, and working
    these out each time was 9,000 instructions of a count's 22,000 even with `field`'s cache; cached, its
    instructions per event went from 3.82 M to 3.76 M, 1.6 % (bench/worker_cpu.py --instructions). Typed, so
    that a label 1 and a label True stay two counters, as `field` has them."""
    counter = field(name, {"workspace": workspace, **labels})
    return counter, series.counted(name, labels), usage.usage_fields(name, labels)


def flush_due(target) -> None:
    """Queue on `target` the pending counts if the batch is due (always when not batching)."""
    global _last_flush
    now = time.monotonic()
    if now - _last_flush < _batch_seconds:
        return
    _last_flush = now
    if isinstance(target, Pipeline):
        _flush_requests(target)
    else:
        flush(target)


def count_step(target, trace: dict) -> None:
    """Count a finished step by verb and status, and its duration in the latency histogram."""
    count(target, "steps", verb=trace.get("verb"), status=trace.get("status"))
    ms = trace.get("ms")
    if ms is None:
        return
    le = next((b for b in STEP_MS_BUCKETS if ms <= b), "+Inf")
    count(target, "step_ms_bucket", le=le)
    count(target, "step_ms_sum", int(ms))


def request_observer(workspace: str):
    """The `on_response` hook of a workspace's InLoox client: remembers each request until the next write."""
    def note_request(method: str, status: int | None) -> None:
        status_class = f"{status // 100}xx" if status else "error"
        # Per thread: the poller's scans run beside its feed polls, and each reports its own cost.
        _seen.count = getattr(_seen, "count", 0) + 1
        with _pending_lock:
            _pending[field("inloox_requests", {"workspace": workspace, "method": method,
                                               "status_class": status_class})] += 1
            _pending_series[workspace, "requests"] += 1
            _pending_usage[workspace, usage.request_field(method)] += 1
            if status == 429:
                _pending_series[workspace, "throttled"] += 1
    return note_request


def refusal_observer(workspace: str):
    """The `on_refused` hook of a workspace's shared rate limit: a run deferred counts as throttled."""
    def note_refusal() -> None:
        with _pending_lock:
            _pending_series[workspace, "throttled"] += 1
    return note_refusal


def requests_seen() -> int:
    """How many InLoox requests this thread has made (through clients hooked to `note_request`)."""
    return getattr(_seen, "count", 0)


def flush(connection) -> None:
    """Write this process's pending counts now (the poller after each cycle, the worker every second)."""
    with connection.pipeline(transaction=False) as pipe:
        _flush_requests(pipe)
        pipe.execute()


def _flush_requests(target) -> None:
    with _pending_lock:
        pending, per_minute, used = dict(_pending), dict(_pending_series), dict(_pending_usage)
        _pending.clear()
        _pending_series.clear()
        _pending_usage.clear()
    for name, amount in pending.items():
        target.hincrby(COUNTERS, name, amount)
    if used:
        usage.add(target, used, day=usage.today())  # the day they are written in, as the series' minute
    if per_minute:
        # Stamped with the minute they are written in: the worker writes every second, the poller after each poll.
        series.add(target, per_minute, minute=int(time.time() // 60))
