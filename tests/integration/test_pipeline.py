"""Webhook-driven runs end to end with real processes: web → Valkey → rq worker → sandbox."""
from __future__ import annotations

import time

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


@pytest.mark.parametrize("fault, posts, attempts", [
    ({"kind": "status", "status": 429, "retry_after": 1, "count": 2}, 3, 2),
    # InLoox down says nothing of the request: no attempt is used up (see the next test).
    ({"kind": "status", "status": 503, "count": 3}, 4, 0),
    # The create lands but its answer never comes: the retry finds it by its marker, posts nothing.
    ({"kind": "commit_then_hang", "hang_s": 6, "count": 1}, 1, 1),
    # A gateway's 504 after InLoox applied the create says nothing of the request either: the retry looks for
    # the marker before sending again (it used to forget the create was sent, and made a second task).
    ({"kind": "commit_then_status", "status": 504, "count": 1}, 1, 0),
    ({"kind": "commit_then_status", "status": 502, "count": 1}, 1, 0),
    ({"kind": "commit_then_status", "status": 503, "count": 1}, 1, 0),
    # A 500 is InLoox's own error, after which its marker says whether the task exists: the run tries again by
    # itself (it used to fail at once, for a person to retry), and adopts the task or posts it once more.
    ({"kind": "status", "status": 500, "count": 1}, 2, 1),
    ({"kind": "commit_then_status", "status": 500, "count": 1}, 1, 1),
], ids=["429 with Retry-After", "503 burst", "commit then hang", "commit then 504", "commit then 502", "commit then 503", "500", "commit then 500"])
def test_each_intended_write_lands_exactly_once_through_faults(stack, sandbox, rules_dir, redis_url,
                                                               fault, posts, attempts):
    write_form_rule(rules_dir, "retry: {backoff: 0.5s}")  # backoff is not under test: 1-4 s, not 4-16
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
    assert run["attempts"] == attempts, "a retry after InLoox answered costs an attempt; one while it is down none"
    assert run["outputs"]["task"]["Name"] == "Call Ann"


@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 201},  # an OData error inside a 201: nothing was created
    {"kind": "commit_then_status", "status": 201},  # the task was created, the answer is not the task
    {"kind": "commit_then_status", "status": 201, "text": "<html>Created</html>"},  # created, answered with no JSON
], ids=["error inside a 201", "created, answered with an error", "created, answered with no JSON"])
def test_a_create_answered_without_the_entity_lands_once_and_the_run_keeps_the_entity(
        stack, sandbox, rules_dir, redis_url, fault):
    """InLoox (or something in front of it) answers a create with a success status but not with the entity. Whether
    the task exists is unknown, as when the answer is lost: the run looks for its marker, adopts the task or sends the
    create once more, and its output is the task. It used to take the answer for the task: the run succeeded with no
    task in InLoox, or with an error body as the step's output for later steps to read."""
    write_form_rule(rules_dir, "retry: {backoff: 0.5s}")
    sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"})
    stack.env["INLOOX_SETTLE_SECONDS"] = "2"  # nothing is on its way: the answer came
    stack.worker()
    web = stack.web()
    sandbox.fault(methods=["POST"], path="^Task$", count=1, **fault)

    assert deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_no_entity").status_code == 202

    [run] = wait_until(lambda: runs_in(redis_url, "succeeded"), 40, "the run to succeed despite the answer")
    assert [t["Name"] for t in sandbox.get("Task").json()["value"]] == ["Call Ann"]
    assert run["outputs"]["task"]["Name"] == "Call Ann" and run["outputs"]["task"]["TaskItemId"]


def _ended(redis_url: str, what: str) -> dict:
    """The only run, once it is neither queued nor retrying."""
    [run] = wait_until(lambda: (r := all_runs(redis_url)) and r[0]["status"] not in ("queued", "retrying") and r,
                       60, what)
    return run


def _retried_by_a_person_if_failed(redis_url: str, run: dict) -> dict:
    """What a person does with a failed run whose InLoox answered oddly (dashboard, `flask runs retry`): retry it."""
    import redis

    from workers.jobs import retry_run

    if run["status"] != "failed":
        return run
    connection = redis.Redis.from_url(redis_url)
    try:
        retry_run(connection, run["id"])
    finally:
        connection.close()
    return wait_until(lambda: (r := all_runs(redis_url)) and r[0]["status"] == "succeeded" and r[0]
                      or r and r[0]["status"] == "failed" and r[0]["retries"] and r[0], 60, "the retried run to end")


