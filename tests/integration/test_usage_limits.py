"""Issue 21: usage metering and plan limits that hold and replay, with real web, worker and sandbox.

A workspace created over HTTP with `runs_per_month: 5` and an alert channel: seven signed webhooks
make five runs that write and two that wait `over_limit`; the alerts at 80 % and 100 % arrive once
each; raising the limit to 6 runs the older waiting one alone, to 10 the other, each once; usage then shows seven
webhook events and seven billable runs. Over `events_per_day`, a webhook is answered 429.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from tests.integration.test_run_round_trips import _context, _event, batched_counts
from tests.support.cut import MidWriteCut
from tests.support.processes import wait_until
from tests.support.stack import FORM_RULE, PROJECT, deliver, ensure_project

__all__ = ["batched_counts"]  # the fixture, used by name

OPERATOR = "operator-usage-4Tq9"
NOTIFY_RULE = """
id: form-to-chat
description: Each urgent form submission is told to the team.
when:
  - webhook: forms
if:
  - {{path: webhook.body.urgent, op: exists}}
then:
  - notify: "{url}"
    title: "Urgent form"
    body: "urgent: {{{{ webhook.body.title }}}}"
"""


def _call(method: str, url: str, token: str, body: dict | None = None) -> requests.Response:
    return requests.request(method, url, json=body, timeout=10, headers={"Authorization": f"Bearer {token}"})


def _task_names(sandbox) -> list[str]:
    return [(r.get("body") or {}).get("Name") for r in sandbox.requests()
            if r["method"] == "POST" and r["path"].rstrip("/").endswith("Task") and r["status"] < 300]


def _messages(receiver) -> list[str]:
    return [str((r["body"] or {}).get("message", "")) for r in receiver.received if isinstance(r["body"], dict)]


def _alerts(receiver) -> list[str]:
    return [str((r["body"] or {}).get("message", "")) for r in receiver.received
            if isinstance(r["body"], dict) and "runs this month" in str(r["body"].get("message", ""))]


def _workspace(web: str, sandbox, limits: dict, alerts: str, rules: dict) -> tuple[str, str]:
    """Create `acme` over HTTP with `limits`, `alerts` and the rule files `rules`; (admin token, webhook secret)."""
    created = _call("PUT", f"{web}/workspaces/acme", OPERATOR,
                    {"inloox_url": sandbox.base_url, "inloox_api_key": sandbox.token, "limits": limits,
                     "alerts": alerts})
    assert created.status_code == 201, created.text
    admin = created.json()["admin_token"]
    uploaded = _call("PUT", f"{web}/workspaces/acme/rules", admin, {"files": rules})
    assert uploaded.status_code in (200, 201), uploaded.text
    added = _call("POST", f"{web}/workspaces/acme/webhooks", admin, {"source": "forms"})
    assert added.status_code == 201, added.text
    return admin, added.json()["secret"]


def _start(stack) -> str:
    stack.env["OPERATOR_TOKEN"] = OPERATOR
    web = stack.web(threads=4)
    stack.worker()
    return web


def _started_with(stack, sandbox, receiver, limits: dict, first: str) -> tuple[str, str, str]:
    """The stack with `acme` (`limits`, the form rule, alerts to the receiver), once its source takes the delivery
    titled `first` (id "<first, lowered, _ for spaces>"): (web, admin token, webhook secret)."""
    ensure_project(sandbox)
    web = _start(stack)
    admin, secret = _workspace(web, sandbox, limits, receiver.json_url, {"forms.yaml": FORM_RULE.format(extra="")})
    wait_until(lambda: deliver(web, {"title": first, "project": PROJECT}, first.lower().replace(" ", "_"), path=HOOK,
                               secret=secret).status_code == 202, 5, "the new source to be served")
    return web, admin, secret


HOOK = "/workspaces/acme/hooks/forms"


@pytest.mark.timeout(150)
def test_runs_over_the_monthly_limit_wait_and_run_once_each_when_it_is_raised(stack, sandbox, receiver):
    web, admin, secret = _started_with(stack, sandbox, receiver, {"runs_per_month": 5}, "Limit 1")
    for n in range(2, 8):
        assert deliver(web, {"title": f"Limit {n}", "project": PROJECT}, f"limit_{n}", path=HOOK,
                       secret=secret).status_code == 202

    def over_limit() -> list[dict]:
        return _call("GET", f"{web}/workspaces/acme/runs?status=over_limit", admin).json()["runs"]

    wait_until(lambda: len(over_limit()) == 2 and len(_task_names(sandbox)) == 5, 20,
               "five runs to write and two to wait over the limit")
    time.sleep(2)  # nothing more happens while the limit holds
    assert len(_task_names(sandbox)) == 5
    waiting = sorted(over_limit(), key=lambda r: r["created_at"])
    assert all("limit of 5 billable runs" in r["reason"] for r in waiting)
    wait_until(lambda: len(_alerts(receiver)) == 2, 10, "the alerts at 80 % and 100 %")
    alerts = _alerts(receiver)
    assert sum("80 % of 5 runs this month" in a for a in alerts) == 1
    assert sum("100 % of 5 runs this month" in a for a in alerts) == 1

    # Room for one more: the older of the two waiting runs starts, alone. (Their writes' order once both may
    # start is not the test: released runs run as RQ jobs, several of a workspace at once, as events do.)
    titles = [f"Limit {r['event_id'].rsplit('_', 1)[1]}" for r in waiting]  # event ids: webhook:forms:limit_<n>
    raised = _call("PUT", f"{web}/workspaces/acme", OPERATOR, {"limits": {"runs_per_month": 6}})
    assert raised.status_code == 200, raised.text
    wait_until(lambda: len(_task_names(sandbox)) == 6, 20, "the older waiting run to start")
    time.sleep(2)  # nothing more happens while the limit holds
    assert _task_names(sandbox)[5:] == titles[:1]
    raised = _call("PUT", f"{web}/workspaces/acme", OPERATOR, {"limits": {"runs_per_month": 10}})
    assert raised.status_code == 200, raised.text
    wait_until(lambda: len(_task_names(sandbox)) == 7, 20, "the other waiting run to start")
    time.sleep(2)
    names = _task_names(sandbox)
    assert sorted(names) == sorted(f"Limit {n}" for n in range(1, 8))  # each once
    assert names[-1] == titles[1]
    assert over_limit() == []
    assert len(_alerts(receiver)) == 2  # once each per month, not again

    used = _call("GET", f"{web}/workspaces/acme/usage", admin)
    assert used.status_code == 200, used.text
    report = used.json()
    assert report["events"]["webhook"] == 7
    assert report["billable_runs"] == 7
    assert report["runs"] == 7
    assert report["rules"] == [{"rule": "form-to-task", "billable_runs": 7}]


@pytest.mark.timeout(150)
def test_a_failed_run_retried_by_a_person_waits_over_the_monthly_limit_like_a_new_one(stack, sandbox, receiver):
    """`runs_per_month: 1`: a run that fails at its first write (400) bills nothing and gives its slot back; another
    run then bills the month's one. Retried by a person, the failed run must be admitted again: it waits
    `over_limit` (before, it ran on the slot it had given back, and the month billed 2 runs of 1), and runs once
    when the limit is raised."""
    sandbox.fault(kind="status", status=400, methods=["POST"], path="^Task$", count=1)
    web, admin, secret = _started_with(stack, sandbox, receiver, {"runs_per_month": 1}, "Refused 1")

    def runs(status: str) -> list[dict]:
        return _call("GET", f"{web}/workspaces/acme/runs?status={status}", admin).json()["runs"]

    def billed() -> int:
        return _call("GET", f"{web}/workspaces/acme/usage", admin).json()["billable_runs"]

    [failed] = wait_until(lambda: runs("failed"), 30, "the first run to fail (400)")
    assert deliver(web, {"title": "Billed 2", "project": PROJECT}, "billed_2", path=HOOK,
                   secret=secret).status_code == 202
    wait_until(lambda: _task_names(sandbox) == ["Billed 2"] and billed() == 1, 30, "the second run to bill the month")

    retried = _call("POST", f"{web}/workspaces/acme/runs/{failed['id']}/retry", admin)
    assert retried.status_code == 202, retried.text
    def status() -> str:
        return _call("GET", f"{web}/workspaces/acme/runs/{failed['id']}", admin).json()["run"]["status"]

    wait_until(lambda: status() not in ("queued", "retrying"), 30, "the retried run to be taken up")
    time.sleep(2)  # nothing more happens while the limit holds
    assert (status(), _task_names(sandbox), billed()) == ("over_limit", ["Billed 2"], 1)

    raised = _call("PUT", f"{web}/workspaces/acme", OPERATOR, {"limits": {"runs_per_month": 2}})
    assert raised.status_code == 200, raised.text
    wait_until(lambda: sorted(_task_names(sandbox)) == ["Billed 2", "Refused 1"] and billed() == 2, 30,
               "the retried run to run once there is room")


@pytest.mark.timeout(120)
def test_usage_equals_what_happened(stack, sandbox, receiver):
    ensure_project(sandbox)
    web = _start(stack)
    admin, secret = _workspace(web, sandbox, {}, "", {
        "forms.yaml": FORM_RULE.format(extra=""),
        "chat.yaml": NOTIFY_RULE.format(url=receiver.json_url)})
    wait_until(lambda: deliver(web, {"title": "Known 1", "project": PROJECT}, "known_1", path=HOOK,
                               secret=secret).status_code == 202, 5, "the new source to be served")
    assert deliver(web, {"title": "Known 2", "project": PROJECT, "urgent": True}, "known_2", path=HOOK,
                   secret=secret).status_code == 202
    assert deliver(web, {"title": "Known 2", "project": PROJECT, "urgent": True}, "known_2", path=HOOK,
                   secret=secret).status_code == 200  # a redelivery: no event, no run
    wait_until(lambda: len(_task_names(sandbox)) == 2 and any("urgent" in r["raw"] for r in receiver.received),
               20, "two tasks and one notification")

    def report() -> dict:
        return _call("GET", f"{web}/workspaces/acme/usage", admin).json()

    # The worker writes its batched counts (runs started, steps, requests) within a second or two; billable runs
    # go with each run's end. Waiting for the latter alone read the notification's count before its batch (CI).
    def counted() -> bool:
        seen = report()
        return (seen["billable_runs"], seen["runs"], seen["notifications"]) == (3, 3, 1) and \
            seen["inloox_requests"]["write"] >= 2

    wait_until(counted, 10, "the worker's counts")
    seen = report()
    assert seen["events"] == {"webhook": 2, "inloox": 0, "chat": 0, "schedule": 0, "manual": 0}
    assert seen["runs"] == 3  # form-to-task twice, form-to-chat for the urgent one
    assert seen["billable_runs"] == 3  # two writes and one notification
    assert seen["notifications"] == 1
    posts = [r for r in sandbox.requests() if r["method"] == "POST" and r["path"].rstrip("/").endswith("Task")]
    assert seen["inloox_requests"]["write"] == len(posts) == 2
    assert seen["inloox_requests"]["read"] >= 0
    assert sorted((r["rule"], r["billable_runs"]) for r in seen["rules"]) == [("form-to-chat", 1), ("form-to-task", 2)]

    everyone = _call("GET", f"{web}/usage", OPERATOR)
    assert everyone.status_code == 200
    assert [w["workspace"] for w in everyone.json()["workspaces"] if w["workspace"] == "acme"] == ["acme"]
    assert _call("GET", f"{web}/usage", admin).status_code == 401
    assert _call("GET", f"{web}/workspaces/acme/usage?from=2026-13-01", admin).status_code == 400
    assert _call("GET", f"{web}/workspaces/acme/usage?from=2026-02-01&to=2026-01-01", admin).status_code == 400
    assert _call("GET", f"{web}/workspaces/acme/usage?form=2026-01-01", admin).status_code == 400


@pytest.mark.timeout(90)
def test_webhooks_over_the_daily_event_limit_are_answered_429(stack, sandbox, receiver):
    web, _, secret = _started_with(stack, sandbox, receiver, {"events_per_day": 2}, "Day 1")
    assert deliver(web, {"title": "Day 2", "project": PROJECT}, "day_2", path=HOOK, secret=secret).status_code == 202
    refused = deliver(web, {"title": "Day 3", "project": PROJECT}, "day_3", path=HOOK, secret=secret)
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 86400
    assert "limit of 2 events today" in refused.json()["error"]["message"]
    wait_until(lambda: sum("100 % of 2 events today" in m for m in _messages(receiver)) == 1, 10, "the alert at 100 %")
    assert deliver(web, {"title": "Day 4", "project": PROJECT}, "day_4", path=HOOK, secret=secret).status_code == 429
    time.sleep(0.5)  # an alert sent again would be on its way by now (not a wait for a condition)
    assert sum("100 % of 2 events today" in m for m in _messages(receiver)) == 1  # once, not at every refusal
    # A sender that did not hear our 202 sends it again: an accepted id is a duplicate, 200, as for the backlog and
    # the pace (it was a 429 until midnight, and retried all day).
    again = deliver(web, {"title": "Day 2", "project": PROJECT}, "day_2", path=HOOK, secret=secret)
    assert (again.status_code, again.json().get("status")) == (200, "duplicate")


@pytest.mark.timeout(120)
def test_two_web_processes_at_once_accept_no_more_than_the_daily_event_limit(stack, sandbox, receiver, redis_url):
    """`events_per_day: 3` and two web processes: 24 distinct webhooks arriving while Redis holds its writes back for a
    moment (CLIENT PAUSE WRITE, as a failover or a slow disk does), half to each process, get 3 202s and 21 429s, and
    the day counts 3 events. Before, each webhook read the day's count and stored its event in two steps: every one
    that read the count before the others were stored was let through, however many."""
    ensure_project(sandbox)
    stack.env["OPERATOR_TOKEN"] = OPERATOR
    webs = [stack.web(threads=12), stack.web(threads=12)]  # no worker: nothing needs to run
    admin, secret = _workspace(webs[0], sandbox, {"events_per_day": 3}, "", {"forms.yaml": FORM_RULE.format(extra="")})
    for web in webs:  # a wrong signature is refused (401) once the source is served: no event stored
        wait_until(lambda: deliver(web, {}, "probe", path=HOOK, secret="whsec_" + "A" * 32).status_code == 401, 10,
                   "the new source to be served by each web process")

    def send(n: int) -> int:
        return deliver(webs[n % 2], {"title": f"Busy {n}", "project": PROJECT}, f"busy_{n}", path=HOOK,
                       secret=secret).status_code

    redis.Redis.from_url(redis_url).client_pause(2000, all=False)  # reads go on, writes wait 2 s
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(send, range(24)))

    assert (answers.count(202), answers.count(429)) == (3, 21), answers
    assert _call("GET", f"{webs[0]}/workspaces/acme/usage", admin).json()["events"]["webhook"] == 3


@pytest.mark.timeout(90)
def test_webhooks_over_the_backlog_limit_are_answered_429_until_the_workers_catch_up(stack, sandbox, receiver):
    ensure_project(sandbox)
    stack.env["OPERATOR_TOKEN"] = OPERATOR
    web = stack.web(threads=4)  # no worker yet: what is accepted waits
    _, secret = _workspace(web, sandbox, {"backlog_limit": 2}, receiver.json_url,
                           {"forms.yaml": FORM_RULE.format(extra="")})

    def send(n: int) -> requests.Response:
        return deliver(web, {"title": f"Wait {n}", "project": PROJECT}, f"wait_{n}", path=HOOK, secret=secret)

    wait_until(lambda: send(1).status_code == 202, 5, "the new source to be served")
    assert send(2).status_code == 202
    refused = send(3)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "60"
    assert "has 2 events and runs waiting (the limit is 2)" in refused.json()["error"]["message"]
    assert send(1).status_code == 200  # a redelivery of an accepted one is still told it is a duplicate
    assert send(4).status_code == 429
    alerts = wait_until(lambda: [m for m in _messages(receiver) if "backlog_limit" in m], 10, "the backlog alert")
    time.sleep(0.5)  # an alert sent again would be on its way by now (not a wait for a condition)
    assert [m for m in _messages(receiver) if "backlog_limit" in m] == alerts == [
        "webhooks of workspace acme are answered 429: 2 events and runs are waiting (its backlog_limit is 2); they "
        "are accepted again once fewer wait"]  # once an hour, not at every refusal

    stack.worker()
    wait_until(lambda: send(3).status_code == 202, 30, "room once a worker handled the two")
    wait_until(lambda: send(4).status_code == 202, 30, "room again once the third was handled")
    wait_until(lambda: sorted(_task_names(sandbox)) == ["Wait 1", "Wait 2", "Wait 3", "Wait 4"], 30, "four tasks")


@pytest.mark.timeout(90)
def test_webhooks_faster_than_the_workspaces_pace_are_answered_429_and_another_workspace_is_not(
        stack, sandbox, receiver, rules_dir):
    """`webhooks_per_second: 1`: a burst of ten seconds' worth is accepted, the next ones are told to retry in a
    second, nothing of them stored; a redelivery of an accepted id is still a 200; the default workspace (no pace)
    is served meanwhile; a second later one more is accepted; every accepted one writes once."""
    (rules_dir / "forms.yaml").write_text(FORM_RULE.format(extra=""))  # the default workspace's rule
    web, _, secret = _started_with(stack, sandbox, receiver, {"webhooks_per_second": 1}, "Paced 0")

    def send(n: int) -> requests.Response:
        return deliver(web, {"title": f"Paced {n}", "project": PROJECT}, f"paced_{n}", path=HOOK, secret=secret)

    answers = {n: send(n) for n in range(1, 16)}
    accepted = [0] + [n for n, r in answers.items() if r.status_code == 202]
    refused = [r for r in answers.values() if r.status_code == 429]
    assert 10 <= len(accepted) <= 11 and len(accepted) + len(refused) == 16, {n: r.status_code for n, r in answers.items()}
    assert accepted == list(range(len(accepted)))  # the first ones, then none
    assert {r.headers["Retry-After"] for r in refused} == {"1"}
    assert "accepts webhooks at 1 a second (after a burst of 10); retry in 1 s" in refused[0].json()["error"]["message"]
    assert send(0).status_code == 200  # a redelivery of an accepted one is still told it is a duplicate
    assert deliver(web, {"title": "Default", "project": PROJECT}, "default_1").status_code == 202
    alerts = wait_until(lambda: [m for m in _messages(receiver) if "webhooks_per_second" in m], 10, "the pace alert")
    time.sleep(0.5)  # an alert sent again would be on its way by now (not a wait for a condition)
    assert [m for m in _messages(receiver) if "webhooks_per_second" in m] == alerts == [
        "webhooks of workspace acme are answered 429: they come faster than its webhooks_per_second (1); they are "
        "accepted again at that pace"]  # once an hour, not at every refusal

    time.sleep(1.1)  # the pace's next event (not a wait for a condition)
    late = refused and max(n for n, r in answers.items() if r.status_code == 429)
    assert send(late).status_code == 202
    written = [f"Paced {n}" for n in accepted + [late]] + ["Default"]
    wait_until(lambda: sorted(_task_names(sandbox)) == sorted(written), 30, "one task for each accepted webhook")


@pytest.mark.timeout(90)
def test_a_workspaces_alerts_channel_that_hangs_holds_up_no_answer_to_its_webhooks(stack, sandbox, receiver):
    """The usage alerts (80 % and 100 % of `events_per_day` here) go to the workspace's channel, which answers after
    8 s: the webhooks that set them off are answered at once all the same (before, each waited for the channel on a
    web thread every customer's webhooks need), and the alerts still arrive."""
    web, _, secret = _started_with(stack, sandbox, receiver, {"events_per_day": 2}, "Slow 1")
    receiver.delay = 8.0

    answers = []
    for n in (2, 3):
        began = time.monotonic()
        answers.append((deliver(web, {"title": f"Slow {n}", "project": PROJECT}, f"slow_{n}", path=HOOK,
                                secret=secret).status_code, time.monotonic() - began))

    assert [status for status, _ in answers] == [202, 429]  # the second sets off the 80 % alert, the third 100 %
    assert all(took < 2 for _, took in answers), answers
    wait_until(lambda: sum("% of 2 events today" in m for m in _messages(receiver)) == 2, 30,
               "both alerts, once the channel answers")


def test_the_usage_page_the_cli_and_prometheus_show_the_counts(app, client, runner, redis_url, workspace):
    import redis as redis_client

    from workers import metrics
    from workers.metering import usage

    connection = redis_client.Redis.from_url(redis_url)
    day = usage.today()
    with connection.pipeline() as pipe:
        usage.add(pipe, {("default", "events:webhook"): 3, ("default", "runs"): 3, ("default", "billable_runs"): 2,
                         ("default", "rule:form-to-task"): 2, ("default", "inloox_requests:write"): 2}, day=day)
        pipe.execute()
    metrics.count(connection, "billable_runs", rule="form-to-task")

    page = client.get("/ui/usage")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '<span class="total" id="billable">2</span>' in html
    assert "form-to-task" in html and 'href="/ui/usage"' in html
    assert 'class="chart chart-bars" data-points="0"' not in html  # the day's bars are drawn
    assert "100000 events and runs waiting</td><td>0</td>" in html  # the default backlog_limit, nothing waiting
    assert day.isoformat() in html  # bars per day are labelled by date

    shown = runner.invoke(args=["usage", "--workspace", "default"])
    assert shown.exit_code == 0, shown.output
    assert "events: 3 webhook" in shown.output and "billable: 2" in shown.output and "2 write" in shown.output
    assert runner.invoke(args=["usage", "--month", "2026-13"]).exit_code == 2
    assert runner.invoke(args=["usage", "--workspace", "nope"]).exit_code == 1

    scraped = client.get("/metrics").get_data(as_text=True)
    assert 'inloox_automation_billable_runs_total{rule="form-to-task",workspace="default"} 1.0' in scraped


def test_counter_keys_get_their_ttl_once_an_hour_not_with_every_count(redis_url):
    """Counting costs a HINCRBY per count; the day's and month's TTLs are set once, and again after a purge."""
    import redis as redis_lib
    from workers.metering import expiry, usage
    connection = redis_lib.Redis.from_url(redis_url)
    day = usage.today()
    keys = [usage.day_key("ttl-probe", day), usage.month_key("ttl-probe", usage.month_of(day))]
    sent = lambda: sum(int(v["calls"]) for k, v in connection.info("commandstats").items() if k == "cmdstat_expire")  # noqa: E731
    before = sent()
    for _ in range(5):
        with connection.pipeline(transaction=False) as pipe:
            usage.add(pipe, {("ttl-probe", "inloox_requests:read"): 1}, day=day)
            pipe.execute()
    assert sent() - before == 2  # one per key, not one per count
    assert all(connection.ttl(k) > 0 for k in keys)
    assert usage.read_month(connection, "ttl-probe", usage.month_of(day)) == {"inloox_requests:read": 5}
    connection.delete(*keys)  # a purge; counting again within the hour leaves them without a TTL…
    expiry._set_at.clear()  # …until the hour is over (here: now)
    with connection.pipeline(transaction=False) as pipe:
        usage.add(pipe, {("ttl-probe", "inloox_requests:read"): 1}, day=day)
        pipe.execute()
    assert all(connection.ttl(k) > 0 for k in keys)


def test_an_accepted_event_counts_once_and_its_day_and_month_keep_a_ttl(redis_url):
    """The intake script sets the usage keys' TTLs with the first count of a source (not with every event)."""
    import redis as redis_lib
    from workers import eventlog, workspaces
    from workers.metering import usage
    connection = redis_lib.Redis.from_url(redis_url)
    day = usage.today()
    with workspaces.using(workspaces.Workspace("ttl-intake", "http://127.0.0.1:9/api/odata/", "token")):
        for n in range(3):
            eventlog.append(connection, {"id": f"e{n}", "source": "webhook", "kind": "k", "payload": {}},
                            dedup_key=f"ws:ttl-intake:dedup:e{n}", dedup_ttl=60, counted=("a", "d"))
    month = usage.read_month(connection, "ttl-intake", usage.month_of(day))
    assert month["events:webhook"] == 3
    assert connection.ttl(usage.day_key("ttl-intake", day)) > 0
    assert connection.ttl(usage.month_key("ttl-intake", usage.month_of(day))) > 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ends", [1, 2], ids=["one-run", "two-runs-in-one-round-trip"])
def test_a_run_whose_end_is_cut_off_mid_write_and_ended_again_bills_once(redis_url, sandbox, tmp_path, batched_counts,
                                                                         ends):
    """A run's end (its status, its billable counts and its `billed` mark) goes in one write, with other runs' ends
    when they end together. The connection lost in the middle of it leaves Redis with the commands sent before
    the cut: the event is handled again and the run ended again. Cut after each command of the write from the
    first billable count on, each run must count once: before, a cut after the counts and before the run's record
    (which says `billed`) counted the run again at its second end (a customer charged twice for one run)."""
    from workers import recovery, workspaces
    from workers.jobs import Arrival, handle_batch
    from workers.metering import usage

    ensure_project(sandbox)
    (tmp_path / "forms.yaml").write_text(FORM_RULE.format(extra=""))
    direct = redis.Redis.from_url(redis_url)
    port = direct.connection_pool.connection_kwargs["port"]
    month = usage.month_of(usage.today())

    def billed() -> tuple[int, int, int]:
        counted = usage.read_month(direct, "default", month)
        day = usage.read_days(direct, "default", [usage.today()])[usage.today()]
        return counted.get("billable_runs", 0), counted.get("rule:form-to-task", 0), day.get("billable_runs", 0)

    picks = lambda command: b"billable_runs" in command  # noqa: E731 - the run's first billable count
    with MidWriteCut(port) as proxy:
        ctx, workspace = _context(proxy.url, sandbox, tmp_path)
        with workspaces.using(workspace):
            handle_batch(ctx, [Arrival(_event(0), 0.0)])  # rules read, connections open
            sent = len(proxy.commands)
            assert not [o for o in handle_batch(ctx, [Arrival(_event(n), 0.0) for n in range(1, ends + 1)])
                        if isinstance(o, BaseException)]
            end = proxy.commands[sent:]
            first = next(i for i, command in enumerate(end) if picks(b" ".join(command)))
            cuts = len(end) - first  # the cut points from the first billable count to the write's last command
            assert billed() == (ends + 1,) * 3

            miscounted, events = {}, ends + 1
            for after in range(cuts):
                arrivals = [Arrival(_event(events + n), 0.0) for n in range(ends)]
                events += ends
                proxy.arm(picks, after=after)  # (an end with fewer commands, without a trim, is cut after its last)
                outcomes = handle_batch(ctx, arrivals)
                proxy.wait_cut()
                assert all(isinstance(o, redis.ConnectionError) for o in outcomes), outcomes
                recovery.give_back(direct)  # the worker gives the runs' locks back once Redis answers
                assert not [o for o in handle_batch(ctx, arrivals) if isinstance(o, BaseException)]  # handled again
                if billed() != (events,) * 3:
                    miscounted[after] = billed()  # then set right, so that each cut point is judged alone
                    direct.hset(usage.month_key("default", month), mapping=dict(zip(
                        ("billable_runs", "rule:form-to-task"), (events, events))))
                    direct.hset(usage.day_key("default", usage.today()), "billable_runs", events)

    assert cuts >= 2
    assert miscounted == {}, f"runs counted other than once when their end was cut after these commands: {miscounted}"
    assert sorted(_task_names(sandbox)) == sorted(f"Task {n}" for n in range(events)), "each task once"


@pytest.mark.timeout(90)
def test_the_daily_event_alert_follows_an_event_counted_not_a_redelivery(stack, sandbox, receiver, redis_url):
    """`events_per_day: 5`: three webhooks accepted, then a redelivery of the third (200, not counted again). The
    80 % alert (4 events) must wait for a fourth event counted: before, the web read the day's count before
    storing the webhook and alerted as if it would be counted, so the redelivery set the alert off with 3 of 5
    events used (its claim taken, so the fourth event sent nothing more)."""
    from workers.metering import usage

    web, _, secret = _started_with(stack, sandbox, receiver, {"events_per_day": 5}, "Count 1")
    for n in (2, 3):
        assert deliver(web, {"title": f"Count {n}", "project": PROJECT}, f"count_{n}", path=HOOK,
                       secret=secret).status_code == 202
    again = deliver(web, {"title": "Count 3", "project": PROJECT}, "count_3", path=HOOK, secret=secret)
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    connection = redis.Redis.from_url(redis_url)
    claim = f"ws:acme:limits:alerted:events_per_day:{usage.today().isoformat()}:80"
    # Claimed (SET NX) before the web answers, the alert's first step: not for an event that was not counted.
    assert not connection.exists(claim)
    assert usage.read_days(connection, "acme", [usage.today()])[usage.today()][usage.event_field("webhook")] == 3

    assert deliver(web, {"title": "Count 4", "project": PROJECT}, "count_4", path=HOOK, secret=secret).status_code == 202
    alerts = wait_until(lambda: [m for m in _messages(receiver) if "events today" in m], 10, "the alert at 80 %")
    assert alerts == ["80 % of 5 events today used (4 accepted) in workspace acme"]
    assert connection.exists(claim)


@pytest.mark.parametrize("after", [0, 1], ids=["claim-not-stored", "claim-stored-answer-lost"])
def test_a_usage_alert_whose_claim_met_a_lost_connection_is_sent_once_at_the_next_chance(redis_url, receiver, caplog,
                                                                                         after):
    """The 80 % alert's claim (SET NX) is cut off: before Redis got it, or after (stored, its answer lost). The
    alert is not sent then (Redis failed), but once, at the next event over 80 %: before, this process noted the
    claim as taken before asking Redis, and never asked again (the alert of a deployment of one web process was
    lost for the day); and a claim stored whose answer was lost was every process's reason not to send it."""
    import logging

    from workers import workspaces
    from workers.metering import limits
    from workers.outbound import OutboundPolicy

    workspace = workspaces.Workspace(f"alerted-{after}", "http://127.0.0.1:9/api/odata/", "token",
                                     limits=workspaces.Limits(events_per_day=10), alerts=receiver.json_url)
    policy = OutboundPolicy.from_setting("127.0.0.1")
    direct = redis.Redis.from_url(redis_url)

    def sent() -> list[str]:  # logged as the claim is taken, before the notification is handed to its thread
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("usage alert:")]

    caplog.set_level(logging.WARNING, logger="workers.metering.limits")
    with MidWriteCut(direct.connection_pool.connection_kwargs["port"]) as proxy:
        connection = redis.Redis.from_url(proxy.url)
        proxy.arm(lambda command: b"limits:alerted:events_per_day" in command, after=after)
        with pytest.raises(redis.ConnectionError):
            limits.alert_events(connection, workspace, policy, used=8)
        proxy.wait_cut()
        assert sent() == []
        limits.alert_events(connection, workspace, policy, used=8)  # the next event, still over 80 %
        limits.alert_events(connection, workspace, policy, used=9)  # and the one after
        assert limits.alert_events(direct, workspace, policy, used=9) is None  # another process

    assert sent() == [f"usage alert: 80 % of 10 events today used (8 accepted) in workspace alerted-{after}"]
    wait_until(lambda: [m for m in _messages(receiver) if "80 % of 10 events" in m], 10, "the alert")


