"""`POST /chat/slack`, `/chat/slack/interactive` and `/chat/teams`: signatures, replies, confirmation (typed
and by Slack's buttons), pick-lists, user mapping.

The app runs in-process against the test's Redis and sandbox; queued events are read from RQ's queue.
The round trips at the end run a real web and worker process with the receiver as Slack's response_url.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
import redis
import requests
from workers import eventlog
from slack_sdk.signature import SignatureVerifier

from app import create_app
from tests.support.bundled import HELLO, LARGE, bundled_app, compiled_from, heavy_turn_held, large_bundle, upload
from tests.support.crashes import frozen_at
from tests.support.processes import wait_until
from tests.support.stack import PREFIX, all_runs, make_task, write_rule
from tests.support.valkey import Valkey
from web.signatures import SignatureError, verify_slack
from web import commands
from web.commands import ANSWER_SECONDS, CONFIRMED
from web.slack_buttons import CONFIRM
from workers.chat import result_text

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


def logged_events(web: str) -> list[dict]:
    """The events the web's event log lists (GET /events), handled or not.

    The web stores a command's event before it answers (web/commands.py), and runs are made only from stored events:
    a command answered with no event listed has made no run and will make none, so a test need not wait to see that.
    """
    listed = requests.get(f"{web}/events", timeout=5)
    assert listed.status_code == 200, listed.text
    return listed.json()["events"]


# A stamp 301 s ahead came within the 300 s window when the second turned before the check (the stamp is
# whole seconds): ahead by 310 leaves room for that and a busy machine.
@pytest.mark.parametrize("age, tamper, status", [(0, False, 200), (301, False, 401), (-310, False, 401),
                                                 (0, True, 401)])
def test_slack_endpoint_checks_the_signature_and_its_age(chat_app, age, tamper, status):
    body = slack_body("help")
    headers = slack_headers(body, age=age)
    sent = body.replace("help", "hel") if tamper else body
    assert chat_app.test_client().post("/chat/slack", data=sent, headers=headers).status_code == status


@pytest.mark.parametrize("path", ["/chat/slack", "/chat/slack/interactive"])
def test_a_slack_signature_that_is_not_ascii_is_401(chat_app, path):
    # Unsigned, with a fresh timestamp: the verifier's compare_digest raised TypeError on it, a 500 for anyone.
    body = slack_body("help")
    headers = {**slack_headers(body), "X-Slack-Signature": "v0=\xe9"}  # the header's bytes, read as Latin-1
    response = chat_app.test_client().post(path, data=body, headers=headers)
    assert response.status_code == 401 and "Slack signature rejected" in response.json["error"]["message"]


def test_slack_endpoint_without_signature_headers_is_401(chat_app):
    response = chat_app.test_client().post("/chat/slack", data=slack_body("help"),
                                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 401


@pytest.mark.parametrize("signed", [True, False])
def test_slacks_certificate_check_is_an_empty_200_that_does_nothing(chat_app, redis_url, signed):
    # Slack checks the URL's certificate with `ssl_check=1` (and the legacy token), no command and no trigger_id;
    # it wants a 200. That was a 400 "no trigger_id" signed, a 401 unsigned.
    client, connection = chat_app.test_client(), redis.Redis.from_url(redis_url)
    assert client.post("/chat/slack", data={"text": "help"}).status_code == 401  # the workspace registry is set up
    before = set(connection.keys("*"))
    body = urlencode({"ssl_check": "1", "token": "x"})
    headers = slack_headers(body) if signed else {"content-type": "application/x-www-form-urlencoded"}
    response = client.post("/chat/slack", data=body, headers=headers)
    assert response.status_code == 200 and response.data == b""
    assert set(connection.keys("*")) == before and queued_events(redis_url) == []


@pytest.mark.parametrize("body", [urlencode({"ssl_check": "0", "token": "x"}), urlencode({"ssl_check": "yes"}),
                                  slack_body("help") + "&ssl_check=0"])
def test_an_unsigned_request_that_is_no_certificate_check_is_still_refused(chat_app, redis_url, body):
    response = chat_app.test_client().post("/chat/slack", data=body,
                                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 401 and "Slack signature rejected" in response.json["error"]["message"]
    assert queued_events(redis_url) == []


@pytest.mark.parametrize("user_id", [None, "", "  "])
def test_a_signed_command_without_a_user_id_is_a_400_and_holds_nothing(chat_app, sandbox, redis_url, user_id):
    # Codes are kept under the person's id: one kept under "" was anyone's without an id to confirm.
    task = make_task(sandbox, "Old task")
    body = slack_body(f"drop {task}", user_id=user_id or "")
    body = body.replace("user_id=&", "") if user_id is None else body
    response = chat_app.test_client().post("/chat/slack", data=body, headers=slack_headers(body))
    assert response.status_code == 400 and "user_id" in response.json["error"]["message"]
    assert redis.Redis.from_url(redis_url).keys("*chat:*") == [] and queued_events(redis_url) == []


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


@pytest.mark.parametrize("hours", ["1" * 5000, "1" * 400 + ".5"])
def test_a_number_beyond_a_numbers_range_does_not_fit_its_pattern(slack, sandbox, redis_url, hours):
    # 5,000 digits were a 500 (int() refuses over 4,300); a 400-digit decimal was stored as infinity hours.
    task = make_task(sandbox, "Write report")
    response = slack(f"log {hours} {task}")
    assert response.status_code == 200
    assert response.json["text"].startswith("That does not fit `log`") and queued_events(redis_url) == []


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
    assert slack(f"confirm {code}", trigger_id="t5").json["text"].startswith("Already confirmed")
    [event] = queued_events(redis_url)
    assert event["kind"] == "drop" and event["id"] == "chat:slack:t1"


@pytest.mark.parametrize("first", ["pending", CONFIRMED])
def test_a_code_drawn_again_for_the_same_person_is_not_given_to_a_second_command(slack, sandbox, redis_url,
                                                                                 monkeypatch, first):
    """Codes are drawn at random, and a second command drew the code of the person's first one, pending or settled
    (whose message still shows its buttons until the outcome replaces them): the second replaced the first under
    it, so a click on the first command's Confirm ran the second, a delete the person had not confirmed. Now a code
    is drawn again until it is no other command's of this person's."""
    old, new = make_task(sandbox, "Old task"), make_task(sandbox, "Keep this")
    draws = iter([23_456, 23_456, 34_567])  # codes 123456, 123456 again, then 134567
    monkeypatch.setattr(commands.secrets, "randbelow", lambda _: next(draws))
    assert held_code(slack(f"drop {old}").json) == "123456"
    if first == CONFIRMED:
        assert slack("confirm 123456", trigger_id="t2").json["text"].startswith(f"Confirmed: `drop {old}`")

    assert held_code(slack(f"drop {new}", trigger_id="t3").json) == "134567"
    again = slack("confirm 123456", trigger_id="t4").json["text"]  # the first command's button, clicked (again)

    expected = "Already confirmed" if first == CONFIRMED else f"Confirmed: `drop {old}`"
    assert again.startswith(expected), again
    assert [e["payload"]["typed"] for e in queued_events(redis_url)] == [f"drop {old}"]


def test_a_confirm_code_is_six_digits_so_no_one_confirms_a_command_held_for_a_longer_id(slack, sandbox, redis_url):
    """A held command is kept under `<surface>:<user id>:<code>`, and the code was taken as typed. Teams ids hold
    colons (`29:1…`): the person whose id is `29` confirmed `29:1`'s command with `confirm 1:<code>`. Codes are six
    digits, so anything else is no code of anyone's."""
    task = make_task(sandbox, "Old task")
    code = re.search(r"confirm (\d{6})", slack(f"drop {task}", user_id="U29:1").json["text"]).group(1)

    taken = slack(f"confirm 1:{code}", trigger_id="t2", user_id="U29").json["text"]
    assert "No command of yours" in taken and queued_events(redis_url) == []
    assert slack(f"confirm {code}", trigger_id="t3", user_id="U29:1").json["text"].startswith("Confirmed")


