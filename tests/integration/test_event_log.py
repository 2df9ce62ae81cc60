"""The event log with real processes: broken rule files, replay at most once per rule, what-if, the dashboard."""
from __future__ import annotations

import json
import logging
import shutil
import time
from datetime import datetime
from pathlib import Path

import pytest
import redis

from tests.support.processes import wait_until
from tests.support.stack import FORM_RULE, PROJECT, all_runs, deliver, ensure_project, runs_in, write_form_rule, write_rule
from workers import eventlog, workspaces

ADMIN = {"Authorization": "Bearer s3cret"}
RULES = Path(__file__).resolve().parents[2] / "rules"


@pytest.fixture
def app(redis_url, sandbox, rules_dir, receiver):
    from app import create_app

    return create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                       "INLOOX_API_KEY": sandbox.token, "RULES_PATH": str(rules_dir), "ADMIN_TOKEN": "s3cret",
                       "INLOOX_REQUESTS_PER_SECOND": "0"})


def _statuses(client) -> list[str]:
    return [e["status"] for e in client.get("/events", headers=ADMIN).get_json()["events"]]


def test_events_for_a_rule_that_never_loaded_are_replayed_once_it_is_fixed(stack, sandbox, rules_dir, redis_url,
                                                                           app, client):
    # A new rule with a typo (`vaules`): it has never been valid, so it is not active.
    write_rule(rules_dir, "forms", FORM_RULE.format(extra="").replace("values:", "vaules:"))
    ensure_project(sandbox)
    stack.worker()
    web = stack.web()
    for n in range(5):
        assert deliver(web, {"title": f"Form {n}", "project": PROJECT}, f"msg_broken_{n}").status_code == 202
    wait_until(lambda: _statuses(client) == ["unmatched"] * 5, 20, "five handled events, none matched")

    listed = client.get("/events?unmatched=1", headers=ADMIN).get_json()["events"]
    assert len(listed) == 5 and all(e["broken_files"] == [{"file": "forms.yaml", "status": "broken"}] for e in listed)
    assert all_runs(redis_url) == []

    write_form_rule(rules_dir)  # fixed
    runner = app.test_cli_runner()
    dry = runner.invoke(args=["events", "replay", "--since", "10m", "--dry-run"])
    assert "would start 5 run(s)" in dry.output, dry.output
    assert all_runs(redis_url) == []

    first = runner.invoke(args=["events", "replay", "--since", "10m"])
    assert first.exit_code == 0 and "5 event(s): 5 started a run, 0 already ran" in first.output, first.output
    wait_until(lambda: len(runs_in(redis_url, "succeeded")) == 5, 30, "the five replayed runs")
    assert sorted(t["Name"] for t in sandbox.get("Task").json()["value"]) == [f"Form {n}" for n in range(5)]

    # Again, over HTTP: every event already ran under this rule, so nothing starts and nothing is written.
    again = client.post("/events/replay", json={"since": "10m"}, headers=ADMIN)
    assert again.status_code == 202 and again.get_json()["started"] == 0 and again.get_json()["already"] == 5
    assert sandbox.count("Task") == 5 and len(all_runs(redis_url)) == 5

    # --force runs a rule again, and its run says it was forced.
    event_id = listed[0]["id"]
    forced = runner.invoke(args=["events", "replay", event_id, "--force"])
    assert "started 1 run(s)" in forced.output, forced.output
    wait_until(lambda: sandbox.count("Task") == 6, 30, "the forced run's task")
    assert [r["forced"]["by"] for r in all_runs(redis_url) if "forced" in r] == ["cli"]

    shown = runner.invoke(args=["events", "show", event_id])
    assert "ran" in shown.output and "replayed" in shown.output and "(forced)" in shown.output, shown.output
    assert '  data: {"payload": {' in shown.output and "payload: {\"payload\"" not in shown.output, shown.output