def test_a_usage_alert_claimed_by_two_threads_of_one_process_at_once_is_sent_once(redis_url, caplog):
    """Every webhook refused over its pace or backlog asks for the hour's alert, on each of the web's threads: two
    of one process asking at once both found the claim holding this process's own name (SET NX GET), the first's,
    and both sent the alert (an answer lost is what that name is for, not a thread of the same process)."""
    import logging
    import threading

    from workers import workspaces
    from workers.metering import limits
    from workers.outbound import OutboundPolicy

    workspace = workspaces.Workspace("alerted-twice", "http://127.0.0.1:9/api/odata/", "token",
                                     limits=workspaces.Limits(events_per_day=10))
    policy = OutboundPolicy.from_setting("127.0.0.1")
    direct = redis.Redis.from_url(redis_url)
    both = threading.Barrier(2, timeout=2)

    class Together:  # each thread's SET is answered, then it waits for the other's (or 2 s) before going on
        def set(self, *args, **kwargs):
            held = direct.set(*args, **kwargs)
            try:
                both.wait()
            except threading.BrokenBarrierError:
                pass  # the other thread asked nothing
            return held

    caplog.set_level(logging.WARNING, logger="workers.metering.limits")
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(limits.alert_events, Together(), workspace, policy, used=8) for _ in range(2)]:
            done.result()

    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("usage alert:")] == [
        "usage alert: 80 % of 10 events today used (8 accepted) in workspace alerted-twice"]


