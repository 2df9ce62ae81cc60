"""Issue 20: a workspace created, paused, resumed and deleted while every process runs, none restarted.

The web, a worker and a poller are started first, serving only `default`; then, through the
operator API over HTTP alone: `acme` is created pointing at the sandbox, given a rule bundle and a
webhook source; its signed deliveries become InLoox writes, and a person's change in its InLoox fires
its `inloox:` rule; paused, it keeps accepting and runs nothing; resumed, what waited runs once each;
deleted, nothing of it is left.
"""
from __future__ import annotations

import time

import pytest
import redis
import requests

from tests.support.processes import wait_until
from tests.support.stack import ENGINE_TOKEN, FORM_RULE, PROJECT, deliver, ensure_project, make_task

OPERATOR = "operator-live-7Hk2"
# A person marks a task done in acme's InLoox: the engine books its effort (its own user's write).
DONE_RULE = """
id: book-when-done
description: When a task is marked done, book its planned effort.
when:
  - inloox: Task
    on: updated
    changes:
      IsDone: {from: false, to: true}
then:
  - inloox.create: TimeEntry
    values:
      ProjectId: "{{ task.ProjectId }}"
      TaskItemId: "{{ task.TaskItemId }}"
      DisplayName: "Booked: {{ task.Name }}"
      StartDateTime: "{{ (now - hours(1)) | isoformat }}"
      EndDateTime: "{{ now | isoformat }}"
"""


def _call(method: str, url: str, token: str, body: dict | None = None) -> requests.Response:
    return requests.request(method, url, json=body, timeout=10, headers={"Authorization": f"Bearer {token}"})


def _task_names(sandbox) -> list[str]:
    """The names of the tasks created, in the order InLoox took the creates (its request log)."""
    return [(r.get("body") or {}).get("Name") for r in sandbox.requests()
            if r["method"] == "POST" and r["path"].rstrip("/").endswith("Task") and r["status"] < 300]


@pytest.mark.timeout(150)
def test_a_workspace_lives_its_whole_life_without_a_restart(stack, sandbox, redis_url):
    stack.env["OPERATOR_TOKEN"] = OPERATOR
    sandbox.add_user(ENGINE_TOKEN, "Automation", "Bot")  # acme's token: the engine's own user
    ensure_project(sandbox)
    task = make_task(sandbox, "Ship release")
    web = stack.web(threads=4)
    stack.worker()
    stack.poller()

    created = _call("PUT", f"{web}/workspaces/acme", OPERATOR,
                    {"inloox_url": sandbox.base_url, "inloox_api_key": ENGINE_TOKEN})
    assert created.status_code == 201, created.text
    admin = created.json()["admin_token"]
    bundle = {"files": {"forms.yaml": FORM_RULE.format(extra=""), "done.yaml": DONE_RULE}}
    uploaded = _call("PUT", f"{web}/workspaces/acme/rules", admin, bundle)
    assert uploaded.status_code in (200, 201), uploaded.text
    added = _call("POST", f"{web}/workspaces/acme/webhooks", admin, {"source": "forms"})
    assert added.status_code == 201, added.text
    secret = added.json()["secret"]

    hook = "/workspaces/acme/hooks/forms"
    started = time.monotonic()
    wait_until(lambda: deliver(web, {"title": "Acme 1", "project": PROJECT}, "acme_1", path=hook,
                               secret=secret).status_code == 202, 5, "the new source to be served")
    wait_until(lambda: "Acme 1" in _task_names(sandbox), 15, "the new workspace's first write")
    assert time.monotonic() - started < 20

    # The poller took the new workspace up: a person's change in its InLoox fires its `inloox:` rule.
    # Its first poll is the silent baseline: a change made before it ends is in the baseline, and fires nothing (3 s
    # of sleep here were too few for a machine busy with the whole suite).
    wait_until(lambda: redis.Redis.from_url(redis_url).exists("ws:acme:poll:Task:cursor"), 30, "acme's baseline")
    assert sandbox.patch(f"Task({task})", json={"IsDone": True}).status_code in (200, 204)
    wait_until(lambda: sandbox.count("TimeEntry", f"TaskItemId eq {task}") == 1, 20,
               "the time entry booked by acme's inloox rule")

    # Paused: deliveries are still accepted into its log; nothing runs.
    assert _call("POST", f"{web}/workspaces/acme/pause", OPERATOR).status_code == 200
    time.sleep(3)  # every process follows within a second or two
    for n in (2, 3):
        assert deliver(web, {"title": f"Acme {n}", "project": PROJECT}, f"acme_{n}", path=hook,
                       secret=secret).status_code == 202
    time.sleep(5)
    assert "Acme 2" not in _task_names(sandbox) and "Acme 3" not in _task_names(sandbox)

    # Resumed: what waited runs, once each. The log hands its events out in the order they came; like
    # any burst, they are then handled side by side (writes of one workspace are not serialised).
    assert _call("POST", f"{web}/workspaces/acme/resume", OPERATOR).status_code == 200
    wait_until(lambda: {"Acme 2", "Acme 3"} <= set(_task_names(sandbox)), 15, "the waiting deliveries to run")
    names = _task_names(sandbox)
    assert names.count("Acme 2") == 1 and names.count("Acme 3") == 1

    # `default` kept working throughout (its own queue and log; the worker serves both).
    # Deleted: its routes answer 404 and no key of it is left in Redis.
    deleted = _call("DELETE", f"{web}/workspaces/acme", OPERATOR)
    assert deleted.status_code in (200, 204), deleted.text
    time.sleep(2)
    assert deliver(web, {"title": "Acme 4", "project": PROJECT}, "acme_4", path=hook,
                   secret=secret).status_code == 404
    assert _call("GET", f"{web}/workspaces/acme/runs", admin).status_code == 404
    connection = redis.Redis.from_url(redis_url)
    # A process that had not yet noticed may write once more; workers purge such leftovers within seconds.
    wait_until(lambda: not list(connection.scan_iter(match="*acme*")), 20,
               "no key of the deleted workspace to be left")
    assert "Acme 4" not in _task_names(sandbox)


