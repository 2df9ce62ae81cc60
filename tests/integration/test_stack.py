"""`make run` brings up the whole stack: embedded Valkey, sandbox with demo data, web, worker, poller."""
from __future__ import annotations

import shutil
import signal

import pytest
import redis
import requests
from rq import Worker

from tests.support.processes import Process, free_port, wait_until


@pytest.fixture
def stack(tmp_path):
    """`make run` with free ports and a private Redis data folder, stopped (SIGTERM) afterwards."""
    ports = {"PORT": free_port(), "SANDBOX_PORT": free_port(), "REDIS_PORT": free_port()}
    env = {name: str(port) for name, port in ports.items()}
    env.update(SANDBOX_TOKEN="stack-token", REDIS_DIR=str(tmp_path / "redis"))
    # Unset, as on a fresh machine: the Makefile must choose the embedded Redis and the sandbox.
    env.update(REDIS_URL=None, INLOOX_URL=None, INLOOX_API_KEY=None, EMBEDDED_REDIS=None)
    process = Process([shutil.which("make") or "make", "run"], name="make-run", env=env)
    yield process, ports, tmp_path
    process.stop(timeout=20)


def test_make_run_serves_web_sandbox_worker_and_embedded_redis(stack):
    process, ports, tmp_path = stack
    web = f"http://127.0.0.1:{ports['PORT']}"
    process.wait_for_port(ports["PORT"], timeout=60)

    assert requests.get(f"{web}/healthz", timeout=5).json() == {"status": "ok"}
    ready = wait_until(lambda: _ready(web), timeout=30, message="/readyz to report ready")
    assert ready["checks"]["redis"]["ok"] and ready["checks"]["inloox"]["ok"]

    sandbox = f"http://127.0.0.1:{ports['SANDBOX_PORT']}/api/odata/"
    tasks = requests.get(f"{sandbox}Task/$count", headers={"x-api-key": "stack-token"}, timeout=5)
    assert int(tasks.text) >= 20, "the sandbox should start with the demo account's tasks"

    connection = redis.Redis(port=ports["REDIS_PORT"])
    workers = wait_until(lambda: Worker.all(connection=connection), timeout=30, message="an rq worker to register")
    assert workers[0].queue_names() == ["default"]
    wait_until(lambda: "(baseline)" in process.output(), timeout=20, message="the poller's first poll")

    # The demo flow of the README: Alex marks a task done, the example rule books its time.
    alex = {"x-api-key": "stack-token"}
    [task] = requests.get(f"{sandbox}Task", params={"$filter": "IsDone eq false and WorkAmount gt 0", "$top": 1},
                          headers=alex, timeout=5).json()["value"]
    assert requests.patch(f"{sandbox}Task({task['TaskItemId']})", json={"IsDone": True}, headers=alex, timeout=5).ok
    booked = f"{sandbox}TimeEntry/$count?$filter=TaskItemId eq {task['TaskItemId']}"
    wait_until(lambda: requests.get(booked, headers=alex, timeout=5).text == "1", 20, "the time entry")
    inbox = wait_until(lambda: requests.get(f"{web}/dev/inbox", timeout=5).json()["messages"], 20, "the message")
    assert task["Name"] in str(inbox[0])

    process.signal(signal.SIGTERM)
    process.popen.wait(timeout=30)
    assert (tmp_path / "redis" / "appendonlydir").is_dir(), "embedded Redis must persist with AOF"


def _ready(web: str):
    response = requests.get(f"{web}/readyz", timeout=5)
    return response.json() if response.status_code == 200 else None