@pytest.mark.timeout(60)
def test_a_run_whose_end_is_cut_off_after_its_record_gives_back_its_slot_under_the_monthly_limit(
        redis_url, sandbox, tmp_path, batched_counts):
    """Under `runs_per_month`, a run holds a slot (limits:runs:inflight) until it bills or finishes. Its end wrote its
    record (`billed`, its counts) in one script and gave the slot back in a command after it: a connection lost
    between the two left the run succeeded, counted, and its slot taken for good (the event handled again finds the
    run done; nothing else gives a slot back), one run fewer a month for the customer from then on."""
    from dataclasses import replace

    from workers import recovery, workspaces
    from workers.jobs import Arrival, handle_batch
    from workers.metering import limits, usage

    ensure_project(sandbox)
    (tmp_path / "forms.yaml").write_text(FORM_RULE.format(extra=""))
    direct = redis.Redis.from_url(redis_url)
    with MidWriteCut(direct.connection_pool.connection_kwargs["port"]) as proxy:
        ctx, workspace = _context(proxy.url, sandbox, tmp_path)
        workspace = replace(workspace, limits=replace(workspace.limits, runs_per_month=1000))
        ctx = replace(ctx, workspace=workspace)
        with workspaces.using(workspace):
            assert not [o for o in handle_batch(ctx, [Arrival(_event(0), 0.0)]) if isinstance(o, BaseException)]
            assert direct.zcard(workspaces.key(limits.INFLIGHT)) == 0
            arrivals = [Arrival(_event(1), 0.0)]
            proxy.arm(lambda command: b"billable_runs" in command, after=1)  # the record's script, nothing after it
            outcomes = handle_batch(ctx, arrivals)
            proxy.wait_cut()
            assert all(isinstance(o, redis.ConnectionError) for o in outcomes), outcomes
            recovery.give_back(direct)
            assert not [o for o in handle_batch(ctx, arrivals) if isinstance(o, BaseException)]  # handled again
            inflight = [member.decode() for member in direct.zrange(workspaces.key(limits.INFLIGHT), 0, -1)]
            counted = usage.read_month(direct, "default", usage.month_of(usage.today())).get("billable_runs", 0)

    assert counted == 2
    assert inflight == [], "a succeeded, billed run keeps a slot under the monthly limit"