# A command's text may fill the 64 KiB body: quoted whole, a reply went past what Slack and Teams show.
@pytest.mark.parametrize("text", ["x" * 60_000, "confirm " + "x" * 60_000, "done " + "x" * 60_000])
def test_a_reply_quotes_at_most_the_start_of_what_was_typed(slack, redis_url, text):
    reply = slack(text).json["text"]
    assert "x" * 80 + "…" in reply and "x" * 81 not in reply and len(reply) < 1000
    assert queued_events(redis_url) == []


def test_a_pick_list_and_a_confirmation_quote_at_most_the_start_of_a_long_task_name(slack, sandbox):
    make_task(sandbox, "o" * 200 + " one"), make_task(sandbox, "o" * 200 + " two")
    heading = slack("done " + "o" * 200).json["text"].splitlines()[0]  # the lines below name the tasks as InLoox does
    assert heading == f"Several open tasks fit '{'o' * 80}…'. Which one?"
    make_task(sandbox, "p" * 200)
    code = held_code(slack("drop " + "p" * 200, trigger_id="t2").json)
    confirmed = slack(f"confirm {code}", trigger_id="t3").json["text"]
    assert confirmed.startswith(f"Confirmed: `{'drop ' + 'p' * 75}…` is on its way.")


def test_a_posted_result_quotes_at_most_the_start_of_the_command():
    event = {"kind": "done", "payload": {"typed": "done " + "q" * 60_000}}
    run = {"status": "succeeded", "steps": [], "plan": {"event": event}}
    assert result_text(run) == f"`{'done ' + 'q' * 75}…`: succeeded"


