"""Webhook-driven runs end to end with real processes: web → Valkey → rq worker → sandbox."""
from __future__ import annotations

import pytest

from tests.support.processes import wait_until
from tests.support.stack import PROJECT, all_runs, deliver, runs_in, write_form_rule


def test_a_webhook_delivered_five_times_creates_one_task(stack, sandbox, rules_dir, redis_url):
    write_form_rule(rules_dir)
    sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"})
    stack.worker()
    web = stack.web()

    statuses = [deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_5x").status_code for _ in range(5)]

    assert statuses == [202, 200, 200, 200, 200]
    wait_until(lambda: runs_in(redis_url, "succeeded"), 15, "the run")
    assert [t["Name"] for t in sandbox.get("Task").json()["value"]] == ["Call Ann"]
    assert len(all_runs(redis_url)) == 1


@pytest.mark.parametrize("fault, posts", [
    ({"kind": "status", "status": 429, "retry_after": 1, "count": 2}, 3),
    ({"kind": "status", "status": 503, "count": 3}, 4),
    # The create lands but its answer never comes: the retry finds it by its marker, posts nothing.
    ({"kind": "commit_then_hang", "hang_s": 6, "count": 1}, 1),
], ids=["429 with Retry-After", "503 burst", "commit then hang"])
def test_each_intended_write_lands_exactly_once_through_faults(stack, sandbox, rules_dir, redis_url,
                                                               fault, posts):
    write_form_rule(rules_dir)
    sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"})
    stack.env["INLOOX_TIMEOUT"] = "2"  # so that a hung answer is given up on quickly
    stack.worker()
    web = stack.web()
    sandbox.fault(methods=["POST"], path="^Task$", **fault)

    assert deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_fault").status_code == 202

    [run] = wait_until(lambda: runs_in(redis_url, "succeeded"), 40, "the run to succeed despite the fault")
    assert [t["Name"] for t in sandbox.get("Task").json()["value"]] == ["Call Ann"]
    sent = [r for r in sandbox.requests() if r["method"] == "POST" and r["path"] == "Task"]
    assert len(sent) == posts
    assert run["attempts"] >= 1, "the fault should have cost at least one retry"
    assert run["outputs"]["task"]["Name"] == "Call Ann"