def test_a_replay_says_what_became_of_every_event_it_lists(stack, sandbox, rules_dir, redis_url, app, client):
    write_form_rule(rules_dir, extra="if: {path: webhook.body.title, op: ne, value: skip me}")
    ensure_project(sandbox)
    worker = stack.worker()
    web = stack.web()
    assert deliver(web, {"title": "Form", "project": PROJECT}, "msg_runs").status_code == 202
    assert deliver(web, {"title": "skip me", "project": PROJECT}, "msg_skipped").status_code == 202
    wait_until(lambda: sorted(_statuses(client)) == ["ran", "unmatched"], 20, "both events handled")
    worker.stop()  # the next event waits for a worker
    waiting = {"id": "webhook:forms:msg_waiting", "source": "webhook", "kind": "forms",
               "occurred_at": "2026-11-30T08:00:00+00:00", "payload": {"body": {"title": "Later", "project": PROJECT}}}
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token, rules_path=str(rules_dir))):
        _log(redis.Redis.from_url(redis_url), waiting)

    dry = app.test_cli_runner().invoke(args=["events", "replay", "--since", "10m", "--dry-run"])

    assert dry.exit_code == 0, dry.output
    lines = dry.output.splitlines()
    assert "webhook:forms:msg_runs  already ran: run_" in dry.output
    assert "webhook:forms:msg_skipped  no rule matches it now" in lines
    assert "webhook:forms:msg_waiting  left alone: waiting: a worker has not finished handling it yet" in lines
    assert lines[-1] == ("3 event(s): 0 would start a run, 1 already ran, 1 matched no rule now, "
                         "1 waiting for a worker, 0 left alone (trace gone); would start 0 run(s)")
    summary = client.post("/events/replay", json={"since": "10m", "dry_run": True}, headers=ADMIN).get_json()
    assert summary["outcomes"] == {"started": 0, "already ran": 1, "no rule matches": 1, "waiting": 1,
                                   "trace gone": 0}
    assert sum(summary["outcomes"].values()) == summary["events"] == 3


def test_a_replay_without_force_starts_nothing_for_a_rule_the_trace_says_ran_though_its_run_was_trimmed(
        stack, sandbox, rules_dir, redis_url, client):
    # Finished runs are kept by count (the newest 10,000), traces by event (the newest 10,000): with two rules per
    # event, or a for_each, a run is trimmed while its event's trace is kept, and its ledger entries went an hour
    # after it succeeded. The replay looked only for the run's record: it started the rule again for the event and
    # created the task a second time, without `force`.
    from workers import ledger
    from workers.runs import load_run, save_run

    write_form_rule(rules_dir)
    ensure_project(sandbox)
    stack.worker()
    web = stack.web()
    assert deliver(web, {"title": "Form", "project": PROJECT}, "msg_trimmed").status_code == 202
    [run] = wait_until(lambda: runs_in(redis_url, "succeeded"), 30, "the run")
    connection = redis.Redis.from_url(redis_url)
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token)):
        save_run(connection, load_run(connection, run["id"]), now=datetime.now().astimezone(), keep=0)  # the trim
        assert load_run(connection, run["id"]) is None
        connection.delete(*[ledger._key(op["idempotency_key"]) for op in run["plan"]["operations"]])  # an hour on

    dry = client.post("/events/replay", json={"events": ["webhook:forms:msg_trimmed"], "dry_run": True}, headers=ADMIN)
    again = client.post("/events/replay", json={"events": ["webhook:forms:msg_trimmed"]}, headers=ADMIN)

    assert dry.get_json()["outcomes"]["already ran"] == 1 and dry.get_json()["started"] == 0, dry.get_json()
    assert again.status_code == 202 and again.get_json()["already"] == 1, again.get_json()
    # A replay stores each run it starts before it answers (workers/replay.py), and only runs write: the answer and the
    # runs list say at once whether it wrote again, no wait for a write needed.
    assert again.get_json()["started"] == 0 and all_runs(redis_url) == []


