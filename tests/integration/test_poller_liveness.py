"""Poller processes of their own (`python -m workers.poller --with-scheduler`, WORKER_POLLS=0): their loops
kept running, and how they are told to /readyz (the workers' pollers say it in the workers' beat:
tests/integration/test_worker_polls.py)."""
from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

from app import create_app
from tests.support.processes import Process, wait_until
from tests.support.stack import PREFIX, TICK_RULE, WATCH_RULE, write_rule
from tests.support.valkey import Valkey
from workers import metrics, scheduler
from workers.poller import beats as poller_beats
from workers.poller import leases


@pytest.fixture
def pollers(engine):
    """The stack with quick rounds, whose pollers the tests start (`start_poller`)."""
    engine.env.update(POLL_INTERVAL="0.5", SCHEDULE_INTERVAL="0.5")
    return engine


def start_poller(stack, name="poller") -> Process:
    """`python -m workers.poller --with-scheduler`, as the Procfile of a deployment with poller processes runs it."""
    process = Process.python("-m", "workers.poller", "--with-scheduler", name=name, env=stack.env)
    stack.processes.append(process)  # stopped with the stack
    return process


def pollers_check(stack, sandbox) -> dict:
    """/readyz's `pollers` check, asked of an app on the stack's Redis."""
    app = create_app({"REDIS_URL": stack.env["REDIS_URL"], "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": stack.env["INLOOX_API_KEY"]})
    return app.test_client().get("/readyz").json["checks"]["pollers"]


def test_a_poller_process_starts_its_dead_scheduler_again_and_the_ticks_fire(pollers, rules_dir, redis_url):
    # Before, the process went on polling with no schedules loop, and said nothing.
    pollers.env["ENGINE_FAILPOINTS"] = "scheduler_loop~start 1."  # its first run ends, as a bug escaping it would
    write_rule(rules_dir, "tick", TICK_RULE)
    # The last look half a minute before this minute's tick (test_schedules' way): due at once.
    last = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(seconds=30)
    redis.Redis.from_url(redis_url).zadd(f"{PREFIX}{scheduler.LAST_KEY}", {"tick": last.timestamp()})
    poller = start_poller(pollers)

    wait_until(lambda: "fired schedule:tick:" in poller.output(), 20, "the restarted scheduler to fire the tick")
    assert "the scheduler loop had stopped; starting it again" in poller.output()
    assert poller.alive()
    if len(os.sched_getaffinity(0)) > 1:  # on the core it started on, its threads with it (workers/cores.py)
        assert {len(os.sched_getaffinity(int(t.name))) for t in Path(f"/proc/{poller.popen.pid}/task").iterdir()} == {1}


def test_readyz_names_a_poller_process_whose_scheduler_keeps_stopping(pollers, sandbox):
    pollers.env["ENGINE_FAILPOINTS"] = "scheduler_loop~start"  # every run of the loop ends at once
    poller = start_poller(pollers)

    check = wait_until(lambda: (c := pollers_check(pollers, sandbox))["ok"] is False and c, 20,
                       "/readyz to name the poller whose scheduler stopped")

    assert "(scheduler stopped)" in check["error"]
    assert f"pid {poller.popen.pid}" in check["error"]  # which process: an operator finds it by its pid and host
    wait_until(lambda: poller.output().count("starting it again") >= 3, 10, "the loop started again, each time it ended")
    assert poller.alive()


def test_readyz_names_a_poller_process_whose_rounds_fail(pollers, sandbox):
    pollers.env["ENGINE_FAILPOINTS"] = "poll_round~"  # every round raises, as a bug in it would
    poller = start_poller(pollers)

    check = wait_until(lambda: (c := pollers_check(pollers, sandbox))["ok"] is False and c, 20,
                       "/readyz to name the failing poller")

    assert "(poller failing)" in check["error"] and f"pid {poller.popen.pid}" in check["error"]
    assert poller.alive()


def test_readyz_says_a_poller_process_went_away_but_not_one_that_stopped(pollers, sandbox):
    stopped, killed = start_poller(pollers, "stopped"), start_poller(pollers, "killed")
    wait_until(lambda: pollers_check(pollers, sandbox) == {"ok": True, "pollers": 2}, 20, "both pollers' beats")

    stopped.signal(signal.SIGTERM)
    stopped.popen.wait(timeout=40)
    assert stopped.popen.returncode == 0, stopped.output()[-3000:]
    assert pollers_check(pollers, sandbox) == {"ok": True, "pollers": 1}  # a poller that stops says so: not missed
    killed.signal(signal.SIGKILL)

    check = wait_until(lambda: (c := pollers_check(pollers, sandbox))["ok"] is False and c,
                       poller_beats.GONE_AFTER + 10, "/readyz to say the killed poller went away")
    assert f"pid {killed.popen.pid}" in check["error"] and "gone: no beat for" in check["error"]
    assert f"pid {stopped.popen.pid}" not in check["error"]


