"""Manual runs through the real pipeline: `flask rules run` and `POST /rules/<id>/run` → intake → worker."""
from __future__ import annotations

import pytest

from tests.support.processes import wait_until
from tests.support.stack import all_runs, write_rule

RULE = """
id: say-hello
description: Say hello when a person asks.
when:
  - manual: true
then:
  - notify: "{{ env.TEAM_CHANNEL_URL }}"
    title: Hello
    body: "Hello from {{ input.by }}"
"""


@pytest.fixture
def app(redis_url, sandbox, receiver, rules_dir, monkeypatch):
    from app import create_app

    monkeypatch.setenv("TEAM_CHANNEL_URL", receiver.json_url)  # what RULES_ENV lets rules read
    write_rule(rules_dir, "hello", RULE)
    return create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                       "INLOOX_API_KEY": sandbox.token, "RULES_PATH": str(rules_dir), "ADMIN_TOKEN": "s3cret"})


def test_flask_rules_run_runs_the_rule_once_through_the_worker(app, stack, receiver, redis_url):
    stack.worker()
    result = app.test_cli_runner().invoke(args=["rules", "run", "say-hello"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("queued: event manual:say-hello:")

    [message] = wait_until(lambda: receiver.received, 20, "the notification")
    assert message["body"]["message"] == "Hello from flask rules run"
    [run] = wait_until(lambda: [r for r in all_runs(redis_url) if r["status"] == "succeeded"], 10, "the run")
    assert result.output.strip().endswith(f"run {run['id']}") and run["source"] == "manual"


def test_post_rules_run_needs_the_admin_token_and_runs_the_rule(app, stack, receiver, redis_url):
    client = app.test_client()
    assert client.post("/rules/say-hello/run", json={"input": {"by": "Ann"}}).status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    assert client.post("/rules/nope/run", headers=auth).status_code == 404

    dry = client.post("/rules/say-hello/run?dry_run=1", json={"input": {"by": "Ann"}}, headers=auth)
    assert dry.status_code == 200 and dry.json["report"]["rules"][0]["plan"]["operations"][0]["params"]["text"] == \
        "Hello from Ann"
    assert all_runs(redis_url) == []  # a dry run writes nothing

    response = client.post("/rules/say-hello/run", json={"input": {"by": "Ann"}}, headers=auth)
    assert response.status_code == 202 and response.json["accepted"] is True
    stack.worker()
    [message] = wait_until(lambda: receiver.received, 20, "the notification")
    assert message["body"]["message"] == "Hello from Ann"
    wait_until(lambda: [r["id"] for r in all_runs(redis_url) if r["status"] == "succeeded"] == [response.json["run_id"]],
               10, "the run the API named")
