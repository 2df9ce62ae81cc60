"""Runs as a user sees them: the runs API and `flask runs`, failures kept, retries, shadow mode, pauses."""
from __future__ import annotations

import json

import pytest

from app import create_app
from tests.support.processes import wait_until
from tests.support.stack import PROJECT, deliver, ensure_project, failed_form_run, runs_in, write_form_rule


@pytest.fixture
def api(redis_url, sandbox):
    """The app in-process (the runs API reads only Redis), with an admin token."""
    app = create_app({"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url, "INLOOX_API_KEY": sandbox.token,
                      "ADMIN_TOKEN": "admin-secret"})
    return app


def get(api, path):
    return api.test_client().get(path, headers={"Authorization": "Bearer admin-secret"})


def test_a_failed_run_keeps_the_request_and_the_inloox_error_and_retries_from_that_step(
        stack, sandbox, rules_dir, redis_url, api):
    write_form_rule(rules_dir)

    _, failed = failed_form_run(stack, sandbox, redis_url, "msg_fail")

    listed = get(api, "/runs?status=failed").json["runs"]
    assert [r["id"] for r in listed] == [failed["id"]]
    shown = get(api, f"/runs/{failed['id']}").json
    [step] = shown["run"]["steps"]
    assert step["status"] == "error" and "400" in step["error"]
    assert step["request"]["values"]["Name"] == "Call Ann"
    assert [r["rule"] for r in shown["trace"]["rules"] if r["matched"]] == ["form-to-task"]
    assert sandbox.count("Task") == 0

    shown = api.test_cli_runner().invoke(args=["runs", "show", failed["id"]])  # for people: a few lines
    assert shown.exit_code == 0 and len(shown.output.splitlines()) <= 6, shown.output
    assert f"{failed['id']}  form-to-task  failed" in shown.output
    assert "create Task → error" in shown.output and "Call Ann" in shown.output and "400" in shown.output
    whole = api.test_cli_runner().invoke(args=["runs", "show", failed["id"], "--json"])
    assert json.loads(whole.output)["run"]["steps"][0]["request"]["values"]["Name"] == "Call Ann"

    result = api.test_cli_runner().invoke(args=["runs", "retry", failed["id"]])
    assert result.exit_code == 0, result.output
    wait_until(lambda: runs_in(redis_url, "succeeded"), 40, "the retried run to succeed")
    assert sandbox.count("Task") == 1


def test_a_shadow_rule_records_what_it_would_write_and_writes_nothing(stack, sandbox, rules_dir, redis_url, api):
    write_form_rule(rules_dir, "mode: shadow")
    ensure_project(sandbox)
    stack.worker()
    web = stack.web()
    sandbox.clear_requests()

    deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_shadow")

    [run] = wait_until(lambda: runs_in(redis_url, "shadow"), 40, "the shadow run")
    [operation] = run["plan"]["operations"]
    assert operation["verb"] == "create"
    assert operation["params"] == {"entity_set": "Task", "values": {"Name": "Call Ann", "ProjectId": PROJECT,
                                                                      "WorkAmount": 1}}
    assert [r for r in sandbox.requests() if r["method"] != "GET"] == []


def test_a_refused_token_pauses_the_account_until_resumed(stack, sandbox, rules_dir, redis_url, api):
    write_form_rule(rules_dir)
    ensure_project(sandbox)
    stack.worker()
    web = stack.web()
    sandbox.fault(kind="status", status=401, methods=["POST"], path="^Task$")

    deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_401")

    [run] = wait_until(lambda: runs_in(redis_url, "paused"), 40, "the run to pause")
    assert "refused the token" in run["reason"]
    sandbox.clear_faults()
    result = api.test_cli_runner().invoke(args=["runs", "resume"])
    assert "1 paused run(s) queued again" in result.output
    wait_until(lambda: runs_in(redis_url, "succeeded"), 40, "the resumed run to succeed")
    assert sandbox.count("Task") == 1


