"""RQ's scheduling with the due index (workers/rq_schedule.py): due jobs move in seconds, whoever holds
the one scheduler lock, and an idle worker's scheduling costs the same for 1 queue or 50."""
from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
import redis
from rq import Queue
from rq.job import Job

from tests.support.processes import wait_until
from tests.support.stack import PROJECT, all_runs, deliver, ensure_project, runs_in, write_form_rule
from workers import registry, rq_schedule
from workers.secrets import Keyring

IDLE_WORKSPACES = 50
MEASURED_SECONDS = 5
# RQ's per-queue scheduler spent 4 commands per queue per second here (1,000 in the window);
# the due index costs a handful per second for the whole deployment, whatever the number of queues.
MOST_SCHEDULER_COMMANDS_PER_SECOND = 10
SCHEDULER_KEYS = ("rq:scheduled:", "rq:scheduler", "rq:due")


def _scheduler_holder(connection: redis.Redis) -> int | None:
    """The pid of the worker whose scheduler holds the deployment's scheduler lock, if one does."""
    name = connection.get("rq:scheduler-lock")
    pid = name and connection.hget(f"rq:scheduler:{name.decode()}", "pid")
    return int(pid) if pid else None


def _scheduler_commands(redis_url: str, seconds: float) -> list[str]:
    """Every command the server ran on a scheduling key (lock, registries, index) for `seconds` (MONITOR)."""
    seen = []
    monitor_connection = redis.Redis.from_url(redis_url, socket_timeout=1)
    deadline = time.monotonic() + seconds
    with monitor_connection.monitor() as monitor:
        while time.monotonic() < deadline:
            try:
                command = monitor.next_command()["command"]
            except redis.TimeoutError:
                continue
            if any(key in command for key in SCHEDULER_KEYS):
                seen.append(command)
    return seen


@pytest.mark.timeout(60)
def test_an_idle_workers_scheduling_costs_the_same_for_50_queues(stack, sandbox, redis_url):
    connection = redis.Redis.from_url(redis_url)
    keyring = Keyring.from_config(os.environ)
    for n in range(IDLE_WORKSPACES):
        registry.put(connection, keyring, f"idle-{n:02d}", {"inloox_url": sandbox.base_url,
                                                          "inloox_api_key": sandbox.token})
    worker = stack.worker()
    wait_until(lambda: connection.keys("rq:scheduler:*"), 20, "the worker's scheduler to start")
    wait_until(lambda: worker.output().count("idle-") >= IDLE_WORKSPACES, 20, "the worker to serve every workspace")
    time.sleep(2)  # past the scheduler's first turn, which looks at every registry once

    commands = _scheduler_commands(redis_url, MEASURED_SECONDS)

    assert len(commands) <= MOST_SCHEDULER_COMMANDS_PER_SECOND * MEASURED_SECONDS, (
        f"{len(commands)} scheduling commands in {MEASURED_SECONDS}s for {IDLE_WORKSPACES} idle queues, e.g. "
        f"{commands[:8]}")


@pytest.mark.timeout(60)
def test_a_retry_in_a_shard_the_lock_holder_does_not_serve_runs_in_seconds(stack, sandbox, rules_dir, redis_url):
    connection = redis.Redis.from_url(redis_url)
    write_form_rule(rules_dir)
    ensure_project(sandbox)
    stack.env["WORKER_WORKSPACES"] = "elsewhere"  # serves no workspace of this test; holds the lock
    holder = stack.worker("holder")
    wait_until(lambda: _scheduler_holder(connection) == holder.popen.pid, 20, "the holder to take the lock")
    stack.env["WORKER_WORKSPACES"] = "default"
    stack.worker("shard")
    web = stack.web()
    sandbox.fault(kind="status", status=429, retry_after=1, count=1, methods=["POST"], path="^Task$")

    assert deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_shard").status_code == 202

    # The retry is an RQ job scheduled a second or so ahead on `default`'s queue; only the holder moves it.
    [run] = wait_until(lambda: runs_in(redis_url, "succeeded"), 15, "the retried run to succeed")
    assert run["attempts"] >= 1 and [t["Name"] for t in sandbox.get("Task").json()["value"]] == ["Call Ann"]
    assert _scheduler_holder(connection) == holder.popen.pid
    assert connection.zcard("rq:due") == 0  # nothing left scheduled, so nothing left in the index
    assert len(all_runs(redis_url)) == 1