@pytest.mark.timeout(90)
def test_runs_waiting_over_the_monthly_limit_count_in_the_backlog_and_its_webhooks_are_refused_at_it(
        stack, sandbox, receiver, redis_url):
    """A run over `runs_per_month` waits (status `over_limit`), stored with its record, for as long as 7 days, but
    was not counted in the backlog: a workspace past its plan's runs kept every webhook accepted, and each made one
    more waiting run, as fast as its senders went (100 a second by default: ~60 million records in the 7 days). Now
    those runs count, and its webhooks are answered 429 once backlog_limit of them wait."""
    web, _, secret = _started_with(stack, sandbox, receiver, {"runs_per_month": 1, "backlog_limit": 3}, "Over 0")
    from workers import eventlog

    connection = redis.Redis.from_url(redis_url)
    waiting = "ws:acme:limits:runs:waiting"
    answers = []
    for n in range(1, 8):
        answers.append(deliver(web, {"title": f"Over {n}", "project": PROJECT}, f"over_{n}", path=HOOK,
                               secret=secret).status_code)
        if answers[-1] == 202:  # handled (its run waiting over the limit) before the next one is sent
            wait_until(lambda: connection.zcard(waiting) == answers.count(202)
                       and eventlog.backlog(connection, workspace="acme") == 0, 20, f"run {n} to wait over the limit")

    assert answers == [202, 202, 202, 429, 429, 429, 429]
    assert connection.zcard(waiting) == 3
    assert _task_names(sandbox) == ["Over 0"]


