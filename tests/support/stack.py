"""The pipeline's processes for integration tests: rq workers, pollers and the web app, plus readers."""
from __future__ import annotations

import json
import textwrap
import time
from datetime import datetime, timezone

import redis
import requests
from standardwebhooks.webhooks import Webhook

from workers.runs import decode_run
from tests.support.processes import Process, free_port, wait_until

PROJECT = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
# The engine's own token in the sandbox: a user of its own, and a sentinel no log or store may show.
ENGINE_TOKEN = "ilx_SENTINEL7fQ2mZ9xK4pL8vR3nT6wY1bC5dSENTINEL"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PREFIX = "ws:default:"  # the Redis keys of the default workspace


class Stack:
    """Worker, poller and web processes wired to the test's Redis, sandbox and rules folder."""

    def __init__(self, env: dict):
        self.env = env
        self.processes: list[Process] = []
        self.workers: list[Process] = []

    def worker(self, name="worker", queues: tuple[str, ...] = ("default",)) -> Process:
        """An `rq worker` process on the workspaces' queues, taken in turn, as the Procfile runs it."""
        worker = self._start(Process.python(
            "-m", "rq.cli", "worker", "--worker-class", "workers.worker.Worker", "--serializer", "json",
            "--with-scheduler", "--dequeue-strategy", "round_robin", "--url", self.env["REDIS_URL"], *queues,
            name=name, env=self.env))
        self.workers.append(worker)
        return worker

    def poller(self, name="poller") -> Process:
        return self._start(Process.python("-m", "workers.poller", name=name, env=self.env))

    def scheduler(self, name="scheduler") -> Process:
        """A `python -m workers.scheduler` process, looking for due ticks every half second."""
        return self._start(Process.python("-m", "workers.scheduler", name=name,
                                          env={"SCHEDULE_INTERVAL": "0.5", **self.env}))

    def web(self, threads: int = 1) -> str:
        """The app under waitress as the Procfile serves it, accepting webhooks from source `forms`; its base URL.

        `threads` requests are handled at once; waitress reads each whole request before a thread sees it.
        """
        port = free_port()
        process = self._start(Process.python(
            "-m", "web.server", "--port", str(port), "--threads", str(threads),
            name="web", env={**self.env, "WEBHOOK_SECRET_FORMS": WEBHOOK_SECRET}))
        process.wait_for_port(port)
        return f"http://127.0.0.1:{port}"

    def _start(self, process: Process) -> Process:
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in self.processes)

    def stop(self):
        for process in self.processes:
            process.stop()

    def end(self):
        """Stop everything once the test is over: the workers killed, the others stopped.

        A worker's own stop waits for RQ's wait for work to come round (up to 2 s, then its
        scheduler and consumer): seconds of every test's teardown, for an orderly exit nobody
        looks at then. Tests of stopping stop their processes themselves.
        """
        for process in self.processes:
            process.stop(timeout=0 if process in self.workers else 10.0)


def deliver(web: str, body: dict, msg_id: str, *, path: str = "/hooks/forms",
            secret: str = WEBHOOK_SECRET) -> requests.Response:
    """POST a Standard-Webhooks-signed delivery (by default to the default workspace's `forms` source)."""
    raw = json.dumps(body)
    stamp = int(time.time())
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, timezone.utc), raw)
    return requests.post(f"{web}{path}", data=raw, timeout=5, headers={
        "content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(stamp),
        "webhook-signature": signature})


def all_runs(redis_url: str) -> list[dict]:
    """Every stored run, oldest first."""
    connection = redis.Redis.from_url(redis_url)
    return [decode_run(connection.get(f"{PREFIX}run:{i.decode()}")) for i in connection.zrange(f"{PREFIX}runs", 0, -1)]


def runs_in(redis_url: str, status: str) -> list[dict]:
    return [r for r in all_runs(redis_url) if r["status"] == status]


def ensure_project(sandbox) -> str:
    if sandbox.count("Project", f"ProjectId eq {PROJECT}") == 0:
        assert sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"}).status_code == 201
    return PROJECT