def test_a_rule_file_that_breaks_keeps_running_its_last_good_version(stack, sandbox, rules_dir, redis_url, app,
                                                                     client):
    write_form_rule(rules_dir)
    ensure_project(sandbox)
    stack.worker()
    web = stack.web()
    assert deliver(web, {"title": "Before", "project": PROJECT}, "msg_before").status_code == 202
    [good_run] = wait_until(lambda: runs_in(redis_url, "succeeded"), 20, "the run under the good file")

    # The person edits the file and breaks it: same rule, an unknown key.
    write_rule(rules_dir, "forms", FORM_RULE.format(extra="").replace("values:", "vaules:").replace("WorkAmount: 1", "WorkAmount: 9"))
    for n in range(2):
        assert deliver(web, {"title": f"While broken {n}", "project": PROJECT}, f"msg_during_{n}").status_code == 202
    wait_until(lambda: len(runs_in(redis_url, "succeeded")) == 3, 20, "both events run at the last good version")
    assert {r["ruleset_version"] for r in all_runs(redis_url)} == {good_run["ruleset_version"]}
    assert sorted(t["Name"] for t in sandbox.get("Task").json()["value"]) == ["Before", "While broken 0", "While broken 1"]

    page = client.get("/ui/rules", headers=ADMIN).get_data(as_text=True)
    assert "forms.yaml" in page and "last good version" in page and "vaules" in page
    ready = client.get("/readyz").get_json()
    [broken] = ready["checks"]["rules"]["broken"]
    assert broken["file"] == "forms.yaml" and broken["running"]
    # Times an API shows are ISO 8601, not epoch seconds.
    assert datetime.fromisoformat(broken["since"]).tzinfo is not None, broken
    assert datetime.fromisoformat(broken["good_since"]) <= datetime.fromisoformat(broken["since"]), broken
    checked = app.test_cli_runner().invoke(args=["rules", "check", str(rules_dir)])
    assert checked.exit_code == 1 and "forms.yaml: broken since" in checked.output
    assert "the stack runs its last good version" in checked.output, checked.output
    metrics = client.get("/metrics", headers=ADMIN).get_data(as_text=True)
    assert 'inloox_automation_rule_file_broken{file="forms.yaml",running="last good",workspace="default"} 1.0' in metrics


