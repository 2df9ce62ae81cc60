"""The pipeline's promises, end to end with real processes (issue 4's acceptance list).

A person (Ann, with a token of her own) edits tasks in the sandbox; the engine polls with its
own token, plans, and writes back through rq workers. Everything is observed from outside: the
sandbox's data and request log, the receiver, the runs in Redis, the processes' output.
"""
from __future__ import annotations

import signal
import time
from datetime import datetime

import redis

from tests.support.hostile import Spoiler
from tests.support.processes import wait_until
from tests.support.stack import (BOOKING_RULE, ENGINE_TOKEN, MISSION_RULE, PREFIX, all_runs, make_task, runs_in,
                                 start, write_rule)
from workers import workspaces
from workers.runs import load_trace

# Writes the very field it triggers on: without the guards this would run forever.
SHOUT_RULE = """
id: shout-task-names
description: Append an exclamation mark whenever a task is renamed.
{chained}
when:
  - inloox: Task
    on: updated
    changes:
      changed: [Name]
then:
  - inloox.update: Task
    values:
      Name: "{{{{ task.Name }}}}!"
"""



def test_a_task_marked_done_yields_one_time_entry_and_one_notification(engine, sandbox, receiver, rules_dir,
                                                                      redis_url):
    write_rule(rules_dir, "mission", MISSION_RULE)
    task = make_task(sandbox, "Write report", work=1.5)
    start(engine, redis_url)

    assert sandbox.patch(f"Task({task})", json={"IsDone": True}).ok

    [entry] = wait_until(lambda: sandbox.get("TimeEntry").json()["value"], 10, "the time entry")
    [message] = wait_until(lambda: receiver.received, 10, "the notification")
    assert entry["TaskItemId"] == task and entry["DisplayName"] == "Write report"
    start_at, end_at = (datetime.fromisoformat(entry[f].replace("Z", "+00:00")) for f in ("StartDateTime", "EndDateTime"))
    assert (end_at - start_at).total_seconds() == 1.5 * 3600 and entry["DurationMinutes"] == 90
    assert "Done: Write report" in str(message["body"])
    assert f"time entry {entry['TimeEntryId']}" in str(message["body"])
    wait_until(lambda: runs_in(redis_url, "succeeded"), 10, "the run to be recorded as succeeded")

    # Later polls see the same change again, and the engine's own write: nothing more happens.
    sandbox.clear_requests()
    wait_until(lambda: len([r for r in sandbox.requests() if r["path"] == "DynamicTaskItem"]) >= 3, 15, "3 polls")
    assert sandbox.count("TimeEntry") == 1 and len(receiver.received) == 1
    assert [r["status"] for r in all_runs(redis_url)] == ["succeeded"]


def test_a_worker_killed_while_its_create_is_in_flight_leaves_exactly_one_entity(engine, sandbox, rules_dir,
                                                                                 redis_url):
    write_rule(rules_dir, "booking", BOOKING_RULE)
    task = make_task(sandbox)
    start(engine, redis_url)
    # InLoox applies the create at once but answers only after 8 s; the worker dies in between.
    sandbox.fault(kind="latency", latency_ms=8000, methods=["POST"], path="^TimeEntry$", count=1)

    sandbox.patch(f"Task({task})", json={"IsDone": True})
    wait_until(lambda: [r for r in sandbox.requests() if r["method"] == "POST" and r["path"] == "TimeEntry"],
               15, "the create to be in flight")
    engine.processes[0].signal(signal.SIGKILL)
    engine.worker("worker-2")

    [run] = wait_until(lambda: runs_in(redis_url, "succeeded"), 90, "another worker to finish the run")
    assert sandbox.count("TimeEntry") == 1
    assert run["outputs"]["book"]["TaskItemId"] == task


def test_a_create_inloox_still_held_when_its_answer_was_lost_is_not_sent_twice(engine, sandbox, rules_dir, redis_url):
    # Our client gives up after 2 s, and the retry's look for the create's marker, 5 s later, finds nothing yet.
    _a_held_create_is_booked_once(engine, sandbox, rules_dir, redis_url, INLOOX_TIMEOUT="2")


def test_a_create_a_router_answered_503_while_inloox_still_held_it_is_not_sent_twice(engine, sandbox, rules_dir,
                                                                                    redis_url):
    # A router in front of InLoox answers 503 once InLoox takes more than 3 s, and InLoox goes on with the request.
    # The retry's look for the create's marker, soon after, finds nothing yet.
    spoiler = Spoiler(sandbox.base_url)
    try:
        spoiler.gives_up("TimeEntry", after=3)
        _a_held_create_is_booked_once(engine, sandbox, rules_dir, redis_url, INLOOX_URL=spoiler.url)
    finally:
        spoiler.stop()