def make_task(sandbox, name="Write report", work=1.5) -> str:
    response = sandbox.post("Task", json={"Name": name, "ProjectId": ensure_project(sandbox), "WorkAmount": work})
    assert response.status_code == 201, response.text
    return response.json()["TaskItemId"]


# Issue 4's own example, verbatim (test_acceptance).
MISSION_RULE = """
id: log-time-when-task-done
description: When a task is marked done, book its planned effort and tell the team.
when:
  - inloox: Task            # any entity set; created | updated | deleted
    on: updated
    changes:
      IsDone: {from: false, to: true}
if:
  all:
    - {path: task.WorkAmount, op: gt, value: 0}
    - {path: task.ProjectId, op: exists}
then:
  - id: book
    inloox.create: TimeEntry
    values:
      ProjectId: "{{ task.ProjectId }}"
      TaskItemId: "{{ task.TaskItemId }}"
      DisplayName: "{{ task.Name }}"
      StartDateTime: "{{ (now - hours(task.WorkAmount)) | isoformat }}"
      EndDateTime: "{{ now | isoformat }}"
  - notify: "{{ env.TEAM_CHANNEL_URL }}"
    title: "Done: {{ task.Name }}"
    body: "Booked {{ task.WorkAmount }} h (time entry {{ steps.book.TimeEntryId }})."
"""

# The same rule without its notification, where the test is about the booking alone.
BOOKING_RULE = MISSION_RULE.split("  - notify:")[0]

# A webhook rule most pipeline tests share: each delivery to `forms` creates one task.
FORM_RULE = """
id: form-to-task
description: Each form submission becomes a task in the project it names.
{extra}
when:
  - webhook: forms
then:
  - id: task
    inloox.create: Task
    values:
      Name: "{{{{ webhook.body.title }}}}"
      ProjectId: "{{{{ webhook.body.project }}}}"
      WorkAmount: 1
"""


def failed_form_run(stack: Stack, sandbox, redis_url: str, msg_id: str, title: str = "Call Ann") -> tuple[str, dict]:
    """Start a worker and the web, and deliver a form whose task InLoox refuses once (400: a 500 would be retried).

    Returns the web's URL and the failed run. The `forms` rule must be in the rules folder.
    """
    ensure_project(sandbox)
    stack.worker()
    web = stack.web()
    sandbox.fault(kind="status", status=400, methods=["POST"], path="^Task$", count=1)
    deliver(web, {"title": title, "project": PROJECT}, msg_id)
    [failed] = wait_until(lambda: runs_in(redis_url, "failed"), 40, "the run to fail")
    return web, failed


# A shadow rule on InLoox's tasks: it makes the poller watch them (so their poll lag is charted) and writes nothing.
WATCH_RULE = """
id: watch-tasks
description: Shadow only; makes the poller watch tasks.
mode: shadow
when:
  - inloox: Task
    on: updated
then:
  - inloox.update: Task
    values:
      Name: "{{ task.Name }}"
"""


# A schedule every minute that notifies the team channel: the tests of poller processes and polling workers.
TICK_RULE = """
id: tick
when:
  - schedule: "* * * * *"
    catch_up: latest
then:
  - notify: "{{ env.TEAM_CHANNEL_URL }}"
    title: Tick
    body: "tick {{ schedule.time }}"
"""


def write_form_rule(rules_dir, extra: str = "") -> None:
    """The `forms` webhook rule, with extra top-level lines (e.g. `mode: shadow`)."""
    write_rule(rules_dir, "forms", FORM_RULE.format(extra=extra))


def write_rule(rules_dir, name: str, text: str) -> None:
    """Put a rule file into the stack's rules folder (the worker notices within seconds)."""
    (rules_dir / f"{name}.yaml").write_text(textwrap.dedent(text))


def start(engine: Stack, redis_url: str, workers: int = 1) -> None:
    """Start workers and a poller, and wait for the poller's silent first poll (its baseline)."""
    for n in range(workers):
        engine.worker(f"worker-{n + 1}")
    engine.poller()
    connection = redis.Redis.from_url(redis_url)
    wait_until(lambda: connection.exists(f"{PREFIX}poll:Task:cursor"), 20, "the poller's baseline")