def test_a_run_that_expired_waiting_over_the_limit_leaves_the_run_listings_when_the_month_has_room(redis_url):
    """A run waiting over `runs_per_month` whose record expired untouched (7 days) was dropped from the waiting list
    once the limit had room again, but its id stayed in the run listings (`runs`, `runs:rule:<rule>`) for good: only a
    finished run leaves them with the trim. A workspace over its limit for weeks left up to `backlog_limit` ids a week."""
    from datetime import datetime, timezone

    from workers import workspaces
    from workers.metering import limits

    connection = redis.Redis.from_url(redis_url)
    workspace = workspaces.Workspace("default", "http://unused", "unused")
    with workspaces.using(workspace):
        created = datetime(2026, 11, 2, tzinfo=timezone.utc).isoformat()
        with connection.pipeline() as pipe:
            for n in range(3):
                run = {"id": f"run_expired_{n}", "rule_id": "forms", "created_at": created}
                limits.wait(run)(pipe)
                pipe.zadd(workspaces.key("runs"), {run["id"]: 1})  # as its creation listed it; the record is gone
                pipe.zadd(workspaces.key("runs:rule:forms"), {run["id"]: 1})
            pipe.execute()

        assert limits.release_waiting(connection, workspace) == []  # no limit set: the month has room
        assert connection.zcard(workspaces.key(limits.WAITING)) == 0
        assert connection.zrange(workspaces.key("runs"), 0, -1) == []
        assert connection.zrange(workspaces.key("runs:rule:forms"), 0, -1) == []