def test_a_create_that_landed_and_was_answered_too_big_to_read_makes_one_task(stack, sandbox, rules_dir, redis_url,
                                                                               workspace):
    """InLoox created the task and answered with a 201 over the client's 8 MB limit (a self-hosted InLoox, or a proxy
    gone wrong). A 2xx says the write landed: the run must not fail as though InLoox refused it and forget that it
    was sent. It did: the run said failed with the task in InLoox, and its retry made a second task."""
    write_form_rule(rules_dir, "retry: {backoff: 0.5s}")
    sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"})
    stack.worker()
    web = stack.web()
    sandbox.fault(kind="commit_then_status", status=201, text="x", repeat=9 * 1024 * 1024,
                  methods=["POST"], path="^Task$", count=1)

    assert deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_too_big").status_code == 202

    run = _retried_by_a_person_if_failed(redis_url, _ended(redis_url, "the run to end"))
    assert [t["Name"] for t in sandbox.get("Task").json()["value"]] == ["Call Ann"]
    assert run["status"] == "succeeded" and not run.get("retries"), run["reason"]
    assert run["outputs"]["task"]["Name"] == "Call Ann"


def test_a_create_that_landed_and_was_answered_with_a_redirect_is_not_sent_again_on_retry(
        stack, sandbox, rules_dir, redis_url, workspace):
    """InLoox (or something in front of it) applied the create and answered 303 See Other, as servers do after a POST
    (a 3xx to another host too: redirects are never followed, the token would go along). The run fails, as it should,
    for a person to look; their retry must look for the task before sending it again. It sent it at once: two tasks,
    because a 3xx was taken for InLoox's refusal, as a 4xx is."""
    write_form_rule(rules_dir, "retry: {backoff: 0.5s}")
    sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"})
    stack.worker()
    web = stack.web()
    sandbox.fault(kind="commit_then_status", status=303, methods=["POST"], path="^Task$", count=1)

    assert deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_redirected").status_code == 202

    failed = _ended(redis_url, "the run to fail on the redirect")
    assert failed["status"] == "failed" and "303" in failed["reason"], failed["reason"]
    run = _retried_by_a_person_if_failed(redis_url, failed)
    assert [t["Name"] for t in sandbox.get("Task").json()["value"]] == ["Call Ann"]
    assert run["status"] == "succeeded", run["reason"]
    assert run["outputs"]["task"]["Name"] == "Call Ann"


def test_an_inloox_that_is_down_uses_none_of_a_rules_attempts_until_its_outage_time_is_over(
        stack, sandbox, rules_dir, redis_url):
    """An InLoox answering 503 (down, say for maintenance) more often than the rule's retry attempts allow: the
    run waits it out and writes once, where it used to fail after two answers. An outage that lasts past
    INLOOX_OUTAGE_HOURS (here ~7 s) fails the run, and says so."""
    write_form_rule(rules_dir, "retry: {attempts: 2, backoff: 0.01s}")
    sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"})
    stack.env["INLOOX_OUTAGE_HOURS"] = "0.002"
    stack.worker()
    web = stack.web()
    sandbox.fault(kind="status", status=503, methods=["POST"], path="^Task$", count=6)

    assert deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_down").status_code == 202

    [run] = wait_until(lambda: runs_in(redis_url, "succeeded"), 30, "the run to wait out InLoox's 503s")
    assert [t["Name"] for t in sandbox.get("Task").json()["value"]] == ["Call Ann"]
    assert len([r for r in sandbox.requests() if r["method"] == "POST" and r["path"] == "Task"]) == 7
    assert run["attempts"] == 0 and "unavailable" not in run

    sandbox.fault(kind="status", status=503, methods=["POST"], path="^Task$")  # down for good
    assert deliver(web, {"title": "Call Bob", "project": PROJECT}, "msg_down_long").status_code == 202
    [failed] = wait_until(lambda: runs_in(redis_url, "failed"), 40, "the run to give up on InLoox")
    assert failed["reason"].startswith("InLoox unavailable for ") and "503" in failed["reason"], failed["reason"]
    assert failed["attempts"] == 0
    assert [t["Name"] for t in sandbox.get("Task").json()["value"]] == ["Call Ann"]