# --- Slack's Confirm / Cancel buttons ------------------------------------------------------------------

def click_body(action: str, code: str, *, user_id: str = "U2CERLKJA", kind: str = "block_actions",
               response_url: str = "https://hooks.slack.com/actions/T1/1/x") -> str:
    """Slack's interaction request for a click on one of our buttons (the form field `payload`, JSON)."""
    payload = {"type": kind, "user": {"id": user_id, "username": "roadrunner", "team_id": "T1DC2JH3J"},
               "team": {"id": "T1DC2JH3J"}, "trigger_id": f"click-{action}-{code}", "response_url": response_url,
               "container": {"type": "message", "is_ephemeral": True},
               "actions": [{"type": "button", "block_id": "confirmation", "action_id": action, "value": code,
                            "action_ts": "1531420618.000001"}]}
    return urlencode({"payload": json.dumps(payload)})


@pytest.fixture
def click(chat_app):
    """Send a signed click on one of our buttons; returns the Flask response."""
    client = chat_app.test_client()

    def send(action: str, code: str, *, secret: str = SLACK_SECRET, **options):
        body = click_body(action, code, **options)
        return client.post("/chat/slack/interactive", data=body, headers=slack_headers(body, secret=secret))

    return send


def held_code(reply: dict) -> str:
    return re.search(r"confirm (\d{6})", reply["text"]).group(1)


def test_a_plan_that_needs_confirmation_comes_with_confirm_and_cancel_buttons(slack, sandbox):
    task = make_task(sandbox, "Old task")
    reply = slack(f"drop {task}").json
    code = held_code(reply)  # the typed form stays, as the fallback text
    section, actions = reply["blocks"]
    assert section["type"] == "section" and section["text"]["text"].startswith("This will: Delete a task.")
    confirm_button, cancel_button = actions["elements"]
    assert (confirm_button["text"]["text"], confirm_button["style"], confirm_button["value"]) == ("Confirm", "primary", code)
    assert (cancel_button["text"]["text"], cancel_button["value"]) == ("Cancel", code)
    assert SLACK_SECRET not in json.dumps(reply)


def test_a_command_that_needs_no_confirmation_has_no_buttons(slack, sandbox):
    make_task(sandbox, "Write report")
    assert "blocks" not in slack("done Write report").json


@pytest.mark.parametrize("tamper", ["secret", "body", "unsigned"])
def test_a_click_with_a_bad_signature_runs_nothing(chat_app, slack, sandbox, redis_url, tamper):
    task = make_task(sandbox, "Old task")
    code = held_code(slack(f"drop {task}").json)
    body = click_body("confirm", code)
    headers = slack_headers(body, secret="another-secret" if tamper == "secret" else SLACK_SECRET)
    if tamper == "unsigned":
        headers = {"content-type": "application/x-www-form-urlencoded"}
    sent = body.replace("confirm", "cancel") if tamper == "body" else body
    response = chat_app.test_client().post("/chat/slack/interactive", data=sent, headers=headers)
    assert response.status_code == 401 and "Slack signature rejected" in response.json["error"]["message"]
    assert queued_events(redis_url) == []
    # The refused click settled nothing: the plan still waits for its confirmation.
    assert slack(f"confirm {code}", trigger_id="t2").json["text"].startswith(f"Confirmed: `drop {task}`")


