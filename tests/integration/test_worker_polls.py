"""A worker that also polls (WORKER_POLLS=1, as the Procfile runs it): one process fewer, the same promises.

The poller's loop and the schedules' run on threads of the worker; a poll round that fails on a bug
is logged and the next one runs; /readyz says when a worker's poller is in trouble.
"""
from __future__ import annotations

import signal
import textwrap
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis

from app import create_app
from tests.support.processes import wait_until
from tests.support.stack import BOOKING_RULE, PREFIX, TICK_RULE, WATCH_RULE, make_task, runs_in, write_rule
from workers import scheduler


@pytest.fixture
def polling(engine):
    engine.env.update(WORKER_POLLS="1", POLL_INTERVAL="0.5")
    return engine


def test_a_worker_that_polls_books_a_done_task_without_a_poller_process(polling, sandbox, rules_dir, redis_url):
    write_rule(rules_dir, "booking", BOOKING_RULE)
    task = make_task(sandbox, "Write report")
    worker = polling.worker()
    connection = redis.Redis.from_url(redis_url)
    wait_until(lambda: connection.exists(f"{PREFIX}poll:Task:cursor"), 20, "the worker's first poll (its baseline)")

    assert sandbox.patch(f"Task({task})", json={"IsDone": True}).ok

    [entry] = wait_until(lambda: sandbox.get("TimeEntry").json()["value"], 15, "the time entry")
    assert entry["TaskItemId"] == task
    wait_until(lambda: runs_in(redis_url, "succeeded"), 10, "the run")
    assert '"logger": "poller"' in worker.output()
    assert [p.name for p in polling.processes] == ["worker"]


def test_a_worker_that_polls_fires_schedules(polling, receiver, rules_dir, redis_url):
    write_rule(rules_dir, "tick", TICK_RULE)
    # The last look half a minute before this minute's tick (test_schedules' way): due at once.
    last = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(seconds=30)
    redis.Redis.from_url(redis_url).zadd(f"{PREFIX}{scheduler.LAST_KEY}", {"tick": last.timestamp()})
    worker = polling.worker()

    [message] = wait_until(lambda: receiver.received, 20, "the tick's notification")
    assert "tick " in str(message["body"])
    assert "fired schedule:tick:" in worker.output()


def test_a_stopping_worker_hands_its_workspaces_over_at_once(polling, redis_url):
    worker = polling.worker()
    connection = redis.Redis.from_url(redis_url)
    wait_until(lambda: connection.exists(f"{PREFIX}poll:lease"), 20, "the worker to hold the poll lease")

    worker.signal(signal.SIGTERM)
    worker.popen.wait(timeout=15)

    assert worker.popen.returncode == 0, worker.output()[-3000:]
    # Released, not left to expire: another poller takes the workspace within a round, not POLL_LEASE_SECONDS.
    assert not connection.exists(f"{PREFIX}poll:lease")
    assert "Traceback" not in worker.output()


def test_readyz_names_a_worker_whose_poll_rounds_fail_and_the_poller_goes_on(polling, redis_url, sandbox):
    polling.env["ENGINE_FAILPOINTS"] = "poll_round~"  # every round raises, as a bug in it would
    worker = polling.worker("failing-poller")
    app = create_app({"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url, "INLOOX_API_KEY": polling.env["INLOOX_API_KEY"]})
    client = app.test_client()

    response = wait_until(lambda: (r := client.get("/readyz")).status_code == 503
                          and "poller" in r.json["checks"]["worker"].get("error", "") and r,
                          30, "/readyz to notice the failing poller")

    check = response.json["checks"]["worker"]
    assert check["ok"] is False and "(poller failing)" in check["error"]
    # Each round fails on its own and the next one runs: the loop was not ended by the first.
    wait_until(lambda: worker.output().count("poll round failed") >= 3, 10, "three failed rounds, one after the other")
    assert worker.popen.poll() is None


def test_readyz_names_a_worker_whose_poll_round_hangs(polling, redis_url, sandbox):
    # Before, a poll loop blocked for good (a lock, a socket without a time-out) left its thread alive, and /readyz
    # said the worker ready while nothing was polled.
    polling.env.update(ENGINE_FAILPOINTS="hold:poll_round", POLL_LEASE_SECONDS="3")  # each round held, never released
    worker = polling.worker("stuck-poller")
    wait_until(lambda: "failpoint poll_round: held" in worker.output(), 15, "the first round to hang")
    client = create_app({"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                         "INLOOX_API_KEY": polling.env["INLOOX_API_KEY"]}).test_client()

    response = wait_until(lambda: (r := client.get("/readyz")).status_code == 503
                          and "poller" in r.json["checks"]["worker"].get("error", "") and r,
                          12, "/readyz to notice the stalled poller")

    assert "(poller stalled)" in response.json["checks"]["worker"]["error"]
    assert worker.popen.poll() is None


def test_a_poller_process_survives_a_failing_round(engine):
    # Before, one exception in a round ended `python -m workers.poller` (and with it, under honcho, the stack).
    engine.env.update(POLL_INTERVAL="0.5", ENGINE_FAILPOINTS="poll_round~")
    poller = engine.poller()

    wait_until(lambda: poller.output().count("poll round failed") >= 3, 20, "three failed rounds, one after the other")
    assert poller.popen.poll() is None, poller.output()[-3000:]


def test_a_shard_worker_polls_only_its_own_workspaces(stack, sandbox, tmp_path, redis_url):
    # WORKER_WORKSPACES=a: the worker handles a's events only, so it polls and schedules a only.
    entries = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "watch.yaml").write_text(textwrap.dedent(WATCH_RULE))
        entries.append(f"""
          {name}:
            inloox_url: {sandbox.base_url}
            inloox_api_key: {sandbox.token}
            rules: {tmp_path / name}""")
    (tmp_path / "workspaces.yaml").write_text("workspaces:" + "".join(entries) + "\n")
    stack.env.update(WORKSPACES_FILE=str(tmp_path / "workspaces.yaml"), WORKER_POLLS="1", POLL_INTERVAL="0.5",
                     WORKER_WORKSPACES="a")
    stack.worker()
    connection = redis.Redis.from_url(redis_url)

    wait_until(lambda: connection.exists("ws:a:poll:Task:cursor"), 20, "a's first poll")
    time.sleep(2.0)  # four more rounds: b would have had its first poll by now
    assert not connection.exists("ws:b:poll:Task:cursor")
    assert not connection.exists("ws:b:poll:lease")
