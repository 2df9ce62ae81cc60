"""The worker and the poller log JSON lines, with the run id on a run's lines and never the InLoox token."""
from __future__ import annotations

import json
import logging
import os
import time

import redis
import requests

from tests.support.processes import wait_until
from tests.support.stack import ENGINE_TOKEN, FORM_RULE, PROJECT, deliver, ensure_project, runs_in, write_form_rule
from workers import registry
from workers.logs import JsonFormatter, secrets_of
from workers.secrets import Keyring

OPERATOR = "operator-logs-4Rz8"
# Every process follows the registry within a second (its View); a secret is redacted from then on. A
# line logged sooner, by a process that does not use that secret, can still show it (workers/logs.py).
FOLLOWED_WITHIN = 2


def json_lines(process) -> list[dict]:
    lines = [line for line in process.output().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # fails on any line that is not JSON


def test_worker_and_poller_lines_are_json_with_the_run_id_and_no_token(engine, sandbox, rules_dir, redis_url):
    write_form_rule(rules_dir)
    ensure_project(sandbox)
    worker, poller = engine.worker(), engine.poller()
    web = engine.web()

    deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_logs")
    [run] = wait_until(lambda: runs_in(redis_url, "succeeded"), 20, "the run")
    wait_until(lambda: any(run["id"] == line.get("run_id") and "succeeded" in line["message"]
                           for line in json_lines(worker)), 10, "the run's last log line")

    assert {"time", "level", "logger", "message"} <= set(json_lines(worker)[0])
    assert json_lines(poller), "the poller logs its start"
    assert ENGINE_TOKEN not in worker.output() + poller.output()


def test_the_scheduler_run_alone_logs_json_lines_without_the_token(engine):
    """`python -m workers.scheduler` (the README's way to run the schedules apart from the poller)
    logs as the worker and the poller do: JSON lines, secrets redacted."""
    scheduler = engine.scheduler()
    wait_until(lambda: scheduler.output().strip(), 20, "the scheduler's first line")
    assert {"time", "level", "logger", "message"} <= set(json_lines(scheduler)[0])
    assert ENGINE_TOKEN not in scheduler.output()


def test_a_workspace_created_after_the_worker_started_has_its_secrets_redacted_too(stack, sandbox, redis_url):
    """The worker starts serving `default` only; `acme` and its webhook source are then added through the
    operator API. A form whose sender pasted the source's secret into a field fails its run, and InLoox's
    refusal quotes the value: the worker's line for that run shows `***`, never the secret; the same
    after the secret is rotated."""
    stack.env["OPERATOR_TOKEN"] = OPERATOR
    sandbox.add_user(ENGINE_TOKEN, "Automation", "Bot")
    web = stack.web(threads=2)
    worker = stack.worker()
    wait_until(lambda: json_lines(worker), 20, "the worker's first line")

    created = _call("PUT", f"{web}/workspaces/acme", OPERATOR,
                    {"inloox_url": sandbox.base_url, "inloox_api_key": ENGINE_TOKEN})
    assert created.status_code == 201, created.text
    admin = created.json()["admin_token"]
    bundle = {"files": {"forms.yaml": FORM_RULE.format(extra="")}}
    assert _call("PUT", f"{web}/workspaces/acme/rules", admin, bundle).status_code in (200, 201)
    added = _call("POST", f"{web}/workspaces/acme/webhooks", admin, {"source": "forms"})
    assert added.status_code == 201, added.text
    secret = added.json()["secret"]

    time.sleep(FOLLOWED_WITHIN)
    wait_until(lambda: _paste(web, secret, "acme_pasted").status_code == 202, 10, "the new source to be served")
    [line] = wait_until(lambda: _refused_lines(worker), 30, "the failed run's line")
    assert "***" in line["message"], line
    assert secret not in worker.output()

    # Rotated: the new secret is redacted as well (and the old one still is).
    rotated = _call("POST", f"{web}/workspaces/acme/webhooks/forms/rotate", admin)
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    time.sleep(FOLLOWED_WITHIN)
    assert _paste(web, new_secret, "acme_pasted_again").status_code == 202
    wait_until(lambda: len(_refused_lines(worker)) == 2, 30, "the second failed run's line")
    assert new_secret not in worker.output() and secret not in worker.output()
    assert all("***" in x["message"] for x in _refused_lines(worker))


def _paste(web: str, secret: str, msg_id: str) -> requests.Response:
    """A form to acme whose sender pasted the source's secret into its project field."""
    return deliver(web, {"title": "Pasted", "project": secret}, msg_id, path="/workspaces/acme/hooks/forms",
                   secret=secret)


def _refused_lines(worker) -> list[dict]:
    """The worker's lines for runs that InLoox refused because of the project field."""
    return [x for x in json_lines(worker) if "form-to-task" in x["message"] and "ProjectId" in x["message"]]


def _call(method: str, url: str, token: str, body: dict | None = None) -> requests.Response:
    return requests.request(method, url, json=body, timeout=10, headers={"Authorization": f"Bearer {token}"})


def test_the_secrets_of_workspaces_the_registry_view_reads_later_are_redacted(redis_url):
    """A formatter made at start follows the process's registry view: a workspace put after it, a rotated
    webhook secret and a new admin token are redacted once the view has read them; a rotated-out secret
    stays redacted."""
    connection = redis.Redis.from_url(redis_url)
    keyring = Keyring.from_config(os.environ)
    view = registry.View(connection, keyring)
    formatter = JsonFormatter(secrets_of({"INLOOX_API_KEY": ENGINE_TOKEN}))
    formatter.follow(view)
    view.workspaces()  # what the process reads as it serves

    token = "ilx_acme_live_token_0451"
    created = registry.put(connection, keyring, "acme", {"inloox_url": "https://acme.example/",
                                                         "inloox_api_key": token, "slack_signing_secret": "slack-acme-88"})
    first = registry.add_webhook(connection, keyring, "acme", "forms")
    view.refresh()
    assert _shown(formatter, token, first, "slack-acme-88", created.admin_token) == "*** *** *** ***"

    second = registry.rotate_webhook(connection, keyring, "acme", "forms")
    admin = registry.new_admin_token(connection, "acme")
    registry.put(connection, keyring, "acme", {"inloox_api_key": "ilx_acme_next_token_0452"})
    view.refresh()
    assert _shown(formatter, second, admin, "ilx_acme_next_token_0452", token, first) == "*** *** *** *** ***"


def _shown(formatter: JsonFormatter, *values: str) -> str:
    """The message of the line a formatter makes of `values`, as the process would print it."""
    record = logging.LogRecord("workers.jobs", logging.INFO, __file__, 1, " ".join(["%s"] * len(values)), values, None)
    return json.loads(formatter.format(record))["message"]
