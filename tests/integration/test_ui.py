"""The dashboard under /ui with Flask's test client: pages render, filters work, retry changes a run."""
from __future__ import annotations


import html
import json
import re
import time
from datetime import datetime, timezone

import pytest
import redis
from standardwebhooks.webhooks import Webhook

from app import create_app
from inloox import Client
from inloox.changes import change_feed
from workers import workspaces
from workers.enqueue import queue_run
from workers.poller.poll import PollSettings, poll_once
from tests.support.bundled import (HELLO, LARGE, OPERATOR as BUNDLED_OPERATOR, bundled_app, compiled_from,
                                   heavy_turn_held, large_bundle, upload)
from tests.support.processes import wait_until
from tests.support.stack import (ENGINE_TOKEN, PROJECT, WATCH_RULE, WEBHOOK_SECRET, deliver, ensure_project,
                                 failed_form_run, make_task, runs_in, write_form_rule, write_rule)

ADMIN = "admin-secret-token"


@pytest.fixture
def dashboard(redis_url, sandbox, rules_dir):
    """The app in-process with an admin token; its client is logged in."""
    write_form_rule(rules_dir)
    app = create_app({"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url, "INLOOX_API_KEY": ENGINE_TOKEN,
                      "RULES_PATH": str(rules_dir), "ADMIN_TOKEN": ADMIN,
                      "WEBHOOK_SOURCES": {"forms": [WEBHOOK_SECRET]}})
    client = app.test_client()
    assert client.post("/ui/login", data={"token": ADMIN}).status_code == 302
    return client


def page(client, path) -> str:
    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    text = response.get_data(as_text=True)
    for secret in (ADMIN, ENGINE_TOKEN, WEBHOOK_SECRET):
        assert secret not in text
    return text


