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


def test_post_rules_run_sent_again_with_its_idempotency_key_runs_the_rule_once(app, stack, receiver, redis_url):
    # A client that did not see the answer (a time-out, a dropped connection) sends the request again: without a key
    # each request was a new manual event, a new run, a second notification (or InLoox write). With the same
    # Idempotency-Key it is the same event and run, accepted once; another key is another run.
    client = app.test_client()
    auth = {"Authorization": "Bearer s3cret"}
    sent = [client.post("/rules/say-hello/run", json={"input": {"by": "Ann"}}, headers={**auth, "Idempotency-Key": key})
            for key in ("order-7-hello", "order-7-hello", "order-8-hello")]

    assert [r.status_code for r in sent] == [202, 202, 202]
    assert [r.json["accepted"] for r in sent] == [True, False, True]
    assert sent[0].json["run_id"] == sent[1].json["run_id"] != sent[2].json["run_id"]
    stack.worker()
    wait_until(lambda: len([r for r in all_runs(redis_url) if r["status"] == "succeeded"]) == 2, 20, "two runs")
    assert len(receiver.received) == 2
    bad = client.post("/rules/say-hello/run", json={}, headers={**auth, "Idempotency-Key": "x" * 256})
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json["error"]["message"]
