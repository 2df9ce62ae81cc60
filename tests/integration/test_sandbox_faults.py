"""Sandbox fault injection and the request log, through the admin API under /_sandbox/."""
from __future__ import annotations

import time

import pytest
import requests

from tests.support.processes import wait_until


def test_health_answers(sandbox):
    assert requests.get(sandbox.admin_url + "health", timeout=5).status_code == 200


def test_latency_delays_then_serves(sandbox):
    sandbox.fault(kind="latency", latency_ms=300, count=1)
    started = time.monotonic()
    response = sandbox.get("Task")
    assert response.status_code == 200 and time.monotonic() - started >= 0.3
    assert sandbox.requests()[-1]["fault"] == "latency"


def test_429_carries_retry_after_and_does_not_write(sandbox):
    sandbox.fault(kind="status", status=429, retry_after=7, count=1, methods=["POST"])
    response = sandbox.post("Task", {"Name": "x"})
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    assert response.json()["error"]["code"]
    assert sandbox.count("Task") == 0
    assert sandbox.post("Task", {"Name": "x"}).status_code == 201


def test_503_for_the_next_n_requests_only(sandbox):
    sandbox.fault(kind="status", status=503, count=2, path="^Task")
    statuses = [sandbox.get("Task").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert sandbox.get("Project").status_code == 200
    assert sandbox.faults() == []


def test_rules_match_by_method_and_path(sandbox):
    sandbox.fault(kind="status", status=500, methods=["PATCH"], path=r"^Task\(")
    task = sandbox.post("Task", {"Name": "x"}).json()
    assert sandbox.get(f"Task({task['TaskItemId']})").status_code == 200
    assert sandbox.patch(f"Task({task['TaskItemId']})", {"Name": "y"}).status_code == 500
    assert sandbox.get(f"Task({task['TaskItemId']})").json()["Name"] == "x"
    [rule] = sandbox.faults()
    assert rule["count"] is None and rule["methods"] == ["PATCH"]


def test_fraction_zero_never_fires(sandbox):
    sandbox.fault(kind="status", status=500, fraction=0)
    assert all(sandbox.get("Task").status_code == 200 for _ in range(10))


def test_drop_closes_the_connection_before_doing_anything(sandbox):
    sandbox.fault(kind="drop", count=1, methods=["POST"])
    with pytest.raises(requests.ConnectionError):
        sandbox.post("Task", {"Name": "never"})
    assert sandbox.count("Task") == 0
    logged = [r for r in sandbox.requests() if r["method"] == "POST"]
    assert logged == [{**logged[0], "status": None, "fault": "drop", "path": "Task", "body": {"Name": "never"}}]


def test_commit_then_hang_commits_and_never_answers(sandbox):
    sandbox.fault(kind="commit_then_hang", hang_s=0.5, count=1, methods=["POST"])
    with pytest.raises(requests.ConnectionError):
        sandbox.post("Task", {"Name": "landed"})
    assert sandbox.count("Task", "Name eq 'landed'") == 1


def test_commit_then_hang_holds_the_answer_beyond_a_client_timeout(sandbox):
    sandbox.fault(kind="commit_then_hang", hang_s=2, count=1, methods=["POST"])
    with pytest.raises(requests.Timeout):
        sandbox.session.post(sandbox.base_url + "Task", json={"Name": "slow"}, timeout=0.3)
    wait_until(lambda: sandbox.count("Task") == 1, timeout=5, message="the hung write to be visible")


def test_commit_then_status_commits_and_answers_the_status_instead(sandbox):
    sandbox.fault(kind="commit_then_status", status=504, count=1, methods=["POST"])
    answer = sandbox.post("Task", {"Name": "landed"})
    assert answer.status_code == 504 and answer.json()["error"]["code"] == "SandboxFault"
    assert sandbox.count("Task", "Name eq 'landed'") == 1
    assert [(r["status"], r["fault"]) for r in sandbox.requests()][0] == (504, "commit_then_status")


def test_commit_then_status_answers_its_text_repeated_after_the_write_landed(sandbox):
    # A body that is no JSON, or one too big for a client to read, to a write InLoox applied.
    sandbox.fault(kind="commit_then_status", status=201, text="<p>ok</p>", repeat=3, count=1, methods=["POST"])
    answer = sandbox.post("Task", {"Name": "landed"})
    assert answer.status_code == 201 and answer.text == "<p>ok</p>" * 3
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert sandbox.count("Task", "Name eq 'landed'") == 1


def test_a_status_fault_answers_its_body_instead_of_an_odata_error(sandbox):
    sandbox.post("Task", {"Name": "kept"})
    sandbox.fault(kind="status", status=200, body={"value": ["not a task"]}, count=1, methods=["GET"], path="^Task$")
    answer = sandbox.get("Task")
    assert answer.status_code == 200 and answer.json() == {"value": ["not a task"]}
    assert [t["Name"] for t in sandbox.get("Task").json()["value"]] == ["kept"]


def test_request_log_records_every_request_with_status_and_body(sandbox):
    sandbox.fault(kind="status", status=503, count=1, methods=["POST"])
    sandbox.post("Task", {"Name": "a"})
    sandbox.post("Task", {"Name": "a"})
    sandbox.get("Task", **{"$filter": "Name eq 'a'"})
    requests.get(sandbox.base_url + "Task", timeout=5)  # no token
    log = sandbox.requests()
    assert [(r["method"], r["path"], r["status"]) for r in log] == [
        ("POST", "Task", 503), ("POST", "Task", 201), ("GET", "Task", 200), ("GET", "Task", 401)]
    assert log[0]["body"] == {"Name": "a"} and log[0]["fault"] == "status" and log[1]["fault"] is None
    assert "filter" in log[2]["query"] and log[2]["at"].endswith("Z")
    sandbox.clear_requests()
    assert sandbox.requests() == []


def test_reset_clears_faults_log_and_data(sandbox):
    sandbox.fault(kind="latency", latency_ms=1)
    sandbox.post("Task", {"Name": "x"})
    sandbox.reset()
    assert sandbox.faults() == [] and sandbox.requests() == [] and sandbox.count("Task") == 0


@pytest.mark.parametrize("rule, mentions", [
    ({"kind": "explode"}, "kind"),
    ({"kind": "status"}, "status"),
    ({"kind": "latency", "latency_ms": -1}, "latency_ms"),
    ({"kind": "status", "status": 503, "fraction": 2}, "fraction"),
    ({"kind": "drop", "path": "("}, "path"),
    ({"kind": "drop", "colour": "red"}, "colour"),
    ({"kind": "drop", "text": "x"}, "text"),
    ({"kind": "status", "status": 200, "text": "x", "repeat": 64 * 1024 * 1024 + 1}, "repeat"),
])
def test_a_bad_fault_rule_is_rejected(sandbox, rule, mentions):
    response = requests.post(sandbox.admin_url + "faults", json=rule, timeout=5)
    assert response.status_code == 400 and mentions in response.json()["error"]["message"]