def test_pages_need_the_admin_token(redis_url, sandbox, rules_dir):
    app = create_app({"REDIS_URL": redis_url, "RULES_PATH": str(rules_dir), "ADMIN_TOKEN": ADMIN})
    client = app.test_client()
    assert client.get("/ui/rules").status_code == 302
    assert client.post("/ui/runs/run_x/retry").status_code == 401
    assert client.post("/ui/login", data={"token": "wrong"}).status_code == 401
    assert client.get("/ui/rules", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    response = client.post("/ui/login", data={"token": ADMIN})
    assert ADMIN not in response.headers["Set-Cookie"]
    assert client.get("/ui/rules").status_code == 200


def test_the_dashboard_answers_with_or_without_a_trailing_slash_and_has_no_404_favicon(dashboard):
    assert dashboard.get("/ui/").headers["Location"].endswith("/ui/overview")
    assert dashboard.get("/ui").status_code == 302  # to the overview, or to the login (its cookie is /ui/'s)
    assert dashboard.get("/favicon.ico").status_code == 204


def test_the_rules_page_shows_state_and_the_errors_of_broken_files(dashboard, rules_dir, redis_url):
    (rules_dir / "broken.yaml").write_text("id: broken\nwhen: []\nthen: nonsense\n")
    redis.Redis.from_url(redis_url).set("ws:default:rule:paused:form-to-task", "ran too often")

    text = page(dashboard, "/ui/rules")
    assert "form-to-task" in text and "paused" in text and "ran too often" in text
    assert "broken.yaml" in text
    page(dashboard, "/ui/poller")


def test_runs_filter_and_a_retry_button_runs_a_failed_run_again(dashboard, stack, sandbox, redis_url):
    web, failed = failed_form_run(stack, sandbox, redis_url, "msg_ui_1")
    deliver(web, {"title": "Call Bo", "project": PROJECT}, "msg_ui_2")
    [ok] = wait_until(lambda: runs_in(redis_url, "succeeded"), 20, "the second run")

    listed = page(dashboard, "/ui/runs?status=failed")
    assert failed["id"] in listed and ok["id"] not in listed
    assert ok["id"] in page(dashboard, "/ui/runs?rule=form-to-task&source=webhook&hours=1")
    assert "No runs match" in page(dashboard, "/ui/runs?source=inloox")

    shown = page(dashboard, f"/ui/runs/{failed['id']}")
    assert "400" in shown and "Call Ann" in shown and "retry-failed-step" in shown

    response = dashboard.post(f"/ui/runs/{failed['id']}/retry", follow_redirects=True)
    assert "Queued again." in response.get_data(as_text=True)
    wait_until(lambda: len(runs_in(redis_url, "succeeded")) == 2, 20, "the retried run to succeed")
    assert 'id="status" class="status-succeeded"' in page(dashboard, f"/ui/runs/{failed['id']}")
    assert sandbox.count("Task") == 2


@pytest.mark.parametrize("hours", ["inf", "1e300", "1e12", "1e8", "-inf", "nan"])
def test_more_hours_than_the_clock_holds_lists_every_run(dashboard, stack, sandbox, redis_url, hours):
    # `?hours=inf` (or 1e300, past timedelta's 999,999,999 days, or 1e8, before year 1) made the runs page a 500.
    ensure_project(sandbox)
    stack.worker()
    deliver(stack.web(), {"title": "Call Bo", "project": PROJECT}, "msg_ui_hours")
    [ok] = wait_until(lambda: runs_in(redis_url, "succeeded"), 20, "the run")
    assert ok["id"] in page(dashboard, f"/ui/runs?hours={hours}")


def test_rq_dashboard_shows_the_queued_job_to_the_admin_only(dashboard, redis_url, sandbox, rules_dir):
    # Events go to the event log, not RQ; RQ carries run jobs such as a retry (queued as retry_run does).
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token)):
        queue_run(redis.Redis.from_url(redis_url), {"id": "run_rq", "plan": {}}, job_id="run_rq-r1")

    assert "<title>RQ dashboard</title>" in page(dashboard, "/ui/rq/")  # its lists come as JSON
    [icon] = re.findall(r'<link rel="shortcut icon" href="([^"]+)"', page(dashboard, "/ui/rq/"))
    assert dashboard.get(icon).status_code == 204, icon  # its icon link was a 404 on every page of it
    [queue] = dashboard.get("/ui/rq/0/data/queues.json").get_json()["queues"]
    assert (queue["name"], queue["count"]) == ("default", 1)
    assert 'href="/ui/rq/"' in page(dashboard, "/ui/rules")  # the navigation links to it
    page(dashboard, "/ui/rq/0/view/jobs")
    [job] = dashboard.get("/ui/rq/0/data/jobs/default/queued/8/asc/1.json").get_json()["jobs"]
    assert job["description"].startswith("workers.jobs.execute_run(")  # read with our JSON serializer
    page(dashboard, f"/ui/rq/0/view/job/{job['id']}")
    assert dashboard.get(f"/ui/rq/0/data/job/{job['id']}.json").get_json()["status"] == "queued"

    stranger = create_app({"REDIS_URL": redis_url, "RULES_PATH": str(rules_dir), "ADMIN_TOKEN": ADMIN}).test_client()
    assert stranger.get("/ui/rq/").status_code == 302
    assert stranger.get("/ui/rq/0/data/queues.json").status_code == 302
    assert stranger.post(f"/ui/rq/job/{job['id']}/delete").status_code == 401
    assert stranger.get("/ui/rq/", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200


def drawn(html: str) -> dict[str, int]:
    """{section id: points its chart drew} of a dashboard page."""
    return {name: int(points) for name, points in
            re.findall(r'<section class="chart" id="([\w-]+)">.*?<svg [^>]*data-points="(\d+)"', html, re.S)}


def words(html: str) -> str:
    """The page's text as a reader sees it, tags left out."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split()).replace(" ,", ",")


def test_the_overview_charts_runs_failures_requests_throttling_queue_depth_and_poll_lag(
        dashboard, stack, sandbox, redis_url, rules_dir):
    write_rule(rules_dir, "watch", WATCH_RULE)
    stack.env["SERIES_SAMPLE_SECONDS"] = "1"
    stack.poller()
    web, failed = failed_form_run(stack, sandbox, redis_url, "msg_chart_1")
    sandbox.fault(kind="status", status=429, retry_after=0.2, methods=["POST"], path="^Task$", count=1)
    deliver(web, {"title": "Call Bo", "project": PROJECT}, "msg_chart_2")

    def charted():
        text = page(dashboard, "/ui/overview")
        return text if "2 finished, 1 failed" in words(text) and drawn(text).get("chart-lag") else None
    text = wait_until(charted, 30, "both runs and a sample of the poll lag on the overview")
    assert set(drawn(text)) == {"chart-runs", "chart-requests", "chart-queues", "chart-lag"}
    assert all(drawn(text).values()), drawn(text)
    assert "1 throttled" in words(text)  # InLoox's one 429
    assert "· failed: 1</title>" in text and "· Task: " in text  # what hovering over a bar or a dot shows
    assert drawn(page(dashboard, "/ui/overview?hours=1"))["chart-runs"] > 0

    assert drawn(page(dashboard, "/ui/poller"))["chart-lag"] > 0
    listed = page(dashboard, "/ui/runs")
    assert re.search(r'<time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">(just now|\d+ s ago)</time>',
                     listed), listed


def section(html: str, name: str) -> str:
    """The words of the page's <section id=name>."""
    found = re.search(rf'<section class="summary" id="{name}">(.*?)</section>', html, re.S)
    assert found, html
    return words(found.group(1))


def test_the_overview_shows_the_last_hour_recent_failures_and_broken_rule_files(dashboard, stack, sandbox,
                                                                                 redis_url, rules_dir):
    text = page(dashboard, "/ui/overview")
    assert re.search(r'aria-current="page">1 h</a>', text)  # a new stack's first runs are not a sliver of a day
    assert section(text, "failures").endswith("No run failed in the last 24 h.")
    assert 'id="broken-files"' not in text

    (rules_dir / "broken.yaml").write_text("id: broken\nwhen: []\nthen: nonsense\n")
    web, failed = failed_form_run(stack, sandbox, redis_url, "msg_failures")
    text = page(dashboard, "/ui/overview")
    failures = html.unescape(section(text, "failures"))
    assert re.search(rf"{failed['id']} form-to-task (just now|\d+ s ago) step 0 \(task\): 400 BAD REQUEST "
                     r"from POST http://\S+: Injected fault: HTTP 400$", failures), failures
    assert f'href="/ui/runs/{failed["id"]}"' in text
    broken = section(text, "broken-files")
    assert broken.startswith("Broken rule files broken.yaml, broken") and "broken.yaml:" in broken, broken


def test_a_run_shows_its_json_as_written_escaped_for_html_only(dashboard, stack, sandbox, redis_url):
    web, failed = failed_form_run(stack, sandbox, redis_url, "msg_json", title="Ann's <p>call</p> – Zoë")
    text = page(dashboard, f"/ui/runs/{failed['id']}")
    assert "\\u0027" not in text and "\\u003c" not in text and "\\u00eb" not in text
    assert '"Name": "Ann\'s <p>call</p> – Zoë"' in html.unescape(text)  # the request's body, in its step
    assert "<p>call" not in text  # the text still goes through Jinja's escaping


def logged_events(html: str) -> dict[str, str]:
    """{event id: the words of its row} of the events page."""
    return {event_id: words(row) for event_id, row in re.findall(r'<tr data-event="([^"]+)">(.*?)</tr>', html, re.S)}


def test_the_events_page_names_each_entity_and_says_which_events_are_our_own_writes(
        dashboard, stack, sandbox, redis_url, rules_dir):
    write_rule(rules_dir, "watch", WATCH_RULE)  # on updated tasks; an own write reaches it and is let go
    task = make_task(sandbox, "Write report")
    signed_post(dashboard, "/hooks/forms", {"title": "Call Ann", "project": PROJECT}, "msg_named")
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token)), \
            Client(sandbox.base_url, sandbox.token) as inloox:
        ours = PollSettings(own_contact_id=inloox.me()["ContactId"])  # the sandbox's edits are the engine's user
        poll_once(inloox, redis.Redis.from_url(redis_url), change_feed("Task"), frozenset({"IsDone"}), ours)
        assert sandbox.patch(f"Task({task})", json={"IsDone": True}).status_code in (200, 204)
        poll_once(inloox, redis.Redis.from_url(redis_url), change_feed("Task"), frozenset({"IsDone"}), ours)
    stack.worker()

    def handled():
        rows = logged_events(page(dashboard, "/ui/events"))
        return rows if len(rows) == 2 and not any("waiting" in row for row in rows.values()) else None
    rows = wait_until(handled, 20, "both events handled")
    [mine] = [row for row in rows.values() if "inloox" in row]
    assert re.search(rf"inloox Write report updated Task {task} our own write", mine), mine
    [form] = [row for row in rows.values() if "webhook" in row]
    assert "webhook Call Ann forms" in form and "ran" in form, form
    assert "unmatched" not in " ".join(rows.values())
    [own_id] = [event_id for event_id, row in rows.items() if row is mine]
    shown = words(page(dashboard, f"/ui/events/{own_id}"))
    assert "Write report · inloox · updated Task" in shown and "status our own write" in shown, shown


