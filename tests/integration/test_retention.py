"""Retention of runs, traces and the step ledger in a real Valkey: bounded by count and by age, records
deleted (not only unlisted), waiting runs never trimmed, compact and compressed records read back whole."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis as redis_lib

from engine import Event, explain, load_texts
from tests.support.processes import wait_until
from workers import ledger, runs, workspaces
from workers.runs import (create_run, decode_record, list_runs, load_run, load_trace, new_run, record_step, save_run,
                          save_trace)

PREFIX = "ws:default:"
T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)  # in the future: no run here is older than RUNS_MAX_AGE
RULES = load_texts([("forms.yaml", """\
id: form-to-task
when:
  - webhook: forms
then:
  - id: task
    inloox.create: Task
    values:
      Name: "{{ webhook.body.title }}"
      ProjectId: "3fa85f64-5717-4562-b3fc-2c963f66afa6"
      WorkAmount: 1
"""), ("other.yaml", """\
id: other-form
when:
  - webhook: other
then:
  - notify: "json://example.invalid/"
    body: never
""")])
TASK = {  # what InLoox (the sandbox) answers to the create: the ledger and the run keep it
    "TaskItemId": "9f8437ba-8749-4c9e-b65d-75854065eba8", "Name": "", "TaskItemStatusId": None, "ContactId": None,
    "CardPositionNumber": 0, "ProjectId": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "StartDateTime": None,
    "EndDateTime": None, "IsDone": False, "DoneDate": None, "CustomColor": None, "WorkAmount": 1.0,
    "PlanningId": None, "GroupId": "895637ee-b2f0-54bc-8f02-c8b506acc9b0", "AssignedByContactId": None,
    "CreatedByContactId": "895637ee-b2f0-54bc-8f02-c8b506acc9b0", "ContactDisplayName": None,
    "ContactImageId": None, "DescriptionHTML": "<p>[automation op_0a7f34940dea8d89314750543b6387f8]</p>",
    "Recurrence": 0, "IsBillable": False}


@pytest.fixture
def connection(redis_url, monkeypatch):
    monkeypatch.setattr(runs, "TRIM_EVERY", 0)  # trim at every store (a process trims at most once a second)
    client = redis_lib.Redis.from_url(redis_url)
    with workspaces.using(workspaces.Workspace(workspaces.DEFAULT, "http://unused/", "unused")):
        yield client
    client.close()


def handled(connection, n: int, *, status: str = "succeeded", at: datetime | None = None, keep: int | None = None,
            steps: bool = True) -> dict:
    """What a worker stores for the n-th form event: its run (created, steps, then `status`) and its trace."""
    at = at or T0 + timedelta(seconds=n)
    event = Event(source="webhook", kind="forms", id=f"webhook:forms:msg_{n}", occurred_at=at,
                  payload={"id": f"msg_{n}", "body": {"title": f"Call Ann {n}"},
                           "headers": {"content-type": "application/json"}})
    report = explain(event, RULES, now=at, env={})
    [plan] = report.plans
    run = new_run(plan, now=at, ruleset_version="files:0123456789ab")
    assert create_run(connection, run, keep=keep)
    if steps:
        [operation] = plan.operations
        output = {**TASK, "Name": operation.params["values"]["Name"]}
        ledger.mark_sent(connection, operation.idempotency_key)
        ledger.mark_done(connection, operation.idempotency_key, output)
        record_step(run, {"index": 0, "id": operation.step_id, "action": operation.action, "verb": operation.verb,
                          "started_at": at.isoformat(), "request": operation.params, "status": "done",
                          "output": output, "ms": 4})
        run["outputs"][operation.step_id] = output
    run["status"] = status
    save_run(connection, run, now=at, keep=keep)
    with connection.pipeline(transaction=False) as pipe:
        save_trace(pipe, report.to_dict(), [run["id"]], now=at, keep=keep)
        pipe.execute()
    return run


def keys(connection, pattern: str) -> set[str]:
    return {k.decode()[len(PREFIX):] for k in connection.scan_iter(PREFIX + pattern)}


def test_past_the_keep_count_the_oldest_runs_and_traces_are_deleted_not_only_unlisted(connection):
    made = [handled(connection, n, keep=5) for n in range(12)]

    kept = {r["id"] for r in made[-5:]}
    assert keys(connection, "run:*") == {f"run:{i}" for i in kept}
    assert {r["id"] for r in list_runs(connection, limit=100)} == kept
    assert {i.decode() for i in connection.zrange(PREFIX + "runs", 0, -1)} == kept
    assert {i.decode() for i in connection.zrange(PREFIX + "runs:rule:form-to-task", 0, -1)} == kept
    assert connection.zcard(PREFIX + "runs:done") == 5
    assert keys(connection, "trace:*") == {f"trace:webhook:forms:msg_{n}" for n in range(7, 12)}
    assert connection.zcard(PREFIX + "traces") == 5
    assert all(load_run(connection, r["id"]) is None for r in made[:7])
    assert load_trace(connection, "webhook:forms:msg_0") is None


def test_waiting_runs_are_never_trimmed_by_the_count_and_count_once_finished(connection):
    waiting = [handled(connection, n, status=status, keep=3, steps=False)
               for n, status in enumerate(["queued", "retrying", "held", "paused"])]
    finished = [handled(connection, n, keep=3) for n in range(4, 14)]

    assert {r["id"] for r in list_runs(connection, limit=100)} == {r["id"] for r in waiting + finished[-3:]}
    assert all(load_run(connection, r["id"])["status"] == r["status"] for r in waiting)
    assert [r["id"] for r in list_runs(connection, status="paused")] == [waiting[3]["id"]]

    # The oldest run finishes last: it is now among the newest finished, and another one goes.
    run = load_run(connection, waiting[0]["id"])
    run["status"] = "succeeded"
    save_run(connection, run, now=T0 + timedelta(seconds=100), keep=3)
    assert load_run(connection, waiting[0]["id"])["status"] == "succeeded"
    assert load_run(connection, finished[-3]["id"]) is None
    assert connection.zcard(PREFIX + "runs:done") == 3


def test_a_failed_run_retried_leaves_the_finished_runs_and_is_not_trimmed(connection):
    failed = handled(connection, 0, status="failed", keep=2)
    failed["status"] = "queued"  # what retry_run does
    save_run(connection, failed, now=T0 + timedelta(seconds=1), keep=2)
    for n in range(1, 6):
        handled(connection, n, keep=2)

    assert load_run(connection, failed["id"])["status"] == "queued"
    assert failed["id"] in {r["id"] for r in list_runs(connection, status="queued")}


def test_runs_and_traces_older_than_the_max_age_go_when_the_next_run_is_stored(connection):
    old = datetime.now(timezone.utc) - timedelta(days=8)
    stale = [handled(connection, n, at=old + timedelta(seconds=n)) for n in range(3)]
    fresh = handled(connection, 3, at=datetime.now(timezone.utc))

    assert [r["id"] for r in list_runs(connection)] == [fresh["id"]]
    assert keys(connection, "run:*") == {f"run:{fresh['id']}"}
    assert keys(connection, "trace:*") == {"trace:webhook:forms:msg_3"}
    assert all(load_run(connection, r["id"]) is None for r in stale)
    step = f"step:{fresh['plan']['operations'][0]['idempotency_key']}"
    for key in (f"run:{fresh['id']}", "trace:webhook:forms:msg_3", step):
        assert 6 * 86400 < connection.ttl(PREFIX + key) <= 7 * 86400, key


def test_a_paused_run_whose_record_expired_leaves_the_run_listings_when_the_next_run_is_stored(connection):
    """A paused run (its account's token refused) waits for a person; left untouched, its record expires after
    RUNS_MAX_AGE. Its id stayed in `runs` and `runs:rule:<rule>` for good: only a finished run leaves them with the
    trim, and a listing unlists only the gone ids it reads, from the one listing it reads."""
    now = datetime.now(timezone.utc)
    expired = [handled(connection, n, status="paused", at=now, steps=False) for n in range(3)]
    resumed = handled(connection, 3, status="paused", at=now, steps=False)
    resumed["status"] = "queued"  # what retry_run does when a person resumes the account: it waits no more
    save_run(connection, resumed, now=now)
    # Eight days pass: the records left untouched expire; the pauses are eight days old.
    for run in expired:
        connection.delete(PREFIX + f"run:{run['id']}")
    old = (now - timedelta(days=8)).timestamp()
    connection.zadd(PREFIX + "runs:paused", {m: old for m in connection.zrange(PREFIX + "runs:paused", 0, -1)})
    fresh = handled(connection, 4, at=datetime.now(timezone.utc))

    listed = {resumed["id"], fresh["id"]}
    assert {i.decode() for i in connection.zrange(PREFIX + "runs", 0, -1)} == listed
    assert {i.decode() for i in connection.zrange(PREFIX + "runs:rule:form-to-task", 0, -1)} == listed
    assert load_run(connection, resumed["id"])["status"] == "queued"
    # The expired ones are forgotten; the resumed one is looked at again a record's life later (its record lives on).
    assert connection.zrange(PREFIX + "runs:paused", 0, -1) == [f"{resumed['id']} form-to-task".encode()]


def test_a_compact_record_reads_back_whole_with_its_steps_requests_responses_and_trace(connection):
    run = handled(connection, 1)

    shown = load_run(connection, run["id"])
    assert shown == run
    [step] = shown["steps"]
    assert step["request"]["values"]["Name"] == "Call Ann 1" and step["output"]["TaskItemId"] == TASK["TaskItemId"]
    stored = decode_record(connection.get(PREFIX + f"run:{run['id']}"))  # as stored: each value once
    assert "output" not in stored["steps"][0] and stored["outputs"]["task"]["Name"] == "Call Ann 1"
    trace = load_trace(connection, "webhook:forms:msg_1")
    matched = [r for r in trace["rules"] if r["matched"]]
    assert [r["plan"] for r in matched] == [run["plan"]] and trace["runs"] == [run["id"]]
    assert decode_record(connection.get(PREFIX + "trace:webhook:forms:msg_1"))["rules"][0]["plan"] is None


def test_a_compressed_record_round_trips_through_load_run_and_list_runs(connection, monkeypatch):
    monkeypatch.setattr(runs, "COMPRESS", True)
    run = handled(connection, 1)

    raw = connection.get(PREFIX + f"run:{run['id']}")
    assert not raw.startswith(b"{")
    assert load_run(connection, run["id"]) == run
    assert list_runs(connection) == [run]
    assert load_trace(connection, "webhook:forms:msg_1")["runs"] == [run["id"]]
    assert not connection.get(PREFIX + "trace:webhook:forms:msg_1").startswith(b"{")


def test_records_stored_before_as_plain_json_still_load(connection):
    run = handled(connection, 1)
    whole = load_run(connection, run["id"])
    connection.set(PREFIX + f"run:{run['id']}", json.dumps(whole))
    key = run["plan"]["operations"][0]["idempotency_key"]
    connection.set(PREFIX + f"step:{key}", json.dumps({"state": "done", "output": TASK, "at": "x"}))
    trace = {"event": {"id": "e"}, "rules": [{"rule": "form-to-task", "matched": True, "plan": run["plan"]}]}
    connection.set(PREFIX + "trace:e", json.dumps(trace))

    assert load_run(connection, run["id"]) == whole
    assert list_runs(connection) == [whole]
    assert ledger.entry(connection, key)["output"] == TASK
    assert load_trace(connection, "e") == trace


def test_the_ledger_reads_back_what_it_wrote(connection):
    ledger.mark_sent(connection, "op_1")
    assert ledger.entry(connection, "op_1")["state"] == "sent"
    ledger.mark_done(connection, "op_1", TASK)
    assert ledger.entry(connection, "op_1")["output"] == TASK
    assert not connection.get(PREFIX + "step:op_1").startswith(b"{")  # compressed: only this module reads it
    ledger.clear(connection, "op_1")
    assert ledger.entry(connection, "op_1") is None


def test_a_waiting_run_whose_record_expired_is_skipped_and_unlisted(connection):
    run = handled(connection, 1, status="paused", steps=False)
    connection.delete(PREFIX + f"run:{run['id']}")

    assert list_runs(connection, status="paused") == []
    assert connection.zcard(PREFIX + "runs") == 0


@pytest.mark.parametrize("compress, most", [(False, 4096), (True, 2560)])
def test_what_one_ordinary_event_costs_in_redis(connection, monkeypatch, compress, most):
    """Run record, trace and ledger entry of one webhook → one InLoox create, and their index entries.

    With 500 runs the sorted sets are skip lists, as at 10,000 (listpacks below 128 entries are smaller).
    """
    monkeypatch.setattr(runs, "COMPRESS", compress)
    for n in range(500):
        handled(connection, n)
    used = sum(connection.memory_usage(k, samples=0) for k in connection.scan_iter(PREFIX + "*")
               if not k.startswith(PREFIX.encode() + b"metrics"))
    assert used / 500 <= most, f"{used / 500:.0f} bytes per event"


def test_a_job_that_failed_is_kept_in_rqs_failed_registry_as_long_as_a_run_not_a_year(stack, receiver, redis_url,
                                                                                      workspace):
    """A job that raises stays in RQ's failed registry (its record and traceback, for `rq info` and people) until
    its failure TTL, which RQ makes a year unless the job is given one: a workspace whose Slack kept refusing
    its replies kept a job a failure for a year. Ours keep it as long as a run (RUNS_MAX_AGE)."""
    from rq import Queue

    from workers.chat import queue_reply

    connection = redis_lib.Redis.from_url(redis_url)
    receiver.answers = [500]  # Slack's response_url refuses the reply: the job raises (no retries: workers/chat.py)
    queue_reply(connection, receiver.url + "/slack", {"text": "confirmed"})
    stack.worker()

    failed = Queue(workspace.queue, connection=connection).failed_job_registry
    [job_id] = wait_until(lambda: failed.get_job_ids(), 30, "the reply's job to fail")
    assert 6 * 86400 < connection.ttl(f"rq:job:{job_id}") <= runs.RUNS_MAX_AGE
    kept_until = connection.zscore(failed.key, job_id)
    assert kept_until - time.time() <= runs.RUNS_MAX_AGE