def test_whatif_reports_exactly_the_events_whose_outcome_changes(redis_url, sandbox, tmp_path):
    active, candidate = tmp_path / "active", tmp_path / "candidate"
    shutil.copytree(RULES, active, ignore=shutil.ignore_patterns("tests"))
    shutil.copytree(active, candidate)
    rule = candidate / "log-time-when-task-done.yaml"
    rule.write_text(rule.read_text().replace("{path: task.WorkAmount, op: gt, value: 0}",
                                             "{path: task.WorkAmount, op: gt, value: 2}"))
    connection = redis.Redis.from_url(redis_url)
    work = {"done-1h": 1, "done-3h": 3, "done-0h": 0, "done-5h": 5}
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token, rules_path=str(active))):
        for event_id, amount in work.items():
            _log(connection, _task_done(event_id, amount))
        _log(connection, _task_done("renamed", 1, changes={"Name": ["a", "b"]}))

    from app import create_app

    app = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": sandbox.token, "RULES_PATH": str(active)})
    result = app.test_cli_runner().invoke(args=["rules", "whatif", "--rules", str(candidate), "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.output)
    assert report["events"] == 5
    assert report["changed_events"] == ["done-1h"]  # 1 h was booked (> 0) and would no longer be (> 2)
    assert report["rules"] == [{"rule_id": "log-time-when-task-done", "new": 0, "lost": 1, "changed": 0,
                                "examples": {"new": [], "lost": ["done-1h"], "changed": []}}]
    text = app.test_cli_runner().invoke(args=["rules", "whatif", "--rules", str(candidate)]).output
    assert "5 logged event(s); 1 would have another outcome" in text and "0 new match(es), 1 lost" in text


def _task_done(event_id: str, work: float, changes=None) -> dict:
    task = {"TaskItemId": "0f8fad5b-d9cb-469f-a165-70867728950e", "Name": "Write report", "WorkAmount": work,
            "ProjectId": PROJECT, "IsDone": True}
    return {"id": event_id, "source": "inloox", "kind": "updated", "occurred_at": "2026-11-30T08:00:00+00:00",
            "entity_set": "Task", "key": task["TaskItemId"], "changes": changes or {"IsDone": [False, True]},
            "entity": task, "actor": {"ContactId": "someone"}, "payload": {}, "chained": False}


def _log(connection, event: dict) -> None:
    eventlog.append(connection, event, dedup_key=workspaces.key(f"dedup:{event['id']}"), dedup_ttl=60,
                    counted=("a", "b"))


def test_the_dashboard_lists_events_shows_an_events_path_and_replays_it(stack, sandbox, rules_dir, redis_url, client):
    write_rule(rules_dir, "forms", FORM_RULE.format(extra="").replace("values:", "vaules:"))
    ensure_project(sandbox)
    stack.worker()
    web = stack.web()
    assert deliver(web, {"title": "From the page", "project": PROJECT}, "msg_page").status_code == 202
    wait_until(lambda: _statuses(client) == ["unmatched"], 20, "the event, handled and unmatched")

    listing = client.get("/ui/events?unmatched=1", headers=ADMIN).get_data(as_text=True)
    assert "webhook:forms:msg_page" in listing and "unmatched" in listing and "while forms.yaml was broken" in listing
    write_form_rule(rules_dir)
    page = client.get("/ui/events/webhook:forms:msg_page", headers=ADMIN).get_data(as_text=True)
    assert "Replay against the current rules" in page and "no rule listens to this kind of event" in page

    answer = client.post("/ui/events/replay", data={"event": "webhook:forms:msg_page"}, headers=ADMIN)
    assert answer.status_code == 302 and "started+1+run" in answer.headers["Location"].replace("%20", "+")
    wait_until(lambda: runs_in(redis_url, "succeeded"), 20, "the replayed run")
    page = client.get("/ui/events/webhook:forms:msg_page", headers=ADMIN).get_data(as_text=True)
    assert "form-to-task" in page and "succeeded" in page and "Replayed" in page
    again = client.post("/ui/events/replay", data={"event": "webhook:forms:msg_page"}, headers=ADMIN)
    assert "1+already+ran" in again.headers["Location"].replace("%20", "+")
    assert sandbox.count("Task") == 1


def test_the_dashboard_compares_an_uploaded_bundle_version_with_the_active_one(redis_url, sandbox):
    from app import create_app
    from workers.workspaces import Workspace

    globex = Workspace("globex", sandbox.base_url, sandbox.token, admin_token="g")
    app = create_app({"TESTING": True, "REDIS_URL": redis_url, "WORKSPACES": {"globex": globex}})
    api, admin = app.test_client(), {"Authorization": "Bearer g"}
    rule = FORM_RULE.format(extra="")
    assert api.put("/workspaces/globex/rules", json={"files": {"forms.yaml": rule}}, headers=admin).status_code == 201
    candidate = rule.replace("when:", "if:\n  - {path: webhook.body.title, op: ne, value: skip}\nwhen:")
    assert api.put("/workspaces/globex/rules", json={"files": {"forms.yaml": candidate}}, headers=admin).status_code == 201
    assert api.post("/workspaces/globex/rules/versions/1/activate", headers=admin).status_code == 200
    connection = redis.Redis.from_url(redis_url)
    with workspaces.using(globex):
        for n, title in enumerate(["keep", "skip", "keep too"]):
            _log(connection, {"id": f"form-{n}", "source": "webhook", "kind": "forms",
                              "occurred_at": "2026-11-30T08:00:00+00:00",
                              "payload": {"body": {"title": title, "project": PROJECT}, "headers": {}}})

    page = api.get("/workspaces/globex/ui/whatif?version=2", headers=admin).get_data(as_text=True)
    assert "3 logged event(s); 1 would have another outcome" in page
    assert 'data-rule="form-to-task"' in page and "form-1" in page and "(lost)" in page


def test_events_show_prints_an_event_with_odd_characters_and_its_handling_error(redis_url, sandbox, app):
    from workers.recovery import record_unhandled

    odd = {"id": "webhook:forms:msg_odd", "source": "webhook", "kind": "forms", "occurred_at": "2026-11-30T08:00:00+00:00",
           "payload": {"body": {"title": "half \ud83d a pair", "note": "red \x1b[31malert\x1b[0m\r\nbell \x07",
                                "flip": "\u202eevil"}}}
    workspace = workspaces.Workspace("default", sandbox.base_url, sandbox.token)
    connection = redis.Redis.from_url(redis_url)
    with workspaces.using(workspace):
        _log(connection, odd)
    record_unhandled(connection, workspace, odd, "poison \x1b[2J event: \ud800 no worker could handle it")

    shown = app.test_cli_runner().invoke(args=["events", "show", "webhook:forms:msg_odd"])

    assert shown.exit_code == 0, shown.output
    assert "error: poison \\x1b[2J event: \\ud800 no worker could handle it" in shown.output
    assert "half \\ud83d a pair" in shown.output and "\\u202eevil" in shown.output
    assert not any(ch in shown.output for ch in "\x1b\x07\r\u202e")
    as_json = app.test_cli_runner().invoke(args=["events", "show", "webhook:forms:msg_odd", "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.output)["trace"]["error"].startswith("poison")
    listed = app.test_cli_runner().invoke(args=["events", "list"])
    assert listed.exit_code == 0 and "webhook:forms:msg_odd" in listed.output


def test_a_replay_naming_many_old_events_reads_the_log_once_not_once_for_each(redis_url, app, client):
    # The log keeps ten times more events than traces: an older event is found by reading the log, newest
    # first. Naming 100 of them read the log 100 times over on a web thread (about 0.9 s each at the log's
    # 100,000 entries), and looked at the workers' pending list once for each, before any limit applied.
    connection = redis.Redis.from_url(redis_url)
    with workspaces.using(workspaces.Workspace("default", "http://unused", "unused")):
        stream = eventlog.stream_key()
        with connection.pipeline(transaction=False) as pipe:
            for n in range(20_000):
                pipe.xadd(stream, {"z": eventlog.encode(_task_done(f"old-{n}", 1.0))})
            pipe.execute()
        eventlog.ensure_group(connection, stream)
    named = [f"old-{n}" for n in range(100)] * 2  # the oldest, and each twice: one replay each, in log order

    before, started = _log_reads(connection), time.monotonic()
    answer = client.post("/events/replay", json={"events": named, "dry_run": True}, headers=ADMIN)
    reads, took = _log_reads(connection) - before, time.monotonic() - started

    assert reads <= 20_000 // 1000 + 5, f"{reads} reads of the log and its pending list in {took:.1f} s"
    assert answer.status_code == 200 and answer.get_json()["events"] == 100, answer.text[:300]
    assert [d["event_id"] for d in answer.get_json()["replayed"]] == named[:100]
    too_many = client.post("/events/replay", json={"events": [f"e{n}" for n in range(10_001)]}, headers=ADMIN)
    assert too_many.status_code == 422 and "at most 10000" in too_many.get_json()["error"]["message"]


def _log_reads(connection) -> int:
    """Commands that read the event log or its pending list, counted by the server so far."""
    stats = connection.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("xrange", "xrevrange", "xpending"))


def _large_what_if(redis_url, sandbox, *, events: int):
    """A workspace (globex) whose version 2, 300 rules, is compared with its active one over `events` logged events:
    more than the page's planning time takes. Returns its dashboard's client, the admin's header and the workspace."""
    from app import create_app
    from workers.workspaces import Workspace

    globex = Workspace("globex", sandbox.base_url, sandbox.token, admin_token="g")
    app = create_app({"TESTING": True, "REDIS_URL": redis_url, "WORKSPACES": {"globex": globex}})
    api, admin = app.test_client(), {"Authorization": "Bearer g"}
    rule = FORM_RULE.format(extra="")
    large = "".join("---\n" + rule.replace("id: form-to-task", f"id: form-{n}") for n in range(300))
    assert api.put("/workspaces/globex/rules", json={"files": {"forms.yaml": rule}}, headers=admin).status_code == 201
    assert api.put("/workspaces/globex/rules", json={"files": {"forms.yaml": large}}, headers=admin).status_code == 201
    assert api.post("/workspaces/globex/rules/versions/1/activate", headers=admin).status_code == 200
    connection = redis.Redis.from_url(redis_url)
    with workspaces.using(globex), connection.pipeline(transaction=False) as pipe:
        for n in range(events):
            pipe.xadd(eventlog.stream_key(), {"z": eventlog.encode(
                {"id": f"form-{n}", "source": "webhook", "kind": "forms", "occurred_at": "2026-11-30T08:00:00+00:00",
                 "payload": {"body": {"title": f"Form {n}", "project": PROJECT}, "headers": {}}})})
        pipe.execute()
    return api, admin, globex


def test_the_what_if_page_of_a_large_bundle_answers_in_seconds_and_says_how_many_events_it_compared(redis_url,
                                                                                                  sandbox):
    # Each event is planned against every rule of both versions on a web thread: 300 rules against 4,000
    # logged events held it (and most of its process's CPU, which answers other workspaces' webhooks) for
    # 50 s; a 1 MiB bundle (some 5,000 rules) against the 10,000 events the page takes, for hours.
    api, admin, _ = _large_what_if(redis_url, sandbox, events=4000)

    started = time.monotonic()
    page = api.get("/workspaces/globex/ui/whatif?version=2", headers=admin).get_data(as_text=True)
    took = time.monotonic() - started

    assert took < 20, f"the what-if page answered after {took:.0f} s"
    compared = int(page.split("Compared the oldest ")[1].split()[0])
    assert 0 < compared < 4000 and "of the 4000 logged events" in page, page


def test_the_what_if_page_counts_the_events_it_did_not_compare_without_decoding_them(redis_url, sandbox, caplog):
    # The events the child had no time for were read on and decoded only to be counted (~2.3 s of the web's CPU
    # for 10,000 webhook bodies): a damaged one among them was left out of the count, with an error logged at every
    # look at the page. The log holds it (the events page lists it), and counting it needs no decoding.
    api, admin, globex = _large_what_if(redis_url, sandbox, events=4000)
    with workspaces.using(globex):
        damaged = eventlog.as_text(redis.Redis.from_url(redis_url).xadd(eventlog.stream_key(), {"z": b"not zlib"}))
    caplog.set_level(logging.ERROR, logger="workers.eventlog")

    page = api.get("/workspaces/globex/ui/whatif?version=2", headers=admin).get_data(as_text=True)

    compared = int(page.split("Compared the oldest ")[1].split()[0])
    assert 0 < compared < 4000 and "of the 4001 logged events" in page, page
    assert not [r.getMessage() for r in caplog.records if damaged in r.getMessage()]


def test_a_replay_since_a_time_with_too_many_events_is_refused_after_reading_one_more_than_it_takes(redis_url, app,
                                                                                                    client):
    # A replay takes at most MAX_EVENTS (10,000) events. By a time on a busy workspace, the log was read
    # and decoded up to its 100,000 entries (~1.7 s of a shared web thread) before the replay refused.
    from workers.replay import MAX_EVENTS

    connection = redis.Redis.from_url(redis_url)
    with workspaces.using(workspaces.Workspace("default", "http://unused", "unused")):
        stream = eventlog.stream_key()
        with connection.pipeline(transaction=False) as pipe:
            for n in range(2 * MAX_EVENTS):
                pipe.xadd(stream, {"z": eventlog.encode(_task_done(f"busy-{n}", 1.0))})
            pipe.execute()

    before = _log_reads(connection)
    answer = client.post("/events/replay", json={"since": "7d", "dry_run": True}, headers=ADMIN)
    reads = _log_reads(connection) - before

    assert answer.status_code == 422 and "at most 10000" in answer.get_json()["error"]["message"], answer.text[:300]
    assert reads <= MAX_EVENTS // 1000 + 2, f"{reads} reads of the log for a replay it refused"


def test_an_entry_that_cannot_be_read_is_shown_as_such_and_left_out_of_every_replay_of_the_log(redis_url, app, client):
    """One entry of the log no web of ours wrote (damaged, or not an event) failed every read of the log that met it:
    the events list, the dashboard's events page, an event's own page and replays answered 500 for as long as it was
    kept. The pages show it as a stand-in (`damaged:<entry>`, waiting until a worker gives up on it and keeps a trace
    that says why); replays leave it out; the events beside it are listed and replayed."""
    connection = redis.Redis.from_url(redis_url)
    with workspaces.using(workspaces.Workspace("default", "http://unused", "unused")):
        _log(connection, _task_done("before", 1.0))
        stream = eventlog.stream_key()
        damaged = [connection.xadd(stream, fields).decode() for fields in (
            {"z": b"not zlib"}, {"x": b"no z at all"}, {"z": eventlog.runs.compress_small(b"[1, 2]")})]
        _log(connection, _task_done("after", 1.0))

    listed = client.get("/events", headers=ADMIN)
    assert listed.status_code == 200
    assert [e["id"] for e in listed.get_json()["events"]] == ["after"] + [f"damaged:{d}" for d in damaged[::-1]] + [
        "before"]
    assert {e["status"] for e in listed.get_json()["events"] if e["id"].startswith("damaged:")} == {"waiting"}
    assert client.get("/ui/events", headers=ADMIN).status_code == 200
    assert client.get("/events/after", headers=ADMIN).status_code == 200
    shown = [client.get(f"/events/{entry}", headers=ADMIN) for entry in damaged]
    assert [(a.status_code, a.get_json()["event"]["source"]) for a in shown] == [(200, "damaged")] * 3
    assert client.get(f"/events/damaged:{damaged[0]}", headers=ADMIN).status_code == 200  # as the events page links it
    replay = client.post("/events/replay", json={"since": "10m", "dry_run": True}, headers=ADMIN)
    assert replay.status_code == 200 and replay.get_json()["events"] == 2, replay.text[:300]
    named = client.post("/events/replay", json={"events": ["before"], "dry_run": True}, headers=ADMIN)
    assert named.status_code == 200 and named.get_json()["events"] == 1, named.text[:300]


def _fill_log(connection, count: int, *, webhooks_at: tuple[int, ...] = ()) -> None:
    """`count` InLoox events (`old-<n>`, oldest first), those numbered `webhooks_at` a form's webhook instead."""
    with workspaces.using(workspaces.Workspace("default", "http://unused", "unused")):
        stream = eventlog.stream_key()
        with connection.pipeline(transaction=False) as pipe:
            for n in range(count):
                event = _task_done(f"old-{n}", 1.0)
                if n in webhooks_at:
                    event = {"id": f"form-{n}", "source": "webhook", "kind": "forms", "occurred_at": "2026-11-30",
                             "payload": {"body": {"title": f"Form {n}"}, "headers": {}}}
                pipe.xadd(stream, {"z": eventlog.encode(event)})
            pipe.execute()
        eventlog.ensure_group(connection, stream)


def test_a_filtered_listing_of_a_large_log_answers_what_it_found_in_part_of_it_and_how_to_go_on(redis_url, app,
                                                                                                client):
    # A listing whose filters match few events read up to the log's 100,000 entries (~1.2 s of CPU) on a web thread;
    # a few at once held the GIL of the process that acknowledges every workspace's webhooks. Now one request reads
    # a bounded part of the log and hands back a cursor, as Temporal's and n8n's listings do.
    from workers.event_history import SCAN_PER_REQUEST

    connection = redis.Redis.from_url(redis_url)
    count = 2 * SCAN_PER_REQUEST + 1000
    _fill_log(connection, count, webhooks_at=(0, SCAN_PER_REQUEST + 500, count - 1))

    before = _log_reads(connection)
    first = client.get("/events?source=webhook", headers=ADMIN)
    reads = _log_reads(connection) - before

    assert first.status_code == 200, first.text[:300]
    assert [e["id"] for e in first.json["events"]] == [f"form-{count - 1}"]
    assert reads <= SCAN_PER_REQUEST // 200 + 3, f"{reads} reads of the log for one listing"
    note = first.json["note"]
    assert f"looked at {SCAN_PER_REQUEST:,} entries of the log" in note and "found 1 that match" in note, note
    assert f"before={first.json['next']}" in note, note
    listed, answer = [], first
    while answer.json["next"] is not None:
        listed += [e["id"] for e in answer.json["events"]]
        answer = client.get(f"/events?source=webhook&before={answer.json['next']}", headers=ADMIN)
        assert answer.status_code == 200, answer.text[:300]
    assert listed + [e["id"] for e in answer.json["events"]] == [f"form-{count - 1}", f"form-{SCAN_PER_REQUEST + 500}",
                                                                 "form-0"]
    assert "note" not in answer.json  # the log's end: nothing older left to look at


def test_pages_of_a_listing_follow_each_other_without_gap_or_repeat(redis_url, app, client):
    connection = redis.Redis.from_url(redis_url)
    _fill_log(connection, 25)

    pages = [client.get("/events?limit=10", headers=ADMIN).json]
    while pages[-1]["next"] is not None:
        pages.append(client.get(f"/events?limit=10&before={pages[-1]['next']}", headers=ADMIN).json)

    assert [e["id"] for p in pages for e in p["events"]] == [f"old-{n}" for n in reversed(range(25))]
    assert all("note" not in p for p in pages)
    refused = client.get("/events?before=yesterday", headers=ADMIN)
    assert refused.status_code == 400 and "pass the next of the listing" in refused.json["error"]["message"]


def test_looking_up_an_event_the_newest_entries_do_not_hold_takes_a_heavy_requests_turn(redis_url, app, client):
    # An id no trace places (unknown, waiting, or its trace trimmed) was looked for in the whole log on any web
    # thread, however many at once: ~1.2 s of CPU each at the log's 100,000 entries.
    from workers.event_history import SCAN_PER_REQUEST

    connection = redis.Redis.from_url(redis_url)
    _fill_log(connection, SCAN_PER_REQUEST + 1000)
    connection.set("ws:default:heavy", "another request's", ex=60)  # the workspace's heavy turn, taken

    before = _log_reads(connection)
    unknown = client.get("/events/no-such-event", headers=ADMIN)
    old = client.get("/events/old-0", headers=ADMIN)
    reads = _log_reads(connection) - before
    recent = client.get(f"/events/old-{SCAN_PER_REQUEST + 999}", headers=ADMIN)

    for busy in (unknown, old):
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "10", busy.text[:300]
        assert "has a replay" in busy.json["error"]["message"] and ("search of the whole event log or a first compile "
                                                                    "of a rule bundle in progress") in \
            busy.json["error"]["message"], busy.json
    assert reads <= 2 * (SCAN_PER_REQUEST // 1000 + 2), f"{reads} reads of the log for two refused look-ups"
    assert recent.status_code == 200 and recent.json["event"]["id"] == f"old-{SCAN_PER_REQUEST + 999}"
    connection.delete("ws:default:heavy")
    assert client.get("/events/old-0", headers=ADMIN).json["event"]["id"] == "old-0"
    missing = client.get("/events/no-such-event", headers=ADMIN)
    assert missing.status_code == 404 and "no event no-such-event in the event log" in missing.json["error"]["message"]


def test_the_dashboards_event_pages_read_a_bounded_part_of_a_large_log_and_link_to_older_events(redis_url, app,
                                                                                                client):
    # The dashboard lists and looks up events in the same web process as the API: the same bounds apply.
    from workers.event_history import SCAN_PER_REQUEST

    connection = redis.Redis.from_url(redis_url)
    _fill_log(connection, SCAN_PER_REQUEST + 1000, webhooks_at=(0, SCAN_PER_REQUEST + 999))
    connection.set("ws:default:heavy", "another request's", ex=60)

    before = _log_reads(connection)
    first = client.get("/ui/events?source=webhook", headers=ADMIN)
    looked_up = client.get("/ui/events/no-such-event", headers=ADMIN)
    reads = _log_reads(connection) - before

    assert first.status_code == 200 and f"form-{SCAN_PER_REQUEST + 999}" in first.text and "form-0<" not in first.text
    assert f"Looked at {SCAN_PER_REQUEST:,} entries of the log" in first.text, first.text
    older = first.text.split('<a id="older" href="')[1].split('"')[0].replace("&amp;", "&")
    second = client.get(older, headers=ADMIN)
    assert second.status_code == 200 and "form-0<" in second.text and "Looked at" not in second.text
    assert looked_up.status_code == 429 and "search of the whole event log or a first compile" in looked_up.text
    assert reads <= SCAN_PER_REQUEST // 200 + SCAN_PER_REQUEST // 1000 + 5, f"{reads} reads of the log"