OPERATOR = "operator-token-5Rz1"


@pytest.fixture
def operated(redis_url, sandbox, rules_dir):
    """The app with the default workspace (its own admin token) and `acme` created through the operator API."""
    write_form_rule(rules_dir)
    app = create_app({"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url, "INLOOX_API_KEY": ENGINE_TOKEN,
                      "RULES_PATH": str(rules_dir), "ADMIN_TOKEN": ADMIN, "OPERATOR_TOKEN": OPERATOR,
                      "WEBHOOK_SOURCES": {"forms": [WEBHOOK_SECRET]}})
    created = app.test_client().put("/workspaces/acme", headers={"Authorization": f"Bearer {OPERATOR}"},
                                    json={"inloox_url": sandbox.base_url, "inloox_api_key": ENGINE_TOKEN})
    assert created.status_code == 201, created.get_data(as_text=True)
    return app


def logged_in(app, token: str):
    client = app.test_client()
    assert client.post("/ui/login", data={"token": token}).status_code == 302
    return client


def workspace_row(html: str, name: str) -> str:
    """The words of one workspace's row of the workspaces page."""
    found = re.search(rf'<tr data-workspace="{name}">(.*?)</tr>', html, re.S)
    assert found, html
    return words(found.group(1))


def test_the_operator_sees_every_workspace_and_pauses_and_resumes_one(operated):
    client = logged_in(operated, OPERATOR)
    text = page(client, "/ui/workspaces")
    assert OPERATOR not in text
    assert workspace_row(text, "default").startswith("default running files:")
    assert workspace_row(text, "acme").startswith("acme running none none yet not polled 0 0")
    assert 'href="/ui/workspaces"' in page(client, "/ui/rules")  # the navigation links to it

    paused = client.post("/ui/workspaces/acme/pause", follow_redirects=True)
    assert paused.status_code == 200 and "Paused acme." in paused.get_data(as_text=True)
    assert client.get("/workspaces/acme", headers={"Authorization": f"Bearer {OPERATOR}"}).get_json()["paused"]
    text = page(client, "/ui/workspaces")
    assert workspace_row(text, "acme").startswith("acme paused")
    assert "Resume" in workspace_row(text, "acme") and "Pause" in workspace_row(text, "default")

    # Paused, it still takes webhooks into its log: the page shows the event, waiting.
    added = client.post("/workspaces/acme/webhooks", headers={"Authorization": f"Bearer {OPERATOR}"},
                        json={"source": "forms"})
    assert added.status_code == 201, added.get_data(as_text=True)
    signed_post(client, "/workspaces/acme/hooks/forms", {"title": "Call Ann"}, "msg_ws_page_2",
                secret=added.get_json()["secret"])
    row = workspace_row(page(client, "/ui/workspaces"), "acme")
    assert re.match(r"acme paused none (just now|\d+ s ago) not polled 1 0 Resume", row), row

    resumed = client.post("/ui/workspaces/acme/resume", follow_redirects=True)
    assert "Resumed acme." in resumed.get_data(as_text=True)
    assert workspace_row(page(client, "/ui/workspaces"), "acme").startswith("acme running")
    unknown = client.post("/ui/workspaces/gone/pause", follow_redirects=True)
    assert "No workspace 'gone'." in html.unescape(unknown.get_data(as_text=True))


