"""Hostile input to the admin API (issue 19): each answer is a 4xx naming what was wrong, and the document says so."""
from __future__ import annotations

import pytest

from tests.support.stack import write_rule

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RULE = """
id: say-hello
description: Say hello when a person asks.
when:
  - manual: true
then:
  - notify: "json://127.0.0.1:9/"
    title: Hello
    body: "Hello from {{ input.by | default('someone') }}"
"""
EVENT = {"source": "manual", "kind": "say-hello", "occurred_at": "2026-03-01T09:00:00Z"}
# Every route that reads a JSON body, with a body it would take.
JSON_ROUTES = [("/rules/say-hello/run?dry_run=1", {"input": {"by": "Ann"}}),
               ("/events/replay", {"since": "1h", "dry_run": True}),
               ("/subscriptions", {"url": "https://example.com/hook", "events": ["Task.updated"]}),
               ("/dev/inbox", {"text": "hello"})]


@pytest.fixture
def client(redis_url, sandbox, rules_dir):
    """The app as it is served (not TESTING: a bug is the 500 a client would see, not a test traceback)."""
    from app import create_app

    write_rule(rules_dir, "hello", RULE)
    return create_app({"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url, "INLOOX_API_KEY": sandbox.token,
                       "RULES_PATH": str(rules_dir), "ADMIN_TOKEN": TOKEN, "DEV_INBOX": "1"}).test_client()


def error(response) -> str:
    return response.json["error"]["message"]


@pytest.mark.parametrize("event, where", [
    (-200, "event: -200 is not of type 'object'"),
    ("x", "event: 'x' is not of type 'object'"),
    (None, "event: None is not of type 'object'"),
    ({"input": 5}, "event: is required (at event/source)"),
    ({**EVENT, "changes": 5}, "event: 5 is not of type 'object', 'null' (at event/changes)"),
    ({**EVENT, "changes": {"Name": "ab"}}, "event: 'ab' is not valid under any of the given schemas (at event/changes/Name)"),
    ({**EVENT, "entity": [1]}, "event: [1] is not of type 'object', 'null' (at event/entity)"),
    ({**EVENT, "occurred_at": "yesterday"}, "event: occurred_at 'yesterday' is not an ISO date-time"),
    ({**EVENT, "occurred_at": "2026-03-01T09:00:00"}, "event: occurred_at must be timezone-aware"),
])
def test_a_rule_run_with_an_event_that_is_not_one_is_a_422_naming_the_field(client, event, where):
    response = client.post("/rules/say-hello/run", json={"event": event}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert error(response).startswith(where), error(response)


@pytest.mark.parametrize("body, where", [
    ([], "the body: [] is not of type 'object'"), (5, "the body: 5 is not of type 'object'"),
    ({"input": "x"}, "input: 'x' is not of type 'object'"),
])
def test_a_rule_run_body_that_is_not_an_object_of_objects_is_a_422(client, body, where):
    response = client.post("/rules/say-hello/run", json=body, headers=AUTH)
    assert response.status_code == 422 and error(response).startswith(where), response.text


def test_a_rule_run_still_takes_no_body_or_a_whole_event(client):
    assert client.post("/rules/say-hello/run?dry_run=1", headers=AUTH).status_code == 200
    response = client.post("/rules/say-hello/run?dry_run=1", json={"event": EVENT}, headers=AUTH)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("method, path, allowed", [
    ("PATCH", "/runs", {"GET"}), ("DELETE", "/events/replay", {"POST"}), ("PUT", "/healthz", {"GET"}),
    ("GET", "/rules/say-hello/run", {"POST"}), ("POST", "/subscriptions/sub_1", {"GET", "DELETE"}),
    # The webhook route is answered in front of Flask's (web/hooks.py), with the same answers.
    ("GET", "/hooks/forms", {"POST"}), ("PUT", "/workspaces/default/hooks/forms", {"POST"}),
])
def test_a_method_not_allowed_answer_says_which_are(client, method, path, allowed):
    response = client.open(path, method=method, headers=AUTH)
    assert response.status_code == 405 and response.json["error"]["code"] == "MethodNotAllowed"
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}, response.headers


@pytest.mark.parametrize("path", ["/hooks/forms", "/workspaces/default/hooks/forms"])
def test_options_names_the_methods_a_route_takes(client, path):
    response = client.options(path)
    assert response.status_code == 200 and "OPTIONS" in response.headers["Allow"], response.headers


@pytest.mark.parametrize("depth", [1_000, 5_000, 30_000])
@pytest.mark.parametrize("path, body", JSON_ROUTES)
def test_a_body_nested_too_deep_is_a_400_naming_the_limit(client, path, body, depth):
    deep = "[" * depth + "]" * depth
    response = client.post(path, data=deep, content_type="application/json", headers=AUTH)
    assert response.status_code == 400, response.text
    assert error(response) == "the body nests deeper than 64 levels"


@pytest.mark.parametrize("path, body", JSON_ROUTES)
def test_a_body_that_is_not_utf8_is_a_400_naming_the_byte(client, path, body):
    raw = b'{"text": "caf\xe9"}'
    response = client.post(path, data=raw, content_type="application/json", headers=AUTH)
    assert response.status_code == 400, response.text
    assert error(response) == "the body is not UTF-8 text: byte 0xe9 at offset 13"


@pytest.mark.parametrize("path, body", JSON_ROUTES)
def test_a_body_that_is_not_json_is_a_400_saying_so(client, path, body):
    response = client.post(path, data=b'{"text": ', content_type="application/json", headers=AUTH)
    assert response.status_code == 400 and error(response).startswith("the body is not valid JSON: "), response.text