def test_rules_check_warns_of_a_webhook_source_the_running_stack_does_not_have(redis_url, sandbox, rules_dir):
    from app import create_app

    (rules_dir / "helpdesk.yaml").write_text(FORM_RULE.format(extra="").replace("webhook: forms", "webhook: helpdesk"))
    app = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": sandbox.token, "RULES_PATH": str(rules_dir)})
    runner = app.test_cli_runner()
    assert runner.invoke(args=["webhooks", "list"]).exit_code == 0  # the stack's registry holds `default`

    warned = runner.invoke(args=["rules", "check", str(rules_dir)])
    assert warned.exit_code == 0, warned.output  # a warning: the source may come after the rule
    assert "the running stack has no webhook source 'helpdesk'" in warned.output
    assert "`flask webhooks add helpdesk`" in warned.output

    assert runner.invoke(args=["webhooks", "add", "helpdesk"]).exit_code == 0
    quiet = runner.invoke(args=["rules", "check", str(rules_dir)])
    assert quiet.exit_code == 0 and "no webhook source" not in quiet.output, quiet.output


def test_a_web_process_without_secrets_key_serves_its_declared_workspace_and_never_500s(redis_url, sandbox):
    from app import create_app
    from tests.support.stack import WEBHOOK_SECRET

    app = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": sandbox.token, "SECRETS_KEY": "", "OPERATOR_TOKEN": OPERATOR,
                      "WEBHOOK_SOURCES": {"forms": [WEBHOOK_SECRET]}})
    client = app.test_client()
    assert client.get("/runs", headers={"Authorization": f"Bearer {OPERATOR}"}).status_code == 200
    refused = client.put("/workspaces/acme", headers={"Authorization": f"Bearer {OPERATOR}"},
                         json={"inloox_url": sandbox.base_url, "inloox_api_key": "k"})
    assert refused.status_code == 503
    assert "SECRETS_KEY is empty" in refused.json["error"]["message"]
    secrets = client.get("/readyz").json["checks"]["secrets"]  # ready: it serves its declared workspace
    assert secrets["ok"] is True and "SECRETS_KEY is empty" in secrets["skipped"]