def test_the_workspaces_page_shows_the_last_event_of_a_workspace(operated, sandbox):
    client = logged_in(operated, OPERATOR)
    signed_post(client, "/hooks/forms", {"title": "Call Ann", "project": PROJECT}, "msg_ws_page_1")
    row = workspace_row(page(client, "/ui/workspaces"), "default")
    assert re.match(r"default running files:\S+ (just now|\d+ s ago) not polled 1 0", row), row


def test_the_workspaces_page_says_whose_polling_fails_and_why(operated, redis_url):
    """Which customers' polling fails was in the pollers' logs alone: the row shows it, as the poller keeps it."""
    from datetime import datetime, timezone

    from inloox import InLooxError
    from workers import workspaces
    from workers.poller.status import WHOLE, record_trouble

    client = logged_in(operated, OPERATOR)
    with workspaces.using(workspaces.Workspace("acme", "http://unused.invalid/", "")):
        record_trouble(redis.Redis.from_url(redis_url), WHOLE, InLooxError("401 Unauthorized: the token is not valid"),
                       now=datetime.now(timezone.utc))
    row = workspace_row(page(client, "/ui/workspaces"), "acme")
    assert "no poll works: InLooxError: 401 Unauthorized: the token is not valid" in row, row
    assert "no poll works" not in workspace_row(page(client, "/ui/workspaces"), "default")