@pytest.mark.parametrize("body, named", [
    (click_body("confirm", "123456", kind="view_submission"), "'view_submission' are not handled"),
    (click_body("confirm", "123456", kind="message_action"), "'message_action' are not handled"),
    (click_body("approve", "123456"), "the action 'approve' is not a button of ours"),
    (urlencode({"payload": "{not json"}), "the payload field is not valid JSON"),
    (urlencode({"payload": "[1, 2]"}), "not a JSON object"),
    (urlencode({"payload": json.dumps({"type": "block_actions", "actions": []})}), "has no actions"),
    (urlencode({"text": "confirm 123456"}), "no 'payload' form field"),
    (click_body("confirm", "123456", user_id=""), "names no user id"),
])
def test_an_interaction_we_do_not_handle_is_a_400_naming_it(chat_app, redis_url, body, named):
    response = chat_app.test_client().post("/chat/slack/interactive", data=body, headers=slack_headers(body))
    assert response.status_code == 400 and named in response.json["error"]["message"]
    assert queued_events(redis_url) == []


def test_a_click_is_acknowledged_at_once_and_someone_elses_click_runs_nothing(slack, click, sandbox, redis_url):
    task = make_task(sandbox, "Old task")
    code = held_code(slack(f"drop {task}").json)
    response = click("confirm", code, user_id="USOMEONE")  # the code is only the person's who typed it
    assert response.status_code == 200 and response.data == b""
    assert queued_events(redis_url) == []
    assert slack(f"confirm {code}", trigger_id="t2").json["text"].startswith(f"Confirmed: `drop {task}`")


def test_a_click_whose_response_url_is_not_slacks_is_a_400_and_settles_nothing(slack, click, sandbox, redis_url):
    task = make_task(sandbox, "Old task")
    code = held_code(slack(f"drop {task}").json)
    response = click("confirm", code, response_url="https://hooks.slack.com.example.net/actions/T1/1/x")
    assert response.status_code == 400 and b"not on SLACK_RESPONSE_HOSTS" in response.data
    assert queued_events(redis_url) == []
    assert slack(f"confirm {code}", trigger_id="t2").json["text"].startswith(f"Confirmed: `drop {task}`")


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


ANN = {"id": "29:1", "name": "Ann Other", "aadObjectId": "aad-ann"}


@pytest.mark.parametrize("fields, named", [
    ({"text": 42}, "'text' is not a string"),
    ({"text": ["done", "Write report"]}, "'text' is not a string"),
    ({"from": "Ann Other"}, "'from' is not an object"),
    ({"from": ["29:1"]}, "'from' is not an object"),
    ({"from": {"name": "Ann Other"}}, "'from' has no id"),
    ({"from": {**ANN, "id": 29}}, "'from' has no id"),
    ({"from": {**ANN, "name": {"first": "Ann"}}}, "'from.name' is not a string"),
    ({"from": {**ANN, "aadObjectId": ["aad-ann"]}}, "'from.aadObjectId' is not a string"),
    ({"id": {"n": 1}}, "not a Teams activity with an id"),
])
def test_a_signed_teams_activity_of_the_wrong_shape_is_a_400_naming_what(chat_app, redis_url, fields, named):
    # Signed is not well-formed: what Teams (or whoever holds the token) sends is checked as any body from outside.
    raw = json.dumps({"type": "message", "id": "act-bad", "text": "<at>InLoox</at> done Write report", "from": ANN,
                      **fields}).encode()
    response = chat_app.test_client().post("/chat/teams", data=raw, headers={"content-type": "application/json",
                                                                             "Authorization": teams_auth(raw)})
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert named in response.json["error"]["message"]
    assert queued_events(redis_url) == []


def test_a_teams_text_of_unclosed_mentions_is_answered_at_once(chat_app, redis_url):
    # Each "<at>" was tried to the end of the text for its "</at>": 15,000 of them took the process 5 s or more.
    raw = json.dumps({"type": "message", "id": "act-at", "text": "<at>InLoox</at> help " + "<at>" * 15_000,
                      "from": ANN}).encode()
    began = time.monotonic()
    response = chat_app.test_client().post("/chat/teams", data=raw, headers={"content-type": "application/json",
                                                                             "Authorization": teams_auth(raw)})
    took = time.monotonic() - began
    assert response.status_code == 200 and "done <task>" in response.json["text"]
    assert took < 1.5, f"{took:.1f} s"
    assert queued_events(redis_url) == []


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
def chat_web(engine, rules_dir):
    """A real web and worker process serving the chat rules; the web's base URL."""
    for name, text in (("done", DONE_RULE), ("drop", DROP_RULE), ("log", LOG_RULE)):
        write_rule(rules_dir, name, text)
    engine.env.update(SLACK_SIGNING_SECRET=SLACK_SECRET, CHAT_USER_MAP="U2CERLKJA=ann@example.com")
    engine.worker()
    return engine.web()