def test_a_process_forgets_the_alert_claims_of_hours_past(redis_url):
    """Each process notes the alert claims it has seen taken, so that the webhooks refused in one hour ask Redis once
    between them. The notes of hours past stayed for as long as the process lived: one more an hour for each workspace
    refused over its backlog or pace, on every web process and worker, for good."""
    from workers import workspaces
    from workers.metering import limits
    from workers.outbound import OutboundPolicy

    workspace = workspaces.Workspace("refused-all-week", "http://127.0.0.1:9/api/odata/", "token")
    connection, policy = redis.Redis.from_url(redis_url), OutboundPolicy.from_setting("127.0.0.1")
    start = time.monotonic() + 10 * limits.FORGET_EVERY  # later than any claim the tests before noted
    for hour in range(24 * 7):
        limits._alert(connection, workspace, policy, f"backlog_limit:hour-{hour}", "refused", period=limits.HOUR,
                      now=start + hour * limits.HOUR)
    kept = [name for name in limits._claimed if name.startswith("ws:refused-all-week:")]
    assert 1 <= len(kept) <= 3, kept  # the hours whose claims may still be asked for, no more
    assert connection.exists("ws:refused-all-week:limits:alerted:backlog_limit:hour-0")  # Redis's claims as before


@pytest.mark.timeout(90)
def test_a_run_whose_count_redis_refuses_bills_once_when_ended_again(redis_url, sandbox, tmp_path, batched_counts):
    """A run's end writes its record (saying `billed`) and its billable counts in one script. Redis keeps what a
    script wrote before an error: with the month's count a field Redis cannot add to, the record was stored saying
    `billed` and the counts were not; the event handled again found the run succeeded and billed, and the run was
    never counted (the monthly limit let one more run in). Nothing is written now until every count can be."""
    from workers import recovery, workspaces
    from workers.jobs import Arrival, handle_batch
    from workers.metering import usage

    ensure_project(sandbox)
    (tmp_path / "forms.yaml").write_text(FORM_RULE.format(extra=""))
    direct = redis.Redis.from_url(redis_url)
    month_key = usage.month_key("default", usage.month_of(usage.today()))
    ctx, workspace = _context(redis_url, sandbox, tmp_path)
    with workspaces.using(workspace):
        direct.hset(month_key, "billable_runs", "not a number")
        [refused] = handle_batch(ctx, [Arrival(_event(0), 0.0)])
        assert isinstance(refused, redis.ResponseError), refused
        direct.hdel(month_key, "billable_runs")  # mended
        recovery.give_back(direct)  # the worker gives the run's lock back once Redis answers
        [handled] = handle_batch(ctx, [Arrival(_event(0), 0.0)])  # the event handled again
        assert not isinstance(handled, BaseException), handled

    counted = usage.read_month(direct, "default", usage.month_of(usage.today()))
    day = usage.read_days(direct, "default", [usage.today()])[usage.today()]
    assert (counted.get("billable_runs"), counted.get("rule:form-to-task"), day.get("billable_runs")) == (1, 1, 1)
    assert _task_names(sandbox) == ["Task 0"]