def test_a_retry_after_beyond_reason_from_inloox_is_honoured_up_to_an_hour(stack, sandbox, rules_dir, redis_url):
    """A hostile or broken InLoox answers 429 with Retry-After: 1e300 (seconds). The run is told to wait the
    most we honour (an hour), and says so; it used to fail to schedule its retry at all (timedelta overflowed)."""
    write_form_rule(rules_dir)
    sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"})
    stack.worker()
    web = stack.web()
    sandbox.fault(kind="status", status=429, retry_after=1e300, methods=["POST"], path="^Task$", count=1)

    assert deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_far_future").status_code == 202

    [run] = wait_until(lambda: runs_in(redis_url, "retrying"), 20, "the run to wait for its retry")
    assert run["reason"].endswith("next in 3600.0s"), run["reason"]


def test_runs_waiting_for_a_down_inloox_start_as_soon_as_it_answers_again(stack, sandbox, rules_dir, redis_url):
    """InLoox answers 503 to everything for 20 s. Five runs wait for it (backoff from 0.5 s, doubling: half a minute
    between tries by then, five minutes in a long outage); once it answers, the worker's next look (every 5 s) finds
    it back and starts them at once."""
    write_form_rule(rules_dir, "retry: {backoff: 0.5s}")
    sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"})
    stack.worker()
    web = stack.web()
    sandbox.fault(kind="status", status=503)  # every request, the worker's question whether it is back too
    began = time.monotonic()
    for n in range(5):
        assert deliver(web, {"title": f"Waiting {n}", "project": PROJECT}, f"msg_waiting_{n}").status_code == 202
    while time.monotonic() < began + 20:  # the outage's length (not a wait for a condition)
        time.sleep(0.5)
    assert not runs_in(redis_url, "succeeded") and len(runs_in(redis_url, "retrying")) == 5

    sandbox.clear_faults()
    wait_until(lambda: len(runs_in(redis_url, "succeeded")) == 5, 10, "the waiting runs, started once InLoox answers")
    names = [t["Name"] for t in sandbox.get("Task").json()["value"]]
    assert sorted(names) == [f"Waiting {n}" for n in range(5)]


def test_runs_waiting_for_a_down_inloox_start_once_it_answers_though_the_worker_that_parked_them_stopped(
        stack, sandbox, rules_dir, redis_url):
    """A deploy during an InLoox outage: the worker whose runs met InLoox down is stopped and another starts. The new
    worker learns from Redis that runs wait for that InLoox, asks it every few seconds, and starts them once it
    answers, not at the end of their backoff (here up to 10 minutes: the rule's 5 minutes, doubled)."""
    write_form_rule(rules_dir, "retry: {backoff: 300s}")
    sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"})
    first = stack.worker("first")
    web = stack.web()
    sandbox.fault(kind="status", status=503)  # every request, the workers' questions whether it is back too
    for n in range(5):
        assert deliver(web, {"title": f"Parked {n}", "project": PROJECT}, f"msg_parked_{n}").status_code == 202
    wait_until(lambda: len(runs_in(redis_url, "retrying")) == 5, 20, "the runs to wait for InLoox")
    first.stop()
    stack.worker("second")
    time.sleep(6)  # the second worker's first looks meet InLoox still down (not a wait for a condition)
    assert not runs_in(redis_url, "succeeded")

    sandbox.clear_faults()
    wait_until(lambda: len(runs_in(redis_url, "succeeded")) == 5, 15, "the waiting runs, started once InLoox answers")
    names = [t["Name"] for t in sandbox.get("Task").json()["value"]]
    assert sorted(names) == [f"Parked {n}" for n in range(5)]


# A key and a filter value from the sender: what InLoox would be asked is checked before anything is sent.
FORM_TO_TASK_BY_KEY = """
id: rename-by-key
when:
  - webhook: forms
then:
  - inloox.update: Task
    key: "{{ webhook.body.task }}"
    values:
      Name: "{{ webhook.body.title }}"
"""