def test_a_stack_whose_workers_poll_misses_no_poller_process(pollers, sandbox):
    pollers.env["WORKER_POLLS"] = "1"
    pollers.worker()
    app = create_app({"REDIS_URL": pollers.env["REDIS_URL"], "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": pollers.env["INLOOX_API_KEY"]})

    response = wait_until(lambda: (r := app.test_client().get("/readyz")).status_code == 200 and r, 20,
                          "/readyz ready with the worker that polls")

    assert response.json["checks"]["pollers"] == {"ok": True, "pollers": 0}


@pytest.fixture
def own_valkey(tmp_path, pollers):
    """This test's own Valkey, which it kills and starts again; the stack uses it."""
    server = Valkey(tmp_path / "redis").start()
    pollers.env["REDIS_URL"] = server.url
    yield server
    pollers.end()  # the processes go before their Redis does
    if server.alive():
        server.stop()


def test_a_poller_process_beats_again_after_a_redis_outage(pollers, own_valkey, sandbox):
    poller = start_poller(pollers)
    wait_until(lambda: pollers_check(pollers, sandbox) == {"ok": True, "pollers": 1}, 20, "the poller's first beat")

    own_valkey.kill()
    outage_end = time.monotonic() + 3 * poller_beats.BEAT_SECONDS  # the outage's length (not a wait for a condition)
    while time.monotonic() < outage_end:
        time.sleep(0.2)
    own_valkey.start()
    restarted = time.time()

    connection = own_valkey.client()
    wait_until(lambda: any(b.at > restarted for b in poller_beats.read(connection)), 3 * poller_beats.BEAT_SECONDS,
               "a beat written after the outage")
    assert pollers_check(pollers, sandbox) == {"ok": True, "pollers": 1}
    assert poller.alive(), poller.output()[-3000:]


def test_a_workspace_whose_schedules_fail_holds_up_no_other_workspace(pollers, sandbox, tmp_path, redis_url):
    # Before, the bug met in `broken` ended the schedules loop at every start: `fine`, after it, never fired.
    _workspaces(pollers, sandbox, tmp_path, ("broken", "fine"), "tick", TICK_RULE)
    pollers.env.update(ENGINE_FAILPOINTS="schedule_workspace~broken")
    last = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(seconds=30)
    for name in ("broken", "fine"):
        redis.Redis.from_url(redis_url).zadd(f"ws:{name}:{scheduler.LAST_KEY}", {"tick": last.timestamp()})
    poller = start_poller(pollers)

    wait_until(lambda: "fine: fired schedule:tick:" in poller.output(), 20, "fine's tick")
    wait_until(lambda: poller.output().count("broken: could not fire schedules") >= 2, 20, "broken's rounds failing")
    failed = time.time()
    connection = redis.Redis.from_url(redis_url)
    wait_until(lambda: all(b.at > failed for b in poller_beats.read(connection)), 20, "a beat since")
    # One customer's failing schedules take no deployment out of its load balancer: the loop fires the others'.
    assert pollers_check(pollers, sandbox) == {"ok": True, "pollers": 1}
    assert "broken: fired" not in poller.output()
    # What names it to the operator's alerts: a counter of its failed turns, none of the other's.
    failures = wait_until(lambda: {metrics.parse_field(f)[1]["workspace"] for f in connection.hkeys(metrics.COUNTERS)
                                   if metrics.parse_field(f)[0] == "schedule_failures"}, 10, "the failures counted")
    assert failures == {"broken"}


def test_readyz_names_a_scheduler_process_whose_rounds_fail_and_it_goes_on(pollers, sandbox, rules_dir):
    # `python -m workers.scheduler` used to say nothing to /readyz: its rounds could fail on every workspace for good.
    pollers.env["ENGINE_FAILPOINTS"] = "schedule_workspace~"  # every workspace's round raises, as a bug would
    write_rule(rules_dir, "tick", TICK_RULE)
    process = pollers.scheduler()

    check = wait_until(lambda: (c := pollers_check(pollers, sandbox))["ok"] is False and c, 20,
                       "/readyz to name the failing scheduler process")

    assert check["error"].startswith("not polling: scheduler ")
    assert f"pid {process.popen.pid}) (scheduler failing)" in check["error"]
    assert process.alive()
    process.signal(signal.SIGTERM)
    process.popen.wait(timeout=20)
    assert process.popen.returncode == 0, process.output()[-3000:]
    assert pollers_check(pollers, sandbox) == {"ok": True, "pollers": 0}  # stopped, so not missed


