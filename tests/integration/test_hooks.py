"""`POST /hooks/<source>`: Standard Webhooks signatures, limits and durable, deduplicated intake."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
import redis
from workers import eventlog
from standardwebhooks.webhooks import Webhook

from app import create_app
from tests.support.processes import free_port

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW_SECRET = "whsec_" + "bmV3LXNlY3JldC1mb3Itcm90YXRpb24tdGVzdHM="


def test_known_answer_vector_of_the_standard_webhooks_spec():
    signature = Webhook(SECRET).sign("msg_p5jXN8AQM9LWM0D4loKWxJek",
                                     datetime.fromtimestamp(1614265330, timezone.utc), '{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.fixture
def hooks_app(redis_url):
    return create_app({"TESTING": True, "REDIS_URL": redis_url,
                       "WEBHOOK_SOURCES": {"forms": [SECRET, NEW_SECRET], "ci": [SECRET]}})


@pytest.fixture
def post(hooks_app):
    """Deliver `body` to a source, signed with `secret` `age` seconds ago, unless headers are given."""
    client = hooks_app.test_client()

    def deliver(body, *, source="forms", secret=SECRET, msg_id="msg_1", age=0, headers=None):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        if headers is None:
            stamp = int(time.time()) - age
            signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, timezone.utc), raw.decode())
            headers = {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": signature}
        return client.post(f"/hooks/{source}", data=raw, headers={"content-type": "application/json", **headers})

    return deliver


def queued_events(redis_url) -> list[dict]:
    """The accepted events no worker has handled yet (the default workspace's event log)."""
    return [entry.event for entry in eventlog.waiting(redis.Redis.from_url(redis_url), workspace="default")]


def test_a_signed_webhook_is_stored_as_one_queued_event(post, redis_url):
    response = post({"type": "form.submitted", "data": {"title": "New task"}})
    assert response.status_code == 202
    assert response.json == {"status": "accepted", "event_id": "webhook:forms:msg_1"}
    [event] = queued_events(redis_url)
    assert event["source"] == "webhook" and event["kind"] == "forms"
    assert event["payload"]["body"] == {"type": "form.submitted", "data": {"title": "New task"}}


def test_redelivering_the_same_webhook_five_times_queues_one_event(post, redis_url):
    statuses = [post({"n": 1}, msg_id="msg_dup").status_code for _ in range(5)]
    assert statuses == [202, 200, 200, 200, 200]
    assert len(queued_events(redis_url)) == 1


def test_the_same_id_from_another_source_is_another_event(post, redis_url):
    assert post({"n": 1}, source="forms", msg_id="msg_x").status_code == 202
    assert post({"n": 1}, source="ci", msg_id="msg_x").status_code == 202
    assert len(queued_events(redis_url)) == 2


def test_either_secret_is_accepted_during_rotation(post):
    assert post({"n": 1}, secret=SECRET, msg_id="a").status_code == 202
    assert post({"n": 1}, secret=NEW_SECRET, msg_id="b").status_code == 202


def _tampered():
    stamp = int(time.time())
    signature = Webhook(SECRET).sign("msg_t", datetime.fromtimestamp(stamp, timezone.utc), '{"amount": 1}')
    return {"webhook-id": "msg_t", "webhook-timestamp": str(stamp), "webhook-signature": signature}


def _headers_without(name):
    stamp = int(time.time())
    signature = Webhook(SECRET).sign("msg_m", datetime.fromtimestamp(stamp, timezone.utc), '{"amount": 2}')
    headers = {"webhook-id": "msg_m", "webhook-timestamp": str(stamp), "webhook-signature": signature}
    del headers[name]
    return headers


def _with_signature(value):
    return {"webhook-id": "msg_v", "webhook-timestamp": str(int(time.time())), "webhook-signature": value}


@pytest.mark.parametrize("case, kwargs", [
    ("301 s old", {"age": 301}),
    ("301 s in the future", {"age": -301}),
    ("wrong secret", {"secret": "whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA=="}),
    ("tampered body", {"headers": _tampered()}),
    ("no webhook-id", {"headers": _headers_without("webhook-id")}),
    ("no webhook-timestamp", {"headers": _headers_without("webhook-timestamp")}),
    ("no webhook-signature", {"headers": _headers_without("webhook-signature")}),
    ("unknown version prefix", {"headers": _with_signature("v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")}),
    ("malformed signature", {"headers": _with_signature("garbage")}),
    ("non-numeric timestamp", {"headers": {**_tampered(), "webhook-timestamp": "yesterday"}}),
])
def test_a_badly_signed_webhook_is_refused_and_queues_nothing(post, redis_url, case, kwargs):
    body = {"amount": 2}
    response = post(body, **kwargs)
    assert response.status_code == 401, case
    assert response.json["error"]["message"].startswith("webhook signature rejected")
    assert queued_events(redis_url) == []


def test_an_unknown_source_is_404_saying_how_to_add_it(post):
    response = post({"n": 1}, source="nobody")
    assert response.status_code == 404
    assert "`flask webhooks add nobody`" in response.json["error"]["message"]
    assert 'POST /webhooks {"source": "nobody"}' in response.json["error"]["message"]


def test_a_body_over_64_kib_is_413(post, redis_url):
    response = post({"blob": "x" * (64 * 1024)})
    assert response.status_code == 413
    assert "64 KiB" in response.json["error"]["message"]  # the sender learns the limit
    assert queued_events(redis_url) == []


def test_a_signed_body_that_is_not_json_is_400(post, redis_url):
    response = post(b"{not json")
    assert response.status_code == 400
    assert "not valid JSON" in response.json["error"]["message"]
    assert queued_events(redis_url) == []


def test_redis_down_answers_503_so_the_sender_retries(redis_url):
    down = create_app({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "WEBHOOK_SOURCES": {"forms": [SECRET]}})
    stamp = int(time.time())
    raw = b'{"n": 1}'
    headers = {"webhook-id": "msg_r", "webhook-timestamp": str(stamp), "content-type": "application/json",
               "webhook-signature": Webhook(SECRET).sign("msg_r", datetime.fromtimestamp(stamp, timezone.utc), raw.decode())}
    assert down.test_client().post("/hooks/forms", data=raw, headers=headers).status_code == 503
    up = create_app({"REDIS_URL": redis_url, "WEBHOOK_SOURCES": {"forms": [SECRET]}})
    assert up.test_client().post("/hooks/forms", data=raw, headers=headers).status_code == 202


def test_a_delivery_within_the_five_minute_window_is_accepted(post):
    assert post({"n": 1}, age=290, msg_id="late").status_code == 202
    assert post({"n": 1}, age=-290, msg_id="early").status_code == 202


# -- hostile bodies (issue 19): every one answered 4xx naming what was wrong, never 5xx ------------

def _signed_bytes(raw: bytes, msg_id: str, secret: str = SECRET) -> dict:
    """Standard Webhooks headers over raw bytes, as a sender whose library signs bytes would send them."""
    import base64
    import hashlib
    import hmac

    stamp = str(int(time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + raw, hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": "v1," + base64.b64encode(mac).decode()}


def test_a_lone_surrogate_is_accepted_as_the_replacement_character(post, redis_url):
    # Legal JSON that no UTF-8 can carry (JavaScript cut a string inside an emoji): stored as U+FFFD,
    # so every later step (traces, runs, the CLI) can store and print it.
    response = post(b'{"a": "\\ud800", "b": "\\ud83d\\ude00", "\\udc00": 1}', msg_id="surrogate")
    assert response.status_code == 202
    [event] = queued_events(redis_url)
    assert event["payload"]["body"] == {"a": "\ufffd", "b": "\U0001F600", "\ufffd": 1}


@pytest.mark.parametrize("depth", [65, 990, 2_000, 32_000])
def test_deeply_nested_json_is_400_naming_the_limit(post, redis_url, depth):
    response = post(b"[" * depth + b"]" * depth, msg_id=f"deep{depth}")
    assert response.status_code == 400
    assert "nests deeper than 64 levels" in response.json["error"]["message"]
    assert queued_events(redis_url) == []


@pytest.mark.parametrize("number, shown", [(b"NaN", "NaN is not a JSON value"), (b"-Infinity", "-Infinity is not"),
                                           (b"1e400", "1e400 is beyond the range of a number")])
def test_a_number_json_has_not_is_400_naming_it(post, redis_url, number, shown):
    # RFC 8259 has no NaN or Infinity (Python's parser takes them): kept, a run's record would hold null instead.
    response = post(b'{"hours": ' + number + b"}", msg_id=f"number-{number.decode()}")
    assert response.status_code == 400
    assert shown in response.json["error"]["message"]
    assert queued_events(redis_url) == []


def test_large_and_small_numbers_in_range_are_accepted(post, redis_url):
    assert post(b'{"a": 1e300, "b": -1.5e-400, "c": "e123"}', msg_id="in-range").status_code == 202
    [event] = queued_events(redis_url)
    assert event["payload"]["body"] == {"a": 1e300, "b": -0.0, "c": "e123"}


def test_json_nested_64_deep_is_accepted(post):
    assert post(b"[" * 64 + b"]" * 64, msg_id="deep64").status_code == 202


def test_a_signed_body_that_is_not_utf8_is_400_naming_the_byte(post, redis_url):
    raw = '{"name": "Müller"}'.encode("latin-1")
    response = post(raw, headers=_signed_bytes(raw, "latin1"))
    assert response.status_code == 400
    assert response.json["error"]["message"] == "the body is not UTF-8 text: byte 0xfc at offset 11"
    assert queued_events(redis_url) == []


def test_a_gzip_body_is_415_or_400_saying_to_send_it_uncompressed(post, redis_url):
    import gzip

    raw = gzip.compress(b'{"n": 1}', mtime=0)
    declared = post(raw, headers={**_signed_bytes(raw, "gz1"), "Content-Encoding": "gzip"})
    assert declared.status_code == 415
    assert "send the JSON body uncompressed" in declared.json["error"]["message"]
    undeclared = post(raw, headers=_signed_bytes(raw, "gz2"))
    assert undeclared.status_code == 400
    assert "gzip-compressed" in undeclared.json["error"]["message"]
    assert queued_events(redis_url) == []


def test_a_webhook_id_or_content_type_over_256_characters_is_400_and_queues_nothing(post, redis_url):
    """Both are kept with the event, the id also in every key and record made of it, in a Redis that every
    customer shares: a sender (signing with its secret) could make each event ~256 KB larger, the size of a
    header waitress takes. Standard Webhooks ids are ~30 characters (msg_ + 27)."""
    long_id = "msg_" + "x" * 300
    response = post({"n": 1}, msg_id=long_id)
    assert response.status_code == 400
    assert response.json["error"]["message"] == "the webhook-id header is 304 characters long; at most 256 are accepted"
    stamp, body = int(time.time()), b'{"n": 2}'
    signature = Webhook(SECRET).sign("msg_ct", datetime.fromtimestamp(stamp, timezone.utc), body.decode())
    response = post(body, headers={"webhook-id": "msg_ct", "webhook-timestamp": str(stamp),
                                   "webhook-signature": signature, "content-type": "application/json; x=" + "y" * 300})
    assert response.status_code == 400
    assert "the Content-Type header is 320 characters long; at most 256 are accepted" == response.json["error"]["message"]
    assert queued_events(redis_url) == []
    assert post({"n": 3}, msg_id="msg_" + "x" * 252).status_code == 202  # 256 exactly


# -- the route answered in front of Flask (web/hooks.py Intake): the answers Flask's routing gave --------------

def _answers_on_one_connection(web: str, *requests_: bytes) -> bytes:
    """What the web sends back on one kept-alive connection for `requests_`, each sent once the last was answered."""
    import socket
    from urllib.parse import urlparse

    address = urlparse(web)
    received = b""
    with socket.create_connection((address.hostname, address.port), timeout=5) as conn:
        for request in requests_:
            conn.sendall(request)
            time.sleep(0.3)  # answered by then: what follows it on the wire is this request's answer alone
        conn.settimeout(1)
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except TimeoutError:
            pass  # the connection is kept open: all was sent
    return received


def test_a_head_request_is_answered_405_without_a_body_so_the_next_answer_on_the_connection_is_its_own(stack):
    # A HEAD answer has no body (RFC 9110 9.3.2): bytes after its headers are read as the next answer on the
    # connection, which a proxy keeping connections to the web may hand to another sender.
    web = stack.web()
    received = _answers_on_one_connection(web, b"HEAD /hooks/forms HTTP/1.1\r\nHost: x\r\n\r\n",
                                          b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ") and b"Allow: " in head, received
    assert rest.startswith(b"HTTP/1.1 200 "), received


@pytest.mark.parametrize("path, message", [("/workspaces/nope/hooks/forms", "no workspace 'nope'"),
                                           ("/hooks/forms", "this deployment has no default workspace")])
def test_options_for_a_workspace_not_served_is_404_as_any_other_method_of_it(redis_url, path, message):
    from workers.workspaces import Workspace

    app = create_app({"TESTING": True, "REDIS_URL": redis_url, "WORKSPACES": {
        "acme": Workspace("acme", "http://127.0.0.1:1/", "token", webhook_sources={"forms": [SECRET]})}})
    response = app.test_client().options(path)
    assert response.status_code == 404, response.data
    assert response.json["error"]["message"].startswith(message)
    assert app.test_client().options("/workspaces/acme/hooks/forms").status_code == 200