def test_the_runs_api_needs_the_admin_token_when_one_is_set(api):
    assert api.test_client().get("/runs").status_code == 401
    assert api.test_client().get("/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert get(api, "/runs").status_code == 200
    assert get(api, "/runs/run_nope").status_code == 404


def test_runs_list_refuses_a_status_runs_never_have(api):
    # `--status done` listed "no runs", as if none had finished; the API answers 400 for it.
    result = api.test_cli_runner().invoke(args=["runs", "list", "--status", "done"])
    assert result.exit_code == 2
    assert "'done' is not one of 'queued', 'held', 'retrying', 'succeeded', 'failed'" in result.output


def test_runs_list_of_a_rule_id_no_rule_has_names_the_closest_ones(redis_url, sandbox, rules_dir):
    # `--rule form-to-tsk` printed "no runs", as if the rule had never run: a typo looked like a quiet rule.
    write_form_rule(rules_dir)
    app = create_app({"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url, "INLOOX_API_KEY": sandbox.token,
                      "RULES_PATH": str(rules_dir)})

    typo = app.test_cli_runner().invoke(args=["runs", "list", "--rule", "form-to-tsk"])
    assert typo.exit_code == 1  # as `runs show` of an unknown run and every other "no such …" of the CLI
    assert typo.output == "Error: no rule 'form-to-tsk' in workspace 'default'; did you mean 'form-to-task'?\n"

    far = app.test_cli_runner().invoke(args=["runs", "list", "--rule", "nope"])
    assert far.exit_code == 1
    assert far.output == "Error: no rule 'nope' in workspace 'default'; `flask rules list` lists its rules\n"

    quiet = app.test_cli_runner().invoke(args=["runs", "list", "--rule", "form-to-task"])  # a rule yet to run
    assert (quiet.exit_code, quiet.output) == (0, "no runs\n")


def test_the_runs_api_and_the_cli_offer_the_same_statuses(api):
    from workers.runs import STATUSES

    spec = get(api, "/openapi.json").json
    [status] = [p for p in spec["paths"]["/runs"]["get"]["parameters"] if p["name"] == "status"]
    assert tuple(status["schema"]["enum"]) == STATUSES


def test_two_retries_of_one_failed_run_at_once_queue_it_once_and_the_second_is_a_409(api, redis_url, sandbox):
    # Each retry read the run, saw it failed and stored it queued: two at once both passed the check, both answered
    # 202 and queued the same job twice (its `retries` counting one), and the later one wrote back the record it read
    # before, over whatever the first one's executor had done meanwhile.
    import threading
    from datetime import datetime, timezone

    import redis

    from engine import Plan
    from workers import workspaces
    from workers.runs import create_run

    connection = redis.Redis.from_url(redis_url)
    for trial in range(10):
        run_id = f"run_twice_{trial}"
        with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token)):
            now = datetime.now(timezone.utc).isoformat()
            create_run(connection, {"id": run_id, "rule_id": "r", "rule_version": "1", "event_id": "e",
                                    "status": "failed", "reason": "InLoox said 400", "created_at": now,
                                    "updated_at": now, "steps": [], "outputs": {}, "attempts": 1,
                                    "plan": Plan(rule_id="r", rule_version="1", event_id="e", event={}).to_dict()})
        together, answers = threading.Barrier(2), []

        def retry():
            client = api.test_client()
            together.wait()
            answers.append(client.post(f"/runs/{run_id}/retry", headers={"Authorization": "Bearer admin-secret"}))

        threads = [threading.Thread(target=retry) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
        shown = api.test_client().get(f"/runs/{run_id}", headers={"Authorization": "Bearer admin-secret"})
        assert (shown.json["run"]["status"], shown.json["run"]["retries"]) == ("queued", 1)
        # Its job queued once: no worker here, and with one its second execution would show nothing a person sees.
        assert connection.lrange("rq:queue:default", 0, -1).count(f"default-{run_id}-r1".encode()) == 1
