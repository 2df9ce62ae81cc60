"""`/metrics`: counters written by the web, worker and poller processes, read back as Prometheus text."""
from __future__ import annotations


import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from tests.support.processes import wait_until
from tests.support.stack import PROJECT, deliver, ensure_project, runs_in, write_form_rule


@pytest.fixture
def api(redis_url, sandbox):
    return create_app({"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url, "INLOOX_API_KEY": sandbox.token,
                       "INLOOX_REQUESTS_PER_SECOND": "0"})


def scrape(api) -> dict:
    """{(sample name, sorted labels): value} of one /metrics answer."""
    response = api.test_client().get("/metrics")
    assert response.status_code == 200
    # Prometheus's own header, whose charset was written a second time (`; charset=utf-8; charset=utf-8`)
    from prometheus_client import CONTENT_TYPE_LATEST
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    samples = [s for family in text_string_to_metric_families(response.get_data(as_text=True)) for s in family.samples]
    # Every counter and poll gauge is the default workspace's here; the label itself is checked once.
    assert {s.labels.get("workspace") for s in samples if "_total" in s.name or "poll_" in s.name} <= {"default"}
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "workspace"))): s.value
            for s in samples}


def test_metrics_answer_on_an_empty_database_with_every_family(api):
    samples = scrape(api)
    names = {name for name, _ in samples}
    assert ("inloox_automation_queue_jobs", (("queue", "default"), ("state", "queued"))) in samples
    assert "inloox_automation_step_duration_seconds_count" in names
    assert ("inloox_automation_workers", ()) in samples


def test_a_webhook_run_is_counted_from_intake_to_step_latency(stack, sandbox, rules_dir, redis_url, api):
    write_form_rule(rules_dir)
    ensure_project(sandbox)
    stack.worker()
    web = stack.web()
    sandbox.fault(kind="status", status=400, methods=["POST"], path="^Task$", count=1)

    assert deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_m1").status_code == 202
    assert deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_m1").status_code == 200
    assert deliver(web, {"title": "Call Bo", "project": PROJECT}, "msg_m2").status_code == 202
    wait_until(lambda: runs_in(redis_url, "succeeded") and runs_in(redis_url, "failed"), 20, "both runs to end")

    # A worker writes its counts at most a second after they happen.
    samples = wait_until(lambda: (s := scrape(api)).get(("inloox_automation_step_duration_seconds_count", ())) == 2
                         and s, 10, "the worker's counts at /metrics")
    events = "inloox_automation_events_total"
    hook = (("kind", "forms"), ("outcome", "{}"), ("source", "webhook"))
    assert samples[events, tuple((k, v.format("accepted")) for k, v in hook)] == 2
    assert samples[events, tuple((k, v.format("duplicate")) for k, v in hook)] == 1
    assert samples["inloox_automation_rule_matches_total", (("rule", "form-to-task"),)] == 2
    assert samples["inloox_automation_runs_total", (("status", "succeeded"),)] == 1
    assert samples["inloox_automation_runs_total", (("status", "failed"),)] == 1
    assert samples["inloox_automation_steps_total", (("status", "done"), ("verb", "create"))] == 1
    assert samples["inloox_automation_steps_total", (("status", "error"), ("verb", "create"))] == 1
    assert samples["inloox_automation_step_duration_seconds_count", ()] == 2
    assert samples["inloox_automation_inloox_requests_total", (("method", "POST"), ("status_class", "4xx"))] >= 1
    assert samples["inloox_automation_inloox_requests_total", (("method", "POST"), ("status_class", "2xx"))] >= 1


def test_a_rejected_webhook_is_counted_without_its_made_up_source(redis_url, sandbox):
    api = create_app({"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url, "INLOOX_API_KEY": sandbox.token,
                      "WEBHOOK_SOURCES": {"forms": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}})
    client = api.test_client()
    assert client.post("/hooks/forms", data=b"{}").status_code == 401
    assert client.post("/hooks/made-up-name", data=b"{}").status_code == 404

    samples = scrape(api)
    rejected = {labels: v for (name, labels), v in samples.items()
                if name == "inloox_automation_events_total" and ("outcome", "rejected") in labels}
    assert rejected == {(("kind", "forms"), ("outcome", "rejected"), ("source", "webhook")): 1,
                        (("kind", "unknown"), ("outcome", "rejected"), ("source", "webhook")): 1}


def test_poll_lag_and_held_floods_per_entity_set(api, redis_url):
    connection = redis.Redis.from_url(redis_url)
    connection.set("ws:default:poll:Task:cursor", "2020-01-01T00:00:00Z")
    # Lag counts from the start of the last complete poll (a poller that stopped in 2020).
    connection.hset("ws:default:poll:Task:last", mapping={"started": "2020-01-01T00:00:05+00:00"})
    connection.rpush("ws:default:poll:Task:held", "{}", "{}")

    samples = scrape(api)
    assert samples["inloox_automation_poll_lag_seconds", (("entity_set", "Task"),)] > 3600
    assert samples["inloox_automation_held_floods", (("entity_set", "Task"),)] == 2


@pytest.mark.parametrize("breakage", [
    lambda c: c.set("ws:broken:poll:watched", "not json"),
    lambda c: c.set("ws:broken:poll:Task:snap", "not a hash"),
    lambda c: c.set("ws:broken:events", "not a stream"),
    lambda c: c.set("rq:wip:broken", "not a sorted set"),
    lambda c: c.set("ws:broken:rules:broken", "not a hash"),
], ids=["garbage-watched-sets", "snapshots-of-wrong-type", "event-log-of-wrong-type", "rq-registry-of-wrong-type",
        "rule-file-states-of-wrong-type"])
def test_one_workspaces_broken_poll_keys_leave_every_other_workspaces_metrics(redis_url, sandbox, tmp_path, breakage):
    # Before, /metrics read every workspace's poll status in one go: one workspace's key it could not read answered
    # 500, and no workspace's metrics were scraped while it lasted.
    entries = "".join(f"\n  {name}:\n    inloox_url: {sandbox.base_url}\n    inloox_api_key: {sandbox.token}"
                      for name in ("broken", "fine"))
    (tmp_path / "workspaces.yaml").write_text("workspaces:" + entries + "\n")
    api = create_app({"REDIS_URL": redis_url, "WORKSPACES_FILE": str(tmp_path / "workspaces.yaml"),
                      "INLOOX_REQUESTS_PER_SECOND": "0"})
    connection = redis.Redis.from_url(redis_url)
    for name in ("broken", "fine"):
        connection.set(f"ws:{name}:poll:Task:cursor", "2020-01-01T00:00:00Z")
        connection.hset(f"ws:{name}:poll:Task:last", mapping={"started": "2020-01-01T00:00:05+00:00"})
    breakage(connection)

    response = api.test_client().get("/metrics")

    assert response.status_code == 200
    lags = {s.labels["workspace"] for family in text_string_to_metric_families(response.get_data(as_text=True))
            for s in family.samples if s.name == "inloox_automation_poll_lag_seconds"}
    assert "fine" in lags
