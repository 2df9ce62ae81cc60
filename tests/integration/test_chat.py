"""`POST /chat/slack` and `POST /chat/teams`: signatures, replies, confirmation, pick-lists, user mapping.

The app runs in-process against the test's Redis and sandbox; queued events are read from RQ's queue.
The round trips at the end run a real web and worker process with the receiver as Slack's response_url.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from urllib.parse import urlencode

import pytest
import redis
import requests
from workers import eventlog
from slack_sdk.signature import SignatureVerifier

from app import create_app
from tests.support.processes import wait_until
from tests.support.stack import all_runs, make_task, write_rule
from web.signatures import SignatureError, verify_slack

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TEAMS_TOKEN = base64.b64encode(b"teams-security-token-for-tests!!").decode()
# Slack's documented example (api.slack.com/authentication/verifying-requests-from-slack).
SLACK_EXAMPLE_BODY = (
    "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    "&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    "&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    "&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
SLACK_EXAMPLE_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

DONE_RULE = """
id: chat-done
description: Mark a task done.
when:
  - chat: "done <task>"
then:
  - id: found
    inloox.query: Task
    filter: >-
      {% if chat.args.task is guid %}TaskItemId eq {{ chat.args.task | odata }}{% else %}Name eq
      {{ chat.args.task | odata('Edm.String') }}{% endif %} and IsDone eq false
    select: [TaskItemId, Name]
    top: 2
  - if: {expr: "{{ steps.found.value | length == 1 }}"}
    inloox.update: Task
    key: "{{ steps.found.value[0].TaskItemId }}"
    values: {IsDone: true}
"""

DROP_RULE = """
id: chat-drop
description: Delete a task.
when:
  - chat: "drop <task>"
then:
  - inloox.delete: Task
    key: "{{ chat.args.task }}"
"""

LOG_RULE = """
id: chat-log
description: Book time on a task for the person who typed the command.
when:
  - chat: "log <hours:number> <task>"
then:
  - id: task
    inloox.get: Task
    key: "{{ chat.args.task }}"
  - inloox.create: TimeEntry
    values:
      ProjectId: "{{ steps.task.ProjectId }}"
      TaskItemId: "{{ chat.args.task }}"
      PerformedByContactId: "{{ chat.user.ContactId }}"
      DisplayName: "{{ steps.task.Name }}"
      StartDateTime: "{{ (now - hours(chat.args.hours)) | isoformat }}"
      EndDateTime: "{{ now | isoformat }}"