@pytest.mark.timeout(60)
def test_a_job_scheduled_without_the_index_is_still_moved(stack, redis_url):
    connection = redis.Redis.from_url(redis_url)
    # As an older process (or RQ's own Queue) schedules: the registry only, no entry in rq:due.
    job = Queue("default", connection=connection, serializer="json").enqueue_in(
        timedelta(seconds=1), "time.sleep", 0, job_id="default-older-job")
    assert connection.zcard("rq:due") == 0

    stack.worker()

    wait_until(lambda: Job.fetch(job.id, connection=connection, serializer="json").get_status() == "finished", 20,
               "the job scheduled without the index to run (the scheduler's look at every registry)")


def _break_registry_listed_due(connection: redis.Redis) -> None:
    connection.set("rq:scheduled:broken", "not a sorted set")
    connection.zadd(rq_schedule.DUE, {"broken": 0})  # due before any other queue


def _break_registry_listed_in_queues(connection: redis.Redis) -> None:
    connection.set("rq:scheduled:broken", "not a sorted set")
    connection.sadd(Queue.redis_queues_keys, "rq:queue:broken")  # met by the first turn's look at every registry


def _break_due_member(connection: redis.Redis) -> None:
    connection.zadd(rq_schedule.DUE, {b"\xff\xfe broken": 0})  # no queue's name: not even text


@pytest.mark.timeout(60)
@pytest.mark.parametrize("breakage", [_break_registry_listed_due, _break_registry_listed_in_queues, _break_due_member],
                         ids=["registry-of-wrong-type-due", "registry-of-wrong-type-in-rq-queues",
                              "undecodable-due-member"])
def test_one_queues_broken_scheduling_keys_hold_up_no_other_queues_jobs(client, stack, redis_url, breakage):
    # Before, Redis refusing one workspace's registry (WRONGTYPE), or a member of the due index that is no text,
    # ended the scheduler's thread at each start: no retry or hold of any workspace moved, and /readyz said
    # "RQ scheduler failing" for what one workspace's key held.
    connection = redis.Redis.from_url(redis_url)
    breakage(connection)
    worker = stack.worker()
    job = rq_schedule.IndexedQueue("default", connection=connection, serializer="json").enqueue_in(
        timedelta(seconds=1), "time.sleep", 0, job_id="default-beside-broken")

    wait_until(lambda: Job.fetch(job.id, connection=connection, serializer="json").get_status() == "finished", 20,
               "the default workspace's scheduled job to run")
    wait_until(lambda: "broken" in worker.output(), 10, "the broken queue's trouble said, by name")
    response = wait_until(lambda: _ready(client), 15, "/readyz ready: the scheduler runs")
    assert response.json["checks"]["worker"] == {"ok": True, "workers": 1}


def _ready(client):
    response = client.get("/readyz")
    return response if response.status_code == 200 else None


def test_a_turn_that_moves_many_queues_due_jobs_is_not_taken_for_a_stalled_scheduler(redis_url, monkeypatch):
    # A turn moves every due queue's jobs (up to a thousand each): with thousands of workspaces due at once after an
    # outage, a turn outlasted STALL_SECONDS and /readyz said "RQ scheduler stalled" of a scheduler busy moving them.
    connection = redis.Redis.from_url(redis_url)
    moved: list[str] = []

    class Slow(rq_schedule.ThreadScheduler):
        def _move_due_jobs(self, queue_name: str) -> None:
            time.sleep(0.1)  # each queue's move takes a while; the turn, 3 s
            moved.append(queue_name)
            super()._move_due_jobs(queue_name)

    monkeypatch.setattr(rq_schedule, "STALL_SECONDS", 1.0)
    connection.zadd(rq_schedule.DUE, {f"ws-{n}": 1 for n in range(30)})
    scheduler = Slow(queues=[], connection=connection, serializer="json")
    scheduler._next_sweep = time.monotonic() + 3600  # the index alone: the queues listed due
    scheduler.acquire_locks(auto_start=True)
    try:
        seen = []
        while len(moved) < 30:
            seen.append(scheduler.trouble())
            time.sleep(0.05)
        assert len(seen) > 40 and set(seen) == {None}
    finally:
        scheduler.request_stop()
        scheduler._process.join(5)
        scheduler.release_locks()
