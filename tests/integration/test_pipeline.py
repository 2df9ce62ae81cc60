"""End to end with real processes: sandbox → poller → Valkey → rq worker → sandbox and a receiver."""
from __future__ import annotations

import json
import signal
import textwrap
from datetime import datetime

import pytest
import redis

from tests.support.processes import Process, wait_until

MISSION_RULE = """
id: log-time-when-task-done
description: When a task is marked done, book its planned effort and tell the team.
trigger:
  inloox: Task
  on: [updated]
  changes:
    IsDone: {from: false, to: true}
if:
  - task.WorkAmount: {gt: 0}
do:
  - id: book
    log_time_entry:
      project: "{{ task.ProjectId }}"
      task: "{{ task.TaskItemId }}"
      start: "{{ now - hours(task.WorkAmount) }}"
      hours: "{{ task.WorkAmount }}"
      name: "{{ task.Name }}"
  - notify:
      url: "{{ env.TEAM_CHANNEL_URL }}"
      text: "Done: {{ task.Name }} (time entry {{ steps.book.TimeEntryId }})"
"""
PROJECT = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


class Stack:
    """Worker and poller processes wired to the test's Redis, sandbox and rules folder."""

    def __init__(self, env: dict):
        self.env = env
        self.processes: list[Process] = []

    def worker(self, name="worker") -> Process:
        process = Process.python(
            "-m", "rq.cli", "worker", "--worker-class", "workers.worker.Worker", "--serializer", "json",
            "--with-scheduler", "--maintenance-interval", "5", "--url", self.env["REDIS_URL"], "default",
            name=name, env=self.env)
        self.processes.append(process)
        return process

    def poller(self, name="poller") -> Process:
        process = Process.python("-m", "workers.poller", name=name, env=self.env)
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in self.processes)

    def stop(self):
        for process in self.processes:
            process.stop()


@pytest.fixture
def rules_dir(tmp_path):
    path = tmp_path / "rules"
    path.mkdir()
    return path


@pytest.fixture
def stack(redis_url, sandbox, receiver, rules_dir):
    env = {"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url, "INLOOX_API_KEY": sandbox.token,
           "RULES_PATH": str(rules_dir), "TEAM_CHANNEL_URL": receiver.json_url,
           "OUTBOUND_ALLOW": "127.0.0.1", "POLL_INTERVAL": "1"}
    stack = Stack(env)
    yield stack
    stack.stop()
    print(stack.logs())  # shown by pytest only when the test failed


def make_task(sandbox, name="Write report", work=1.5) -> str:
    if sandbox.count("Project", f"ProjectId eq {PROJECT}") == 0:
        assert sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"}).status_code == 201
    response = sandbox.post("Task", json={"Name": name, "ProjectId": PROJECT, "WorkAmount": work})
    assert response.status_code == 201, response.text
    return response.json()["TaskItemId"]


def runs(redis_url) -> list[dict]:
    connection = redis.Redis.from_url(redis_url)
    return [json.loads(connection.get(f"run:{i.decode()}")) for i in connection.zrange("runs", 0, -1)]


def baseline_taken(redis_url, entity_set="Task") -> bool:
    return redis.Redis.from_url(redis_url).exists(f"poll:{entity_set}:cursor") == 1


WEBHOOK_RULE = """
id: form-to-task
description: Each form submission becomes a task in the project it names.
trigger:
  webhook: forms
do:
  - create:
      entity: Task
      values:
        Name: "{{ webhook.body.title }}"
        ProjectId: "{{ webhook.body.project }}"
        WorkAmount: 1
"""
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def web(stack, rules_dir):
    """The web app under gunicorn, accepting webhooks from source `forms`."""
    from tests.support.processes import free_port

    port = free_port()
    process = Process.python("-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "app:create_app()",
                             name="web", env={**stack.env, "WEBHOOK_SECRET_FORMS": SECRET})
    stack.processes.append(process)
    process.wait_for_port(port)
    return f"http://127.0.0.1:{port}"


def deliver(web: str, body: dict, msg_id: str):
    import time as _time
    from datetime import timezone

    import requests
    from standardwebhooks.webhooks import Webhook

    raw = json.dumps(body)
    stamp = int(_time.time())
    signature = Webhook(SECRET).sign(msg_id, datetime.fromtimestamp(stamp, timezone.utc), raw)
    return requests.post(f"{web}/hooks/forms", data=raw, timeout=5, headers={
        "content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(stamp),
        "webhook-signature": signature})


def test_a_webhook_delivered_five_times_creates_one_task(stack, web, sandbox, rules_dir, redis_url):
    (rules_dir / "forms.yaml").write_text(textwrap.dedent(WEBHOOK_RULE))
    sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"})
    stack.worker()

    statuses = [deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_5x").status_code for _ in range(5)]

    assert statuses == [202, 200, 200, 200, 200]
    wait_until(lambda: [r for r in runs(redis_url) if r["status"] == "succeeded"], 15, "the run")
    assert [t["Name"] for t in sandbox.get("Task").json()["value"]] == ["Call Ann"]
    assert len(runs(redis_url)) == 1


@pytest.mark.parametrize("fault, posts", [
    ({"kind": "status", "status": 429, "retry_after": 1, "count": 2}, 3),
    ({"kind": "status", "status": 503, "count": 3}, 4),
    # The create lands but its answer never comes: the retry finds it by its marker, posts nothing.
    ({"kind": "commit_then_hang", "hang_s": 6, "count": 1}, 1),
], ids=["429 with Retry-After", "503 burst", "commit then hang"])
def test_each_intended_write_lands_exactly_once_through_faults(stack, web, sandbox, rules_dir, redis_url,
                                                               fault, posts):
    (rules_dir / "forms.yaml").write_text(textwrap.dedent(WEBHOOK_RULE))
    sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"})
    stack.env["INLOOX_TIMEOUT"] = "2"  # so that a hung answer is given up on quickly
    stack.worker()
    sandbox.fault(methods=["POST"], path="^Task$", **fault)

    assert deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_fault").status_code == 202

    [run] = wait_until(lambda: [r for r in runs(redis_url) if r["status"] == "succeeded"], 40,
                       f"the run to succeed despite the fault\n{stack.logs()}")
    assert [t["Name"] for t in sandbox.get("Task").json()["value"]] == ["Call Ann"]
    sent = [r for r in sandbox.requests() if r["method"] == "POST" and r["path"] == "Task"]
    assert len(sent) == posts
    assert run["attempts"] >= 1, "the fault should have cost at least one retry"
    assert run["outputs"]["step0"]["Name"] == "Call Ann"