"""


def test_slacks_documented_example_verifies():
    headers = {"X-Slack-Request-Timestamp": "1531420618", "X-Slack-Signature": SLACK_EXAMPLE_SIGNATURE}
    verify_slack(SLACK_EXAMPLE_BODY.encode(), headers, SLACK_SECRET, now=1531420618)


@pytest.mark.parametrize("change", [
    {"body": SLACK_EXAMPLE_BODY.replace("roadrunner", "coyote")},  # tampered body
    {"now": 1531420618 + 301},                                       # old
    {"now": 1531420618 - 301},                                       # from the future
    {"secret": "another-secret"},
    {"drop": "X-Slack-Signature"},
    {"drop": "X-Slack-Request-Timestamp"},
    {"signature": "v0=" + "0" * 64},
])
def test_slack_signature_matrix_rejects(change):
    headers = {"X-Slack-Request-Timestamp": "1531420618",
               "X-Slack-Signature": change.get("signature", SLACK_EXAMPLE_SIGNATURE)}
    headers.pop(change.get("drop", ""), None)
    with pytest.raises(SignatureError):
        verify_slack(change.get("body", SLACK_EXAMPLE_BODY).encode(), headers, change.get("secret", SLACK_SECRET),
                     now=change.get("now", 1531420618))


@pytest.fixture
def chat_app(redis_url, sandbox, rules_dir):
    for name, text in (("done", DONE_RULE), ("drop", DROP_RULE), ("log", LOG_RULE)):
        write_rule(rules_dir, name, text)
    return create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                       "INLOOX_API_KEY": sandbox.token, "RULES_PATH": str(rules_dir),
                       "SLACK_SIGNING_SECRET": SLACK_SECRET, "TEAMS_SECURITY_TOKEN": TEAMS_TOKEN,
                       "CHAT_USER_MAP": "U2CERLKJA=ann@example.com"})


def slack_body(text: str, *, trigger_id: str = "t1", user_id: str = "U2CERLKJA",
               response_url: str = "https://hooks.slack.com/commands/T1/1/x") -> str:
    return urlencode({"token": "x", "team_id": "T1DC2JH3J", "user_id": user_id, "user_name": "roadrunner",
                      "command": "/inloox", "text": text, "response_url": response_url, "trigger_id": trigger_id})


def slack_headers(body: str, *, age: int = 0, secret: str = SLACK_SECRET) -> dict:
    stamp = str(int(time.time()) - age)
    return {"X-Slack-Request-Timestamp": stamp, "content-type": "application/x-www-form-urlencoded",
            "X-Slack-Signature": SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)}


@pytest.fixture
def slack(chat_app):
    """Send a signed slash command; returns the Flask response."""
    client = chat_app.test_client()

    def send(text: str, **options):
        body = slack_body(text, **options)
        return client.post("/chat/slack", data=body, headers=slack_headers(body))

    return send


def queued_events(redis_url) -> list[dict]:
    """The accepted events no worker has handled yet (the default workspace's event log)."""
    return [entry.event for entry in eventlog.waiting(redis.Redis.from_url(redis_url), workspace="default")]


@pytest.mark.parametrize("age, tamper, status", [(0, False, 200), (301, False, 401), (-301, False, 401),
                                                 (0, True, 401)])
def test_slack_endpoint_checks_the_signature_and_its_age(chat_app, age, tamper, status):
    body = slack_body("help")
    headers = slack_headers(body, age=age)
    sent = body.replace("help", "hel") if tamper else body
    assert chat_app.test_client().post("/chat/slack", data=sent, headers=headers).status_code == status


def test_slack_endpoint_without_signature_headers_is_401(chat_app):
    response = chat_app.test_client().post("/chat/slack", data=slack_body("help"),
                                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 401


def test_an_unknown_command_gets_the_commands_the_rules_define(slack, redis_url):
    response = slack("frobnicate everything")
    assert response.status_code == 200 and response.json["response_type"] == "ephemeral"
    text = response.json["text"]
    assert "Unknown command `frobnicate`" in text
    for usage in ("/inloox done <task>", "/inloox drop <task>", "/inloox log <hours:number> <task>",
                  "/inloox confirm <code>"):
        assert usage in text
    assert queued_events(redis_url) == []


def test_a_command_that_does_not_fit_its_pattern_gets_its_usage(slack):
    assert "/inloox log <hours:number> <task>" in slack("log lots Write report").json["text"]


def test_an_ambiguous_task_name_gets_a_pick_list_and_no_run(slack, sandbox, redis_url):
    first, second = make_task(sandbox, "Write report"), make_task(sandbox, "Write report draft")
    text = slack("done Write rep").json["text"]
    assert "Several open tasks fit 'Write rep'" in text
    assert f"/inloox done {first}" in text and f"/inloox done {second}" in text
    assert queued_events(redis_url) == []


def test_a_task_name_is_pinned_to_the_one_task_it_names(slack, sandbox, redis_url):
    task = make_task(sandbox, "Write report")
    make_task(sandbox, "Write report draft")
    text = slack("done Write report").json["text"]
    assert text.startswith("On it: Mark a task done.") and "The result follows here." in text
    [event] = queued_events(redis_url)
    assert event["source"] == "chat" and event["kind"] == "done" and event["id"] == "chat:slack:t1"
    assert event["payload"]["text"] == task and event["payload"]["typed"] == "done Write report"


def test_an_unknown_task_name_is_said_so(slack, redis_url):
    assert slack("done Nothing like it").json["text"] == "No open task is called or contains 'Nothing like it'."
    assert queued_events(redis_url) == []


def test_the_same_trigger_id_queues_one_event(slack, sandbox, redis_url):
    make_task(sandbox, "Write report")
    replies = [slack("done Write report", trigger_id="same").json["text"] for _ in range(3)]
    assert replies[0].startswith("On it") and replies[1].startswith("Already received")
    assert len(queued_events(redis_url)) == 1


def test_the_slack_user_is_mapped_to_their_inloox_contact(slack, sandbox, redis_url):
    ann = sandbox.add_user("ann-token", "Ann", "Other")  # email ann@example.com
    task = make_task(sandbox, "Write report")
    slack(f"log 1.5 {task}")
    [event] = queued_events(redis_url)
    assert event["actor"]["ContactId"] == ann == event["payload"]["user"]["ContactId"]


def test_a_delete_waits_for_its_confirmation_and_runs_once(slack, sandbox, redis_url):
    task = make_task(sandbox, "Old task")
    text = slack(f"drop {task}").json["text"]
    assert "This will: Delete a task. (delete Task" in text and "because it deletes" in text
    code = re.search(r"confirm (\d{6})", text).group(1)
    assert queued_events(redis_url) == []

    assert "No command of yours" in slack(f"confirm {code}", trigger_id="t2", user_id="USOMEONE").json["text"]
    assert "No command of yours" in slack("confirm 000000", trigger_id="t3").json["text"]
    assert queued_events(redis_url) == []

    assert slack(f"confirm {code}", trigger_id="t4").json["text"].startswith(f"Confirmed: `drop {task}`")
    assert "No command of yours" in slack(f"confirm {code}", trigger_id="t5").json["text"]
    [event] = queued_events(redis_url)
    assert event["kind"] == "drop" and event["id"] == "chat:slack:t1"


# --- Teams -------------------------------------------------------------------------------------------

def teams_auth(raw: bytes, token: str = TEAMS_TOKEN) -> str:
    digest = hmac.new(base64.b64decode(token), raw, hashlib.sha256).digest()
    return "HMAC " + base64.b64encode(digest).decode()


def activity(text: str, activity_id: str = "1485983408511") -> bytes:
    return json.dumps({"type": "message", "id": activity_id, "text": f"<at>InLoox</at> {text}",
                       "from": {"id": "29:1", "name": "Ann Other", "aadObjectId": "aad-ann"}}).encode()


@pytest.mark.parametrize("auth, status", [
    (lambda raw: teams_auth(raw), 200),
    (lambda raw: teams_auth(raw + b" "), 401),                                      # tampered body
    (lambda raw: teams_auth(raw, base64.b64encode(b"another token").decode()), 401),
    (lambda raw: teams_auth(raw).replace("HMAC", "Bearer"), 401),
    (lambda raw: None, 401),                                                        # missing header
])
def test_teams_signature_matrix(chat_app, auth, status):
    raw = activity("help")
    header = auth(raw)
    headers = {"content-type": "application/json", **({"Authorization": header} if header else {})}
    response = chat_app.test_client().post("/chat/teams", data=raw, headers=headers)
    assert response.status_code == status
    if status == 200:
        assert response.json["type"] == "message" and "done <task>" in response.json["text"]


def test_teams_commands_are_deduplicated_by_activity_id(chat_app, sandbox, redis_url):
    make_task(sandbox, "Write report")
    client = chat_app.test_client()
    raw = activity("done Write report", activity_id="act-1")
    replies = [client.post("/chat/teams", data=raw, headers={"content-type": "application/json",
                                                               "Authorization": teams_auth(raw)}).json["text"]
               for _ in range(2)]
    assert replies[0].startswith("On it: Mark a task done.") and replies[1].startswith("Already received")
    [event] = queued_events(redis_url)
    assert event["id"] == "chat:teams:act-1"


# --- Round trips with real processes -----------------------------------------------------------------

@pytest.fixture
def chat_stack(engine, rules_dir, receiver):
    for name, text in (("done", DONE_RULE), ("drop", DROP_RULE), ("log", LOG_RULE)):
        write_rule(rules_dir, name, text)
    engine.env.update(SLACK_SIGNING_SECRET=SLACK_SECRET, CHAT_USER_MAP="U2CERLKJA=ann@example.com")
    engine.worker()
    web = engine.web()

    def send(text: str, trigger_id: str) -> requests.Response:
        body = slack_body(text, trigger_id=trigger_id, response_url=f"{receiver.url}/slack-response")
        return requests.post(f"{web}/chat/slack", data=body, headers=slack_headers(body), timeout=5)

    return send


def test_a_slash_command_marks_the_task_done_and_posts_the_result(chat_stack, sandbox, receiver, redis_url):
    task = make_task(sandbox, "Write report")
    reply = chat_stack("done Write report", "rt-1")
    assert reply.status_code == 200 and reply.json()["text"].startswith("On it: Mark a task done.")

    [message] = wait_until(lambda: receiver.received, 15, "the result at response_url")
    assert message["path"] == "/slack-response"
    assert message["body"]["response_type"] == "ephemeral"
    assert message["body"]["text"].startswith("`done Write report`: succeeded")
    assert sandbox.get(f"Task({task})").json()["IsDone"] is True
    assert [r["status"] for r in all_runs(redis_url)] == ["succeeded"]


def test_a_confirmed_delete_runs_exactly_once(chat_stack, sandbox, receiver, redis_url):
    task = make_task(sandbox, "Old task")
    code = re.search(r"confirm (\d{6})", chat_stack(f"drop {task}", "rt-2").json()["text"]).group(1)
    assert sandbox.count("Task", f"TaskItemId eq {task}") == 1  # nothing happens before the confirmation
    for n in range(3):
        chat_stack(f"confirm {code}", f"rt-3-{n}")
    wait_until(lambda: receiver.received, 15, "the result at response_url")
    assert sandbox.count("Task", f"TaskItemId eq {task}") == 0
    assert [r["rule_id"] for r in all_runs(redis_url)] == ["chat-drop"]
    assert len(receiver.received) == 1


def test_time_is_booked_for_the_person_who_typed_the_command(chat_stack, sandbox, receiver):
    ann = sandbox.add_user("ann-token", "Ann", "Other")
    task = make_task(sandbox, "Write report")
    chat_stack("log 2 Write report", "rt-4")
    [entry] = wait_until(lambda: sandbox.get("TimeEntry").json()["value"], 15, "the time entry")
    assert entry["PerformedByContactId"] == ann and entry["TaskItemId"] == task
    assert entry["DurationMinutes"] == 120


def test_each_workspace_has_its_own_slack_app_commands_and_queue(redis_url, sandbox, tmp_path):
    from workers.workspaces import Workspace

    other_secret = "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d"
    served = {}
    for name, secret, rule in (("acme", SLACK_SECRET, DONE_RULE), ("globex", other_secret, LOG_RULE)):
        folder = tmp_path / name
        folder.mkdir()
        write_rule(folder, "rule", rule)
        served[name] = Workspace(name, sandbox.base_url, sandbox.token, rules_path=str(folder),
                                 slack_signing_secret=secret)
    client = create_app({"TESTING": True, "REDIS_URL": redis_url, "WORKSPACES": served}).test_client()

    def send(workspace: str, text: str, secret: str, trigger_id: str = "t1"):
        body = slack_body(text, trigger_id=trigger_id)
        return client.post(f"/workspaces/{workspace}/chat/slack", data=body, headers=slack_headers(body, secret=secret))

    acme_help, globex_help = send("acme", "help", SLACK_SECRET).json["text"], send("globex", "help", other_secret).json["text"]
    assert "done <task>" in acme_help and "log" not in acme_help
    assert "log <hours:number> <task>" in globex_help and "done" not in globex_help
    assert send("acme", "help", other_secret).status_code == 401  # globex's Slack app cannot speak for acme

    task = make_task(sandbox)
    assert send("acme", f"done {task}", SLACK_SECRET, trigger_id="t2").status_code == 200
    connection = redis.Redis.from_url(redis_url)
    [entry] = eventlog.waiting(connection, workspace="acme")
    assert entry.event["kind"] == "done"
    assert eventlog.waiting(connection, workspace="globex") == []