def test_a_key_from_the_sender_that_is_no_guid_fails_its_run_and_the_next_event_runs(stack, sandbox, rules_dir,
                                                                                       redis_url):
    # The client refuses such a key before sending (inloox/query.py) with a ValueError, which no step caught: the
    # run stayed queued, its event was handled again and again, and no trace said why.
    (rules_dir / "rename.yaml").write_text(FORM_TO_TASK_BY_KEY)
    sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"})
    task = sandbox.post("Task", json={"Name": "Call Ann", "ProjectId": PROJECT}).json()["TaskItemId"]
    stack.worker()
    web = stack.web()
    assert deliver(web, {"task": "1) or (1 eq 1", "title": "Renamed by mistake"}, "msg_bad_key").status_code == 202
    [failed] = wait_until(lambda: runs_in(redis_url, "failed"), 30, "the run with the bad key to fail")
    assert "not sent: not a GUID" in failed["reason"], failed["reason"]
    assert deliver(web, {"task": task, "title": "Call Ann back"}, "msg_good_key").status_code == 202
    wait_until(lambda: runs_in(redis_url, "succeeded"), 30, "the next event's run")
    assert [t["Name"] for t in sandbox.get("Task").json()["value"]] == ["Call Ann back"]
    assert [r["status"] for r in all_runs(redis_url)] == ["failed", "succeeded"]


# A number that is no number (NaN: not JSON, though Python's parser takes it) from the sender, in a write's values.
# The first read of the task fails once, so that the run's next attempt is executed from its stored record.
COLOUR_FROM_FORM = """
id: colour-from-form
when:
  - webhook: forms
retry: {attempts: 3, backoff: 1s}
then:
  - id: task
    inloox.get: Task
    key: "{{ webhook.body.task }}"
  - inloox.update: Task
    key: "{{ webhook.body.task }}"
    values:
      CustomColor: "COLOUR"
"""


@pytest.mark.parametrize("colour, sent", [("{{ webhook.body.color }}", float("nan")),
                                          ("{{ webhook.body.color | float }}", "nan")], ids=["in the body", "rendered"])
def test_a_number_that_is_no_number_is_refused_and_never_written_as_null(stack, sandbox, rules_dir, redis_url,
                                                                          colour, sent):
    # A run record is written by orjson, which writes NaN as null: the attempt executed from the record PATCHed
    # CustomColor null over the task's 3, a write nobody asked for.
    (rules_dir / "colour.yaml").write_text(COLOUR_FROM_FORM.replace("COLOUR", colour))
    sandbox.post("Project", json={"ProjectId": PROJECT, "Name": "Relaunch"})
    task = sandbox.post("Task", json={"Name": "Call Ann", "ProjectId": PROJECT, "CustomColor": 3}).json()["TaskItemId"]
    sandbox.fault(kind="status", status=500, count=1, methods=["GET"], path=r"^Task\(")
    stack.worker()
    answer = deliver(stack.web(), {"task": task, "color": sent}, "msg_nan")
    if answer.status_code == 202:
        wait_until(lambda: (r := all_runs(redis_url)) and r[0]["status"] in ("succeeded", "failed") and r, 60,
                   "the run to end")
    assert [t["CustomColor"] for t in sandbox.get("Task").json()["value"]] == [3]
    if isinstance(sent, float):  # not JSON (RFC 8259 has no NaN): refused at the edge, naming it
        assert answer.status_code == 400 and "NaN is not a JSON value" in answer.text, answer.text
    else:  # a template made it: the run fails, saying which step rendered what
        [failed] = runs_in(redis_url, "failed")
        assert "rendered nan, which is not a JSON number" in failed["reason"], failed["reason"]


FORM_TO_TASK_BY_NUMBER = """
id: task-by-number
when:
  - webhook: forms
then:
  - id: project
    inloox.query: Project
    filter: "Number eq {{ webhook.body.number | string | odata }}"
    select: [ProjectId]
    top: 1
  - inloox.create: Task
    values:
      Name: "{{ webhook.body.title }}"
      ProjectId: "{{ steps.project.value[0].ProjectId }}"
"""


def test_a_query_that_found_nothing_fails_the_next_step_saying_so_once(stack, sandbox, rules_dir, redis_url):
    # The reason read "step 1 (step1): rule task-by-number step 1 (step1): steps.project.value.0 is undefined in …":
    # the step twice, and nothing about the empty answer.
    (rules_dir / "by-number.yaml").write_text(FORM_TO_TASK_BY_NUMBER)
    stack.worker()
    assert deliver(stack.web(), {"number": "9999_0001", "title": "Nowhere"}, "msg_nowhere").status_code == 202
    [failed] = wait_until(lambda: runs_in(redis_url, "failed"), 30, "the run to fail")
    assert failed["reason"] == ("step 1 (step1): steps.project.value.0 is undefined in "
                                "'{{ steps.project.value[0].ProjectId }}': steps.project.value is an empty list "
                                "(did its query find nothing?)"), failed["reason"]