def _a_held_create_is_booked_once(engine, sandbox, rules_dir, redis_url, **env) -> None:
    """InLoox holds the booking rule's create 9 s before it applies it (a queue in front of a busy server); with
    `env` the engine loses its answer. The run ends with the one time entry, once the held one has landed."""
    write_rule(rules_dir, "booking", BOOKING_RULE)
    task = make_task(sandbox)
    engine.env.update(INLOOX_SETTLE_SECONDS="15", **env)
    start(engine, redis_url)
    sandbox.fault(kind="latency", latency_ms=9000, methods=["POST"], path="^TimeEntry$", count=1)

    sandbox.patch(f"Task({task})", json={"IsDone": True})
    wait_until(lambda: [r for r in sandbox.requests() if r["method"] == "POST" and r["path"] == "TimeEntry"],
               15, "the create to be sent")
    sent = time.monotonic()
    [run] = wait_until(lambda: runs_in(redis_url, "succeeded"), 60, "the run to finish")
    time.sleep(max(0.0, 11 - (time.monotonic() - sent)))  # the held create has been applied by now

    assert sandbox.count("TimeEntry") == 1
    assert run["outputs"]["book"]["TaskItemId"] == task


def test_a_rule_writing_its_own_trigger_field_runs_once(engine, sandbox, rules_dir, redis_url):
    write_rule(rules_dir, "shout", SHOUT_RULE.format(chained=""))
    task = make_task(sandbox, "Plan")
    start(engine, redis_url)

    sandbox.patch(f"Task({task})", json={"Name": "Plan it"})

    [trace] = wait_until(lambda: chained_traces(redis_url), 15, "the engine's own rename to be handled")
    assert "allow_chained" in trace["rules"][0]["reason"]
    assert sandbox.get(f"Task({task})").json()["Name"] == "Plan it!"
    assert [r["status"] for r in all_runs(redis_url)] == ["succeeded"]


def test_with_allow_chained_the_hop_limit_stops_the_chain(engine, sandbox, rules_dir, redis_url):
    write_rule(rules_dir, "shout", SHOUT_RULE.format(chained="allow_chained: true"))
    task = make_task(sandbox, "Plan")
    start(engine, redis_url)

    sandbox.patch(f"Task({task})", json={"Name": "Plan it"})

    [stopped] = wait_until(lambda: runs_in(redis_url, "skipped"), 30, "the chain to be stopped")
    assert "3 hops" in stopped["reason"]
    assert sandbox.get(f"Task({task})").json()["Name"] == "Plan it!!!"
    assert [r["status"] for r in all_runs(redis_url)] == ["succeeded"] * 3 + ["skipped"]


def test_the_token_appears_nowhere_after_a_full_run(engine, sandbox, receiver, rules_dir, redis_url):
    write_rule(rules_dir, "mission", MISSION_RULE)
    task = make_task(sandbox)
    start(engine, redis_url)
    web = engine.web()
    sandbox.patch(f"Task({task})", json={"IsDone": True})
    [run] = wait_until(lambda: runs_in(redis_url, "succeeded"), 15, "the run")
    import requests

    assert requests.get(f"{web}/runs/{run['id']}", timeout=5).status_code == 200
    assert requests.get(f"{web}/readyz", timeout=5).status_code == 200

    assert ENGINE_TOKEN not in _everything_in(redis.Redis.from_url(redis_url))
    assert ENGINE_TOKEN not in engine.logs() and ENGINE_TOKEN not in str(receiver.received)
    assert ENGINE_TOKEN not in requests.get(f"{web}/runs/{run['id']}", timeout=5).text


def test_restarting_the_poller_mid_stream_loses_no_change_and_fires_none_twice(engine, sandbox, rules_dir,
                                                                              redis_url):
    write_rule(rules_dir, "booking", BOOKING_RULE)
    tasks = [make_task(sandbox, f"Task {n}", work=0.5) for n in range(10)]
    start(engine, redis_url)
    poller = engine.processes[-1]

    for task in tasks[:5]:
        sandbox.patch(f"Task({task})", json={"IsDone": True})
    poller.signal(signal.SIGKILL)
    for task in tasks[5:]:
        sandbox.patch(f"Task({task})", json={"IsDone": True})
    engine.poller("poller-2")

    wait_until(lambda: len(runs_in(redis_url, "succeeded")) == 10, 30, "ten runs")
    entries = sandbox.get("TimeEntry").json()["value"]
    assert sorted(e["TaskItemId"] for e in entries) == sorted(tasks)


def chained_traces(redis_url: str) -> list[dict]:
    """Traces of events caused by the engine's own writes."""
    connection = redis.Redis.from_url(redis_url)
    with workspaces.using(workspaces.Workspace("default", "http://unused/", "unused")):
        traces = [load_trace(connection, i.decode()) for i in connection.zrange(f"{PREFIX}traces", 0, -1)]
    return [t for t in traces if t["event"]["chained"]]


def _everything_in(connection: redis.Redis) -> str:
    """Every key and value in Redis as text (strings, hashes, lists, sets, sorted sets)."""
    parts = []
    for key in connection.scan_iter(count=1000):
        kind = connection.type(key).decode()
        value = {"string": lambda: connection.get(key), "hash": lambda: connection.hgetall(key),
                 "list": lambda: connection.lrange(key, 0, -1), "set": lambda: connection.smembers(key),
                 "zset": lambda: connection.zrange(key, 0, -1)}.get(kind, lambda: b"")()
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)