@pytest.mark.timeout(90)
def test_a_run_released_while_redis_refuses_the_active_runs_waits_says_why_and_runs_once_mended(
        redis_url, sandbox, tmp_path, batched_counts):
    """A run waiting over `runs_per_month` is released once the month has room: its status, its deadline for the
    sweeper (`runs:active`) and its leaving the waiting list went in one MULTI, then its job. With `runs:active` a
    key of another type, Redis refused the deadline and applied the rest: the run said `queued`, left the waiting
    list, had no job and no deadline, and was never run nor failed, not even once the key was mended."""
    from dataclasses import replace

    from workers import enqueue, recovery, workspaces
    from workers.jobs import Arrival, execute_run, handle_batch
    from workers.metering import limits
    from workers.runs import ACTIVE, load_run

    from tests.integration.test_run_round_trips import run_id_of

    ensure_project(sandbox)
    (tmp_path / "forms.yaml").write_text(FORM_RULE.format(extra=""))
    ctx, workspace = _context(redis_url, sandbox, tmp_path)
    full = replace(workspace, limits=replace(workspace.limits, runs_per_month=1))
    roomy = replace(workspace, limits=replace(workspace.limits, runs_per_month=10))
    direct = redis.Redis.from_url(redis_url)
    with workspaces.using(full):
        outcomes = handle_batch(replace(ctx, workspace=full), [Arrival(_event(0), 0.0), Arrival(_event(1), 0.0)])
        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
        assert load_run(direct, run_id_of(1))["status"] == limits.OVER_LIMIT

        active = workspaces.key(ACTIVE)
        direct.delete(active)
        direct.set(active, "not a sorted set")  # damaged
        with pytest.raises(redis.ResponseError):
            limits.release_waiting(direct, roomy)  # the limit was raised: room for the waiting run
        waiting = load_run(direct, run_id_of(1))
        direct.delete(active)  # mended
        direct.delete(workspaces.key("limits:releasing"))  # the next maintenance, past the release lease
        limits.release_waiting(direct, roomy)
        recovery.sweep(direct, roomy, now=time.time() + 3600)  # a sweeper long after: a lost run is started again
        run = load_run(direct, run_id_of(1))
        assert run["status"] == "queued", run
        assert enqueue.waiting(direct.hget(*enqueue.job_status_key(run["job"]))), "the released run has no job"
        assert execute_run.__wrapped__(replace(ctx, workspace=roomy), run_id_of(1)) == "succeeded"  # its job, run

    assert waiting["status"] == limits.OVER_LIMIT and f"Redis refuses {active} (WRONGTYPE" in waiting["reason"], waiting
    assert sorted(_task_names(sandbox)) == ["Task 0", "Task 1"]  # each once