@pytest.mark.parametrize("path, body", JSON_ROUTES[1:3])
def test_a_body_that_is_not_declared_json_is_a_415(client, path, body):
    response = client.post(path, data="since=1h", content_type="application/x-www-form-urlencoded", headers=AUTH)
    assert response.status_code == 415, response.text
    assert error(response) == ("the body must be JSON (Content-Type: application/json), "
                               "not application/x-www-form-urlencoded")


def test_a_lone_surrogate_in_an_api_body_becomes_a_replacement_character(client):
    raw = b'{"text": "cut \\ud83d here"}'  # JavaScript cutting a string inside an emoji sends this
    assert client.post("/dev/inbox", data=raw, content_type="application/json").status_code == 201
    assert client.get("/dev/inbox").json["messages"] == [{"text": "cut \ufffd here"}]


@pytest.mark.parametrize("body, where", [
    ({}, "the body: {} is not valid under any of the given schemas"),
    ({"events": []}, "events: [] should be non-empty"),
    ({"since": ""}, "since: '' should be non-empty"),
    ({"since": "1h", "events": ["x"]}, "the body: {'events': ['x'], 'since': '1h'} is valid under each of"),
])
def test_a_replay_that_names_no_events_or_both_ways_is_a_422(client, body, where):
    response = client.post("/events/replay", json=body, headers=AUTH)
    assert response.status_code == 422 and error(response).startswith(where), response.text
    assert "either a time (`since`) or event ids (`events`)" in error(response) or "non-empty" in error(response)


@pytest.mark.parametrize("since", ["9999999999w", "9" * 400 + "d"])
def test_a_since_longer_than_any_clock_is_a_4xx_naming_it(client, since):
    # Written as a duration should be, but too long for Python's timedelta: an OverflowError, a 500.
    listed = client.get(f"/events?since={since}", headers=AUTH)
    assert listed.status_code == 400 and error(listed).startswith(f"since '{since[:20]}"), listed.text
    replayed = client.post("/events/replay", json={"since": since, "dry_run": True}, headers=AUTH)
    assert replayed.status_code == 422 and error(replayed).startswith(f"since '{since[:20]}"), replayed.text


@pytest.mark.parametrize("since", ["3000w", "999999999d"])
def test_a_since_before_1970_lists_and_replays_every_event(client, since):
    client.post("/rules/say-hello/run", json={"input": {"by": "Ann"}}, headers=AUTH)
    listed = client.get(f"/events?since={since}", headers=AUTH)
    assert listed.status_code == 200 and len(listed.json["events"]) == 1, listed.text
    replayed = client.post("/events/replay", json={"since": since, "dry_run": True}, headers=AUTH)
    assert replayed.status_code == 200 and replayed.json["events"] == 1, replayed.text


@pytest.mark.parametrize("event_id", ["99999999999999999999-0", "1-99999999999999999999",
                                      "damaged:99999999999999999999-0", "\u0661-\u0661", "\u00b2-0"])
def test_an_event_id_shaped_as_an_entry_redis_cannot_read_is_a_404(client, event_id):
    # Taken for a stream entry id (digits, a dash, digits), it went to XRANGE as one: past 64 bits, or digits
    # str.isdigit() reads and Redis does not ("١", "²"), Redis refused it and the event page answered 500.
    client.post("/rules/say-hello/run", json={"input": {"by": "Ann"}}, headers=AUTH)
    response = client.get(f"/events/{event_id}", headers=AUTH)
    assert response.status_code == 404 and error(response).startswith(f"no event {event_id} "), response.text


@pytest.mark.parametrize("body, where", [
    ({"url": "", "events": ["Task.updated"]}, "url: '' does not match '^https?://'; http(s) URL"),
    ({"events": ["Task.updated"]}, "url: is required"),
    ({"url": "https://example.com", "events": []}, "events: [] should be non-empty"),
    ({"url": "https://example.com", "events": ["Task.renamed"]}, "events: 'Task.renamed' does not match"),
    ({"url": "https://example.com", "events": ["Task.updated"], "fields": [""]}, "fields: '' should be non-empty (at fields/0)"),
])
def test_a_subscription_the_document_refuses_is_a_422_naming_the_field(client, body, where):
    response = client.post("/subscriptions", json=body, headers=AUTH)
    assert response.status_code == 422 and error(response).startswith(where), response.text


@pytest.mark.parametrize("path, message", [
    ("/runs?stauts=failed", "unknown query parameter 'stauts'; this endpoint takes: limit, rule, status"),
    ("/runs?limit=0", "query parameter limit: 0 is less than the minimum of 1"),
    ("/runs?limit=ten", "query parameter limit: 'ten' is not an integer"),
    ("/runs?status=done", "query parameter status: 'done' is not one of"),
    ("/events?limit=501", "query parameter limit: 501 is greater than the maximum of 500"),
    ("/workspaces/default/events?unmatched=yes", "query parameter unmatched: 'yes' is not one of"),
])
def test_a_query_parameter_the_document_does_not_allow_is_a_400_naming_it(client, path, message):
    response = client.get(path, headers=AUTH)
    assert response.status_code == 400 and error(response).startswith(message), response.text


def test_the_admin_token_is_asked_for_before_the_query_is_read(client):
    assert client.get("/runs?stauts=failed").status_code == 401


def test_retrying_an_unknown_run_is_a_404(client):
    response = client.post("/runs/run_000000000000000000000000/retry", headers=AUTH)
    assert response.status_code == 404 and error(response) == "no run run_000000000000000000000000"


def test_a_dry_run_of_0_runs_the_rule(client):
    response = client.post("/rules/say-hello/run?dry_run=0", json={"input": {"by": "Ann"}}, headers=AUTH)
    assert response.status_code == 202 and response.json["accepted"] is True