@pytest.fixture
def chat_stack(chat_web, receiver):
    """Send a signed slash command to the real web, with the receiver as its response_url."""
    def send(text: str, trigger_id: str) -> requests.Response:
        body = slack_body(text, trigger_id=trigger_id, response_url=f"{receiver.url}/slack-response")
        return requests.post(f"{chat_web}/chat/slack", data=body, headers=slack_headers(body), timeout=5)

    return send


@pytest.fixture
def stack_click(chat_web, receiver):
    """Send a signed button click to the real web; the outcome is posted to the receiver at /slack-action."""
    def send(action: str, code: str) -> requests.Response:
        body = click_body(action, code, response_url=f"{receiver.url}/slack-action")
        return requests.post(f"{chat_web}/chat/slack/interactive", data=body, headers=slack_headers(body), timeout=5)

    return send


def posted(receiver, path: str) -> list[dict]:
    return [m["body"] for m in receiver.received if m["path"] == path]


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


def test_a_confirm_click_runs_the_plan_once_and_a_second_click_runs_nothing(chat_stack, stack_click, sandbox,
                                                                            receiver, redis_url):
    task = make_task(sandbox, "Old task")
    code = held_code(chat_stack(f"drop {task}", "rt-5").json())
    first, second = stack_click("confirm", code), stack_click("confirm", code)
    assert (first.status_code, first.text, second.status_code) == (200, "", 200)

    messages = wait_until(lambda: len(posted(receiver, "/slack-action")) == 3 and posted(receiver, "/slack-action"),
                          15, "two click outcomes and the run's result at the click's response_url")
    outcomes = [m for m in messages if m.get("replace_original")]
    assert sorted(m["text"].split(":")[0] for m in outcomes) == ["Already confirmed", "Confirmed"]
    [result] = [m for m in messages if not m.get("replace_original")]
    assert result["text"].startswith(f"`drop {task}`: succeeded")
    assert sandbox.count("Task", f"TaskItemId eq {task}") == 0
    assert [r["rule_id"] for r in all_runs(redis_url)] == ["chat-drop"]
    # A typed confirm after the click meets the same claim.
    assert chat_stack(f"confirm {code}", "rt-6").json()["text"].startswith("Already confirmed")
    assert len(all_runs(redis_url)) == 1


def test_a_cancel_click_drops_the_plan_so_no_confirm_runs_it(chat_stack, stack_click, sandbox, receiver, redis_url):
    task = make_task(sandbox, "Old task")
    code = held_code(chat_stack(f"drop {task}", "rt-7").json())
    assert stack_click("cancel", code).status_code == 200
    [cancelled] = wait_until(lambda: posted(receiver, "/slack-action"), 15, "the Cancel outcome")
    assert cancelled == {"response_type": "ephemeral", "replace_original": True,
                         "text": f"Cancelled: `drop {task}` will not run."}

    assert stack_click("confirm", code).status_code == 200
    wait_until(lambda: len(posted(receiver, "/slack-action")) == 2, 15, "the later Confirm's outcome")
    assert "was cancelled; nothing runs" in posted(receiver, "/slack-action")[1]["text"]
    assert "was cancelled; nothing runs" in chat_stack(f"confirm {code}", "rt-8").json()["text"]
    assert sandbox.count("Task", f"TaskItemId eq {task}") == 1
    assert all_runs(redis_url) == [] and queued_events(redis_url) == []


@pytest.fixture
def own_valkey(tmp_path, engine):
    """This test's own Valkey (AOF in tmp_path), which the test may stop and start again; the stack uses it."""
    server = Valkey(tmp_path / "redis").start()
    engine.env["REDIS_URL"] = server.url
    yield server
    engine.end()  # the stack's processes go before their Redis does
    if server.alive():
        server.stop()


