"""What a worker costs Redis for workspaces where nothing happens (issue 21): a hosted service's usual case.

The worker's per-workspace housekeeping (the consumer's claims, sweeps and waiting runs; RQ's
registry cleaning; RQ's scheduler) used to run for every workspace every few seconds: about two
commands per workspace per second beside the scheduler's four. A quiet workspace is now looked
after every 30 s (the consumer) and every 10 min (RQ's registries), so the idle worker's load is
mostly what it pays once for all of them.
"""
from __future__ import annotations

import os
import time

import pytest
import redis

from tests.support.processes import wait_until
from workers import activity, registry
from workers.secrets import Keyring

QUIET_WORKSPACES = 40
MEASURED_SECONDS = 10
MOST_COMMANDS_PER_WORKSPACE_PER_SECOND = 1.0  # the worker alone; the bench's target is 5 for the whole stack


def _commands(connection: redis.Redis) -> int:
    return sum(int(stats["calls"]) for stats in connection.info("commandstats").values())


@pytest.mark.timeout(90)
def test_an_idle_worker_costs_redis_under_a_command_per_quiet_workspace_per_second(stack, sandbox, redis_url):
    connection = redis.Redis.from_url(redis_url)
    keyring = Keyring.from_config(os.environ)
    names = [f"quiet-{n:02d}" for n in range(QUIET_WORKSPACES)]
    for name in names:
        registry.put(connection, keyring, name, {"inloox_url": sandbox.base_url, "inloox_api_key": sandbox.token})
    connection.delete(*(activity.key(name) for name in names))  # made long ago: nothing has happened since
    worker = stack.worker()
    wait_until(lambda: worker.output().count("quiet-") >= QUIET_WORKSPACES, 20, "the worker to serve every workspace")
    time.sleep(MEASURED_SECONDS)  # past the first turns, which look at every workspace once

    before, started = _commands(connection), time.monotonic()
    time.sleep(MEASURED_SECONDS)
    sent = _commands(connection) - before - 1  # the INFO of the first reading
    per_workspace = sent / QUIET_WORKSPACES / (time.monotonic() - started)

    print(f"{per_workspace:.2f} commands per quiet workspace per second")
    assert per_workspace <= MOST_COMMANDS_PER_WORKSPACE_PER_SECOND, (
        f"{per_workspace:.2f} commands per quiet workspace per second ({sent} in {MEASURED_SECONDS}s)")


@pytest.mark.timeout(90)
def test_a_subscription_saved_in_a_quiet_workspace_has_its_set_polled_within_seconds(stack, sandbox, redis_url):
    """The poller looks at a quiet workspace's rules and subscriptions once a minute; saving a
    subscription stamps the workspace, and the poller looks at once."""
    from workers import subscriptions, workspaces

    connection = redis.Redis.from_url(redis_url)
    keyring = Keyring.from_config(os.environ)
    registry.put(connection, keyring, "quiet", {"inloox_url": sandbox.base_url, "inloox_api_key": sandbox.token})
    connection.delete(activity.key("quiet"))  # made long ago: nothing has happened since
    stack.env["POLL_INTERVAL"] = "0.5"
    poller = stack.poller()
    wait_until(lambda: "quiet" in poller.output(), 20, "the poller to serve the workspace")
    time.sleep(3)  # its first look at what it watches (nothing) is done

    with workspaces.using(workspaces.Workspace("quiet", sandbox.base_url, sandbox.token)):
        subscriptions.create(connection, {"url": "https://example.com/hook", "events": ["Task.updated"]},
                             keyring=keyring)
    started = time.monotonic()
    wait_until(lambda: connection.exists("ws:quiet:poll:Task:cursor"), 8, "the subscribed set's first poll")
    print(f"polled {time.monotonic() - started:.1f}s after the subscription was saved")