@pytest.mark.timeout(150)
def test_a_workspace_whose_active_runs_redis_refuses_holds_up_no_other_workspaces_waiting_runs(
        stack, sandbox, receiver, redis_url):
    """Two workspaces over their monthly limit, one of them with `runs:active` a key of another type: once both
    limits are raised, the other one's waiting run starts all the same, and the first one's once its key is mended."""
    ensure_project(sandbox)
    web = _start(stack)
    secrets = {}
    for name in ("acme", "globex"):
        created = _call("PUT", f"{web}/workspaces/{name}", OPERATOR,
                        {"inloox_url": sandbox.base_url, "inloox_api_key": sandbox.token,
                         "limits": {"runs_per_month": 1}})
        assert created.status_code == 201, created.text
        admin = created.json()["admin_token"]
        assert _call("PUT", f"{web}/workspaces/{name}/rules", admin,
                     {"files": {"forms.yaml": FORM_RULE.format(extra="")}}).status_code in (200, 201)
        added = _call("POST", f"{web}/workspaces/{name}/webhooks", admin, {"source": "forms"})
        assert added.status_code == 201, added.text
        secrets[name] = added.json()["secret"]

    def send(name: str, n: int) -> int:
        return deliver(web, {"title": f"{name} {n}", "project": PROJECT}, f"{name}_{n}",
                       path=f"/workspaces/{name}/hooks/forms", secret=secrets[name]).status_code

    connection = redis.Redis.from_url(redis_url)
    for name in ("acme", "globex"):
        wait_until(lambda: send(name, 1) == 202, 5, f"{name}'s source to be served")
        assert send(name, 2) == 202
        wait_until(lambda: connection.zcard(f"ws:{name}:limits:runs:waiting") == 1, 20, f"{name}'s run to wait")
    connection.delete("ws:globex:runs:active")
    connection.set("ws:globex:runs:active", "not a sorted set")  # damaged
    for name in ("globex", "acme"):
        raised = _call("PUT", f"{web}/workspaces/{name}", OPERATOR, {"limits": {"runs_per_month": 10}})
        assert raised.status_code == 200, raised.text

    wait_until(lambda: "acme 2" in _task_names(sandbox), 40, "acme's waiting run, beside globex's damaged key")
    assert "globex 2" not in _task_names(sandbox)
    connection.delete("ws:globex:runs:active")  # mended
    wait_until(lambda: "globex 2" in _task_names(sandbox), 60, "globex's waiting run once its key is mended")
    assert sorted(_task_names(sandbox)) == ["acme 1", "acme 2", "globex 1", "globex 2"]  # each once