@pytest.mark.timeout(120)
def test_a_confirm_click_that_meets_a_redis_outage_runs_the_plan_once_when_clicked_again(
        engine, own_valkey, rules_dir, sandbox, receiver):
    """Redis goes away after a Confirm click took the held plan and before its event is submitted: the click is
    answered 503 ("please click again"); the next click runs the plan, once, rather than "Already confirmed"."""
    write_rule(rules_dir, "drop", DROP_RULE)
    engine.env.update(SLACK_SIGNING_SECRET=SLACK_SECRET)
    engine.worker()
    engine.env["ENGINE_FAILPOINTS"] = "freeze:chat_confirmed"  # the web only: it stops once the plan is taken
    web = engine.web()
    del engine.env["ENGINE_FAILPOINTS"]
    [web_process] = [p for p in engine.processes if p.name == "web"]

    def click_confirm(code: str) -> requests.Response:
        body = click_body(CONFIRM, code, response_url=f"{receiver.url}/slack-action")
        return requests.post(f"{web}/chat/slack/interactive", data=body, headers=slack_headers(body), timeout=60)

    task = make_task(sandbox, "Old task")
    body = slack_body(f"drop {task}", trigger_id="rt-outage", response_url=f"{receiver.url}/slack-response")
    code = held_code(requests.post(f"{web}/chat/slack", data=body, headers=slack_headers(body), timeout=10).json())

    first: list[requests.Response] = []
    clicking = threading.Thread(target=lambda: first.append(click_confirm(code)))
    clicking.start()
    wait_until(lambda: frozen_at(web_process, "chat_confirmed"), 20, "the web to freeze with the plan taken")
    own_valkey.stop()  # a clean stop writes the AOF: the take is still there when Valkey is back
    web_process.signal(signal.SIGCONT)
    clicking.join(60)
    assert first and first[0].status_code == 503, first and first[0].text
    own_valkey.start()

    assert click_confirm(code).status_code == 200
    [outcome] = wait_until(lambda: [m for m in posted(receiver, "/slack-action") if m.get("replace_original")], 20,
                           "the second click's outcome")
    assert outcome["text"].startswith("Confirmed:"), outcome["text"]
    wait_until(lambda: sandbox.count("Task", f"TaskItemId eq {task}") == 0, 20, "the confirmed delete to run")
    assert [r["rule_id"] for r in all_runs(own_valkey.url)] == ["chat-drop"]


def test_time_is_booked_for_the_person_who_typed_the_command(chat_stack, sandbox, receiver):
    ann = sandbox.add_user("ann-token", "Ann", "Other")
    task = make_task(sandbox, "Write report")
    chat_stack("log 2 Write report", "rt-4")
    [entry] = wait_until(lambda: sandbox.get("TimeEntry").json()["value"], 15, "the time entry")
    assert entry["PerformedByContactId"] == ann and entry["TaskItemId"] == task
    assert entry["DurationMinutes"] == 120


def test_a_command_whose_response_url_is_not_slacks_runs_nothing_and_gets_nothing_posted(
        request, engine, sandbox, receiver, redis_url):
    """SLACK_RESPONSE_HOSTS at its default (hooks.slack.com): a signed command whose response_url is the receiver is
    refused, said in the reply and the web's log, and nothing is posted there (the outbound guard alone let it)."""
    del engine.env["SLACK_RESPONSE_HOSTS"]
    web = request.getfixturevalue("chat_web")
    task = make_task(sandbox, "Write report")
    body = slack_body("done Write report", trigger_id="rt-foreign", response_url=f"{receiver.url}/slack-response")
    reply = requests.post(f"{web}/chat/slack", data=body, headers=slack_headers(body), timeout=5)
    assert logged_events(web) == [] and all_runs(redis_url) == [] and receiver.received == []
    assert reply.status_code == 200
    assert reply.json()["text"].startswith("Nothing was done: the response_url's host (http://127.0.0.1) is not on "
                                           "SLACK_RESPONSE_HOSTS"), reply.text
    assert sandbox.get(f"Task({task})").json()["IsDone"] is False
    wait_until(lambda: "not on SLACK_RESPONSE_HOSTS" in engine.logs(), 5, "the refusal in the web's log")


