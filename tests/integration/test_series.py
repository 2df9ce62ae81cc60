"""The dashboard's per-minute series in a real Valkey: counted with the metrics, sampled by one worker, kept a day."""
from __future__ import annotations

import time

import redis

from workers import gauges, metrics, series
from workers.enqueue import queue_run

PREFIX = "ws:default:"


def test_finished_runs_and_failures_are_counted_per_minute_in_hashes_that_expire(redis_url, workspace):
    connection = redis.Redis.from_url(redis_url)
    metrics.count(connection, "runs", status="queued")  # not finished: not a point of the chart
    metrics.count(connection, "runs", status="succeeded")
    with connection.pipeline() as pipe:  # as a run's last write counts it
        metrics.count(pipe, "runs", status="failed")
        pipe.execute()

    found = series.history(connection, PREFIX, ["runs", "failures"], now_minute=int(time.time() // 60) + 1)
    assert sum(found["runs"].values()) == 2 and sum(found["failures"].values()) == 1
    [key] = connection.keys(f"{PREFIX}series:failures:*")
    assert series.KEEP_SECONDS - 60 < connection.ttl(key) <= series.KEEP_SECONDS  # history trims itself


def test_one_worker_of_many_samples_queue_depth_and_poll_lag(redis_url, workspace):
    connection = redis.Redis.from_url(redis_url)
    connection.set(f"{PREFIX}poll:Task:cursor", "2025-01-01T00:00:00Z")
    connection.hset(f"{PREFIX}poll:Task:last", mapping={"started": "2025-01-01T00:00:00+00:00"})
    queue_run(connection, {"id": "run_waiting", "plan": {}})
    now = time.time()

    assert gauges.sample(connection, workspace, now=now, every=60)
    assert not gauges.sample(connection, workspace, now=now + 1, every=60)  # another worker, same minute

    minute = int(now // 60)
    found = series.history(connection, PREFIX, ["backlog", "queued", "poll_lag:Task"], now_minute=minute)
    assert found["backlog"] == {minute: 0.0} and found["queued"] == {minute: 1.0}
    assert found["poll_lag:Task"][minute] > 3600  # the poller has not finished a poll since 2025-01-01


def test_poll_lag_is_sampled_for_the_sets_the_rules_watch_now(redis_url, workspace):
    connection = redis.Redis.from_url(redis_url)
    connection.set(f"{PREFIX}poll:watched", '["Task"]')
    for name in ("Task", "Contact"):  # Contact was watched once; its last poll stays behind
        connection.set(f"{PREFIX}poll:{name}:cursor", "2025-01-01T00:00:00Z")
        connection.hset(f"{PREFIX}poll:{name}:last", mapping={"started": "2025-01-01T00:00:00+00:00"})
    now = time.time()

    assert gauges.sample(connection, workspace, now=now, every=60)

    minute = int(now // 60)
    found = series.history(connection, PREFIX, ["poll_lag:Task", "poll_lag:Contact"], now_minute=minute)
    assert found["poll_lag:Task"][minute] > 3600 and found["poll_lag:Contact"] == {}