def test_readyz_names_a_scheduler_process_whose_round_hangs(pollers, sandbox, rules_dir):
    # Before, a schedules loop blocked for good kept its thread alive, and its beat said "polling" while no tick fired.
    pollers.env["ENGINE_FAILPOINTS"] = "hold:schedule_workspace"  # the workspace's turn held, never released
    write_rule(rules_dir, "tick", TICK_RULE)
    process = pollers.scheduler()
    wait_until(lambda: "failpoint schedule_workspace: held" in process.output(), 15, "the first round to hang")

    check = wait_until(lambda: (c := pollers_check(pollers, sandbox))["ok"] is False and c, 12,
                       "/readyz to name the stalled scheduler process")

    assert f"pid {process.popen.pid}) (scheduler stalled)" in check["error"]
    assert process.alive()
    process.signal(signal.SIGKILL)  # its stop would wait out STOP_SECONDS for the loop that never ends


def test_readyz_names_a_poller_process_whose_rounds_redis_refuses(pollers, sandbox, redis_url):
    # Before, every Redis error was taken for an outage (/readyz's Redis check says those): Redis answered WRONGTYPE at
    # every round, nothing was polled, and the poller's beat said "polling".
    poller = start_poller(pollers)
    wait_until(lambda: pollers_check(pollers, sandbox) == {"ok": True, "pollers": 1}, 20, "the poller's first beat")
    # The pollers' roll call replaced by a value of another type.
    redis.Redis.from_url(redis_url).set(leases.POLLERS_KEY, "not a sorted set")

    check = wait_until(lambda: (c := pollers_check(pollers, sandbox))["ok"] is False and c, 12,
                       "/readyz to name the poller whose rounds fail")

    assert f"pid {poller.popen.pid}) (poller failing)" in check["error"]


def test_readyz_names_a_scheduler_process_whose_workspace_redis_refuses(pollers, sandbox, rules_dir, redis_url):
    write_rule(rules_dir, "tick", TICK_RULE)
    redis.Redis.from_url(redis_url).set(f"{PREFIX}{scheduler.LAST_KEY}", "not a sorted set")  # WRONGTYPE at each look
    process = pollers.scheduler()

    check = wait_until(lambda: (c := pollers_check(pollers, sandbox))["ok"] is False and c, 15,
                       "/readyz to name the scheduler whose workspace's rounds fail")

    assert f"pid {process.popen.pid}) (scheduler failing)" in check["error"]
    assert "could not fire schedules, will retry: WRONGTYPE" in process.output()


def _workspaces(pollers, sandbox, tmp_path, names: tuple[str, ...], rule_id: str, rule: str) -> None:
    """Workspaces `names`, each on the sandbox with `rule` in a rules folder of its own, for the pollers."""
    entries = []
    for name in names:
        (tmp_path / name).mkdir()
        write_rule(tmp_path / name, rule_id, rule)
        entries.append(f"""
          {name}:
            inloox_url: {sandbox.base_url}
            inloox_api_key: {pollers.env["INLOOX_API_KEY"]}
            rules: {tmp_path / name}""")
    (tmp_path / "workspaces.yaml").write_text("workspaces:" + "".join(entries) + "\n")
    pollers.env.update(WORKSPACES_FILE=str(tmp_path / "workspaces.yaml"))


def _watching_workspaces(pollers, sandbox, tmp_path, names: tuple[str, ...]) -> None:
    """Workspaces `names`, each on the sandbox with a rule that makes the poller watch Task, for the pollers."""
    _workspaces(pollers, sandbox, tmp_path, names, "watch", WATCH_RULE)
    pollers.env.update(POLL_LEASE_SECONDS="1.5")


def _break_lease(connection: redis.Redis) -> None:
    connection.delete("ws:broken:poll:lease")  # the lease the poller holds, replaced by a value of another type
    connection.hset("ws:broken:poll:lease", "not", "a lock")


def _break_activity(connection: redis.Redis) -> None:
    connection.set("ws:broken:active", "not a time")


@pytest.mark.parametrize("breakage, said", [
    (_break_lease, "broken: its poll lease ws:broken:poll:lease cannot be read"),
    (_break_activity, ""),  # the workspace counts as without activity: polled at its quiet pace
], ids=["lease-of-wrong-type", "garbage-activity"])
def test_one_workspaces_broken_poll_keys_hold_up_no_other_workspaces_polls(pollers, sandbox, tmp_path, redis_url,
                                                                           breakage, said):
    # Before, the poller's round renewed every lease in one script, which Redis refused whole for the one lease of the
    # wrong type; and it read every workspace's activity stamp as a number: one that was not failed every round, and
    # no workspace was polled again, while /readyz said "poller failing" for one workspace's key.
    _watching_workspaces(pollers, sandbox, tmp_path, ("broken", "fine"))
    poller = start_poller(pollers)
    connection = redis.Redis.from_url(redis_url)
    wait_until(lambda: connection.exists("ws:broken:poll:Task:cursor", "ws:fine:poll:Task:cursor") == 2, 30,
               "both workspaces' baselines")

    breakage(connection)
    polled = connection.llen("ws:fine:poll:recent")

    wait_until(lambda: connection.llen("ws:fine:poll:recent") >= polled + 5, 20, "the fine workspace polled on")
    assert said in poller.output()
    assert pollers_check(pollers, sandbox) == {"ok": True, "pollers": 1}