def test_a_queued_reply_to_a_host_not_on_slack_response_hosts_is_not_posted(stack, receiver, redis_url, workspace):
    """The worker checks too (a reply queued before the setting was narrowed): the job says so, and posts nothing."""
    from workers.chat import queue_reply

    del stack.env["SLACK_RESPONSE_HOSTS"]
    queue_reply(redis.Redis.from_url(redis_url), receiver.url + "/slack-action", {"text": "confirmed"})
    stack.worker()
    wait_until(lambda: "Slack reply not posted: the response_url's host (http://127.0.0.1) is not on" in stack.logs()
               or receiver.received, 20, "the reply's job to end")
    assert receiver.received == []


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
    [event] = client.get("/workspaces/acme/events").json["events"]
    assert (event["kind"], event["status"]) == ("done", "waiting")  # no worker here
    assert client.get("/workspaces/globex/events").json["events"] == []


@pytest.mark.timeout(90)
def test_slash_commands_of_a_workspace_whose_inloox_hangs_do_not_hold_up_every_web_thread(engine, sandbox, rules_dir):
    """Each slash command asks InLoox who its user is. A workspace's InLoox that hangs held a web thread per command for
    the InLoox time-out: six at once held all four threads, and every customer's webhooks waited. Now the web waits
    for InLoox at most a few seconds (Slack wants its answer in three), and at most two of a workspace's requests
    wait for it at once in a process: the others are told at once that InLoox is slow, and webhooks are answered."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.stack import deliver

    for name, text in (("done", DONE_RULE),):
        write_rule(rules_dir, name, text)
    engine.env.update(SLACK_SIGNING_SECRET=SLACK_SECRET, CHAT_USER_MAP="U2CERLKJA=ann@example.com")
    web = engine.web(threads=4)
    sandbox.fault(kind="latency", latency_ms=8000, methods=["GET"], path="^Contact", count=1000)

    def command(n: int) -> tuple[float, str]:
        body = slack_body("done Write report", trigger_id=f"hang{n}")
        began = time.monotonic()
        reply = requests.post(f"{web}/chat/slack", data=body, headers=slack_headers(body), timeout=30)
        return time.monotonic() - began, reply.json()["text"]

    with ThreadPoolExecutor(6) as pool:
        commands = [pool.submit(command, n) for n in range(6)]
        time.sleep(0.5)  # the commands are waiting for InLoox now (not a wait for a condition)
        began = time.monotonic()
        acked = deliver(web, {"title": "Meanwhile"}, "msg_meanwhile")
        ack_took = time.monotonic() - began
        answers = [c.result() for c in commands]

    assert acked.status_code == 202 and ack_took < 1.5, f"the webhook waited {ack_took:.1f} s"
    assert all(took < 3.5 for took, _ in answers), [round(t, 1) for t, _ in answers]  # within Slack's 3 s, or about
    assert all("InLoox" in text and "try again" in text for _, text in answers), answers


@pytest.mark.timeout(90)
def test_a_command_whose_answer_would_reach_slack_too_late_does_nothing(engine, sandbox, rules_dir, redis_url):
    """Slack shows the person an error when the answer takes over 3 s, and they send the command again. InLoox
    answering each of the command's lookups in 1.5 s (who the user is, which task): the command used to be stored
    after ~3 s all the same and run, so the one sent again ran twice. Now it is answered that nothing was done."""
    write_rule(rules_dir, "done", DONE_RULE)
    make_task(sandbox, "Write report")
    engine.env.update(SLACK_SIGNING_SECRET=SLACK_SECRET, CHAT_USER_MAP="U2CERLKJA=ann@example.com")
    engine.worker()
    web = engine.web()
    sandbox.fault(kind="latency", latency_ms=1500, methods=["GET"], path="^(Contact|Task)", count=1000)

    body = slack_body("done Write report", trigger_id="slow1")
    began = time.monotonic()
    reply = requests.post(f"{web}/chat/slack", data=body, headers=slack_headers(body), timeout=30)
    took = time.monotonic() - began

    assert reply.status_code == 200 and "nothing was done" in reply.json()["text"], reply.json()
    assert took < 4.5, took
    assert logged_events(web) == [] and all_runs(redis_url) == []


@pytest.mark.timeout(90)
def test_a_command_that_redis_would_store_past_the_chats_patience_does_nothing(engine, own_valkey, sandbox, rules_dir):
    """Redis held writes for 4 s (as a failover's CLIENT PAUSE does): the command was stored once they went on, ~4 s
    after Slack sent it, and run, and its "On it" came after Slack had shown the person an error, so the command
    they sent again ran twice. Now Redis refuses to store it past the chat's patience, and nothing was done."""
    write_rule(rules_dir, "done", DONE_RULE)
    task = make_task(sandbox, "Write report")  # by id, no user map: the command asks InLoox nothing
    engine.env.update(SLACK_SIGNING_SECRET=SLACK_SECRET)
    engine.worker()
    web = engine.web()
    warm = slack_body("help", trigger_id="warm")  # the rules compiled: only the write is slow
    assert requests.post(f"{web}/chat/slack", data=warm, headers=slack_headers(warm), timeout=10).status_code == 200

    connection = redis.Redis.from_url(own_valkey.url)
    connection.execute_command("CLIENT", "PAUSE", 4000, "WRITE")  # reads go on; writes wait 4 s
    body = slack_body(f"done {task}", trigger_id="paused1")
    reply = requests.post(f"{web}/chat/slack", data=body, headers=slack_headers(body), timeout=30)

    text = reply.json()["text"]
    assert reply.status_code == 200 and "nothing was done" in text and "send the command again" in text, text
    assert logged_events(web) == [] and all_runs(own_valkey.url) == []
    assert sandbox.get(f"Task({task})").json()["IsDone"] is False


@pytest.mark.timeout(90)
@pytest.mark.parametrize("surface", ["slack", "teams"])
def test_a_command_that_waited_for_a_web_thread_past_the_chats_patience_does_nothing(
        engine, sandbox, rules_dir, redis_url, tmp_path, surface):
    """The answer's time used to start when a thread took the request: one that had waited in waitress's queue
    behind busy threads longer than the chat waits (Slack shows an error after 3 s) was stored and run all the same,
    so the one the person sent again ran twice. Now its time starts when its first bytes came (web/arrival.py)."""
    write_rule(rules_dir, "done", DONE_RULE)
    task = make_task(sandbox, "Write report")  # by id: the command asks InLoox nothing, so only the queue is slow
    release = tmp_path / "release-heavy"
    engine.env.update(SLACK_SIGNING_SECRET=SLACK_SECRET, TEAMS_SECURITY_TOKEN=TEAMS_TOKEN,
                      ENGINE_FAILPOINTS="hold:heavy_request", ENGINE_FAILPOINTS_RELEASE=str(release))
    web = engine.web(threads=1)
    [web_process] = [p for p in engine.processes if p.name == "web"]

    def command() -> requests.Response:
        if surface == "slack":
            body = slack_body(f"done {task}", trigger_id="queued1")
            return requests.post(f"{web}/chat/slack", data=body, headers=slack_headers(body), timeout=60)
        raw = activity(f"done {task}", activity_id="queued1")
        return requests.post(f"{web}/chat/teams", data=raw, timeout=60,
                             headers={"content-type": "application/json", "Authorization": teams_auth(raw)})

    with ThreadPoolExecutor(2) as pool:
        # The web's one thread is kept busy by a replay, held in progress.
        replay = pool.submit(requests.post, f"{web}/events/replay", json={"since": "1h"}, timeout=60)
        wait_until(lambda: "failpoint heavy_request: held" in web_process.output(), 20, "the replay to be held")
        sent = pool.submit(command)
        time.sleep(ANSWER_SECONDS[surface] + 0.5)  # the command waits in the queue past the chat's patience
        release.touch()
        reply, replayed = sent.result(), replay.result()

    assert replayed.status_code == 202, replayed.text
    text = reply.json()["text"]
    assert reply.status_code == 200 and "nothing was done" in text and "send the command again" in text, text
    assert logged_events(web) == []  # nothing stored, so nothing runs
    assert not redis.Redis.from_url(redis_url).keys(f"{PREFIX}chat:seen:*")


def test_a_chat_command_that_must_compile_the_bundle_first_waits_for_a_heavy_turn(redis_url):
    # The rules' first compile in this process (~5.6 s of CPU for a 1 MB bundle) holds the web's one GIL: it takes a
    # heavy request's turn, and while another holds it the person is told so, at once.
    app = bundled_app(redis_url, slack_signing_secret=SLACK_SECRET)
    upload(app, {**large_bundle(LARGE), "hello.yaml": HELLO})
    body = slack_body("help")

    with heavy_turn_held(app):
        busy = app.test_client().post("/chat/slack", data=body, headers=slack_headers(body))

    assert busy.status_code == 200
    assert "Nothing was done: this web server is busy with" in busy.get_data(as_text=True)
    assert compiled_from(app) == ""