def test_the_workspaces_page_names_the_set_whose_poll_lag_it_shows(operated, redis_url):
    # A bare "12 s" said neither of what nor of which set; `flask workspaces list` names the slowest watched set.
    connection = redis.Redis.from_url(redis_url)
    connection.set("ws:acme:poll:watched", json.dumps(["Project", "Task"]))
    for name, year in (("Task", 2020), ("Project", 2021)):  # Task polled longest ago: its lag is the row's
        connection.set(f"ws:acme:poll:{name}:cursor", f"{year}-01-01T00:00:00Z")
        connection.hset(f"ws:acme:poll:{name}:last", mapping={"started": f"{year}-01-01T00:00:05+00:00"})

    client = logged_in(operated, OPERATOR)
    row = workspace_row(page(client, "/ui/workspaces"), "acme")

    assert re.search(r" \d{9,} s \(slowest watched set: Task\) 0 0", row), row
    assert "not polled" in workspace_row(page(client, "/ui/workspaces"), "default")


def test_a_workspace_admin_may_not_see_or_use_the_workspaces_page(operated):
    admin = logged_in(operated, ADMIN)
    assert admin.get("/ui/workspaces").status_code == 403
    assert admin.post("/ui/workspaces/acme/pause").status_code == 403
    assert 'href="/ui/workspaces"' not in page(admin, "/ui/rules")
    assert not operated.test_client().get("/workspaces/acme", headers={"Authorization": f"Bearer {OPERATOR}"}
                                          ).get_json()["paused"]  # nothing changed
    stranger = operated.test_client()
    assert stranger.get("/ui/workspaces").status_code == 302
    assert stranger.post("/ui/workspaces/acme/pause").status_code == 401


def test_without_an_operator_token_a_workspace_admin_may_not_pause_another_workspace(redis_url, sandbox):
    from workers.workspaces import Workspace

    # Two customers with admin tokens, no OPERATOR_TOKEN: acme's admin, logged into acme's dashboard, counted as
    # the operator there and paused globex through acme's own workspaces page.
    served = {name: Workspace(name, sandbox.base_url, ENGINE_TOKEN, admin_token=f"{name}-admin-7Kp")
              for name in ("acme", "globex")}
    app = create_app({"REDIS_URL": redis_url, "WORKSPACES": served})
    acme = app.test_client()
    assert acme.post("/workspaces/acme/ui/login", data={"token": "acme-admin-7Kp"}).status_code == 302
    assert acme.get("/workspaces/acme/ui/rules").status_code == 200  # its own dashboard still opens
    assert acme.post("/workspaces/acme/ui/workspaces/globex/pause").status_code == 403
    assert acme.get("/workspaces/acme/ui/workspaces").status_code == 403
    assert 'href="/workspaces/acme/ui/workspaces"' not in page(acme, "/workspaces/acme/ui/rules")
    globex = app.test_client().get("/workspaces/globex", headers={"Authorization": "Bearer globex-admin-7Kp"})
    assert globex.get_json()["paused"] is False  # nothing changed


def signed_post(client, path: str, body: dict, msg_id: str, *, secret: str = WEBHOOK_SECRET):
    """A Standard-Webhooks-signed POST through the test client (as tests.support.stack.deliver does over HTTP)."""
    raw, stamp = json.dumps(body), int(time.time())
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, timezone.utc), raw)
    answer = client.post(path, data=raw, headers={"content-type": "application/json", "webhook-id": msg_id,
                                                  "webhook-timestamp": str(stamp), "webhook-signature": signature})
    assert answer.status_code == 202, answer.get_data(as_text=True)


def test_the_overview_and_the_workspaces_page_show_a_bundle_without_compiling_its_rules(redis_url):
    # Compiling a 1 MB bundle holds the web's one GIL ~5 s; the workspaces page compiled every workspace's rules
    # for their version numbers, the overview for a folder's broken files (a bundle has none).
    app = bundled_app(redis_url)
    upload(app, {"hello.yaml": HELLO})
    client = app.test_client()
    operator = {"Authorization": f"Bearer {BUNDLED_OPERATOR}"}

    overview, listed = client.get("/ui/overview", headers=operator), client.get("/ui/workspaces", headers=operator)

    assert overview.status_code == 200, overview.get_data(as_text=True)[:500]
    assert listed.status_code == 200, listed.get_data(as_text=True)[:500]
    assert '<td class="rules-version">v1</td>' in listed.get_data(as_text=True)
    assert compiled_from(app) == ""


def test_the_rules_page_compiles_a_bundle_on_a_heavy_turn(redis_url):
    # It lists each rule's description and trigger: compiled rules, which a 1 MB bundle takes ~5.6 s of CPU to make.
    app = bundled_app(redis_url)
    upload(app, {**large_bundle(LARGE), "hello.yaml": HELLO})
    client, operator = app.test_client(), {"Authorization": f"Bearer {BUNDLED_OPERATOR}"}

    with heavy_turn_held(app):
        refused = client.get("/ui/rules", headers=operator)

    assert refused.status_code == 429
    assert "Not listed: this web server is busy" in refused.get_data(as_text=True)
    assert compiled_from(app) == ""
    assert 'data-rule="hello"' in client.get("/ui/rules", headers=operator).get_data(as_text=True)


def test_the_what_if_page_compares_off_the_web_and_says_so_when_that_is_too_costly(redis_url):
    # The page compiled the candidate version in the web (~5.6 s of CPU for a 1 MB bundle) and planned events against
    # it and the active rules, holding the web's one GIL all along; the child doing it now is held to
    # BUNDLE_CHECK_CPU_SECONDS, and past them the page says so, as its other notices do.
    upload(bundled_app(redis_url), large_bundle())  # v1, checked with the default 30 s
    upload(bundled_app(redis_url), {"hello.yaml": HELLO})  # v2, active
    app = bundled_app(redis_url, BUNDLE_CHECK_CPU_SECONDS="1")
    client, operator = app.test_client(), {"Authorization": f"Bearer {BUNDLED_OPERATOR}"}

    refused = client.get("/ui/whatif?version=1", headers=operator)

    assert refused.status_code == 302, refused.get_data(as_text=True)[:500]
    shown = client.get(refused.headers["Location"], headers=operator).get_data(as_text=True)
    assert ("Not compared: the comparison is too costly: compiling both versions and planning the events with them "
            "takes more than 1 s of CPU time, the most a what-if comparison may use") in html.unescape(shown), shown
    assert compiled_from(app) == ""  # neither version compiled in the web
