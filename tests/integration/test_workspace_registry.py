"""Workspaces and webhook sources as data: the operator API, the registry every process follows, and
secrets sealed at rest (issue 20). Real Valkey, the real app (test client, or a web process over HTTP)."""
from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

import pytest
import redis
import requests

from tests.support.processes import wait_until
from tests.support.stack import deliver
from workers import registry, workspace_export
from workers.secrets import Keyring, generate_key

OPERATOR = "operator-registry-5Tq1"
INLOOX_TOKEN = "ilx_registry_token_secret_0042"
SLACK_SECRET = "slack-signing-secret-0043"


@pytest.fixture
def api(redis_url, sandbox):
    """The app with an operator token: the operator API is closed to anyone else."""
    from app import create_app

    return create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                       "INLOOX_API_KEY": sandbox.token, "INLOOX_REQUESTS_PER_SECOND": "0",
                       "OPERATOR_TOKEN": OPERATOR})


def auth(token: str = OPERATOR) -> dict:
    return {"Authorization": f"Bearer {token}"}


def create(client, name: str, sandbox, **fields) -> dict:
    answer = client.put(f"/workspaces/{name}", headers=auth(),
                        json={"inloox_url": sandbox.base_url, "inloox_api_key": INLOOX_TOKEN, **fields})
    assert answer.status_code == 201, answer.text
    return answer.json


def every_value(connection: redis.Redis, *, leave_out: bytes | None = None) -> list[bytes]:
    """Every key and every value stored, whatever its type (but those of keys starting with `leave_out`)."""
    found = []
    for key in connection.scan_iter(count=1000):
        if leave_out is not None and key.startswith(leave_out):
            continue
        found.append(key)
        kind = connection.type(key).decode()
        if kind == "string":
            found.append(connection.get(key))
        elif kind == "hash":
            found += [part for pair in connection.hgetall(key).items() for part in pair]
        elif kind == "list":
            found += connection.lrange(key, 0, -1)
        elif kind == "set":
            found += connection.smembers(key)
        elif kind == "zset":
            found += connection.zrange(key, 0, -1)
        elif kind == "stream":
            found += [v for _, entry in connection.xrange(key) for pair in entry.items() for v in pair]
    return found


def test_put_creates_with_an_admin_token_then_updates_and_the_same_body_twice_changes_nothing(api, sandbox, redis_url):
    client, connection = api.test_client(), redis.Redis.from_url(redis_url)
    created = create(client, "acme", sandbox, limits={"runs_per_minute": 60})
    assert created["admin_token"].startswith("wsa_") and created["limits"]["runs_per_minute"] == 60
    version = registry.version(connection)

    again = client.put("/workspaces/acme", headers=auth(),
                       json={"inloox_url": sandbox.base_url, "inloox_api_key": INLOOX_TOKEN, "limits": {"runs_per_minute": 60}})
    assert again.status_code == 200 and again.json["changed"] is False and "admin_token" not in again.json
    assert registry.version(connection) == version  # nothing written

    changed = client.put("/workspaces/acme", headers=auth(), json={"chat_user_map": "U1=ann@example.com"})
    assert changed.status_code == 200 and changed.json["changed"] is True
    assert registry.version(connection) > version
    shown = client.get("/workspaces/acme", headers=auth()).json
    assert shown["chat_user_map"] == "U1=ann@example.com" and shown["inloox_url"] == sandbox.base_url
    assert INLOOX_TOKEN not in str(shown) and shown["secrets_set"] == ["inloox_api_key"]
    assert [w["name"] for w in client.get("/workspaces", headers=auth()).json["workspaces"]] == ["acme", "default"]


@pytest.mark.parametrize("body, named", [
    ({"inloox_url": "ftp://acme.example", "inloox_api_key": "t"}, "inloox_url"),
    ({"inloox_url": "https://acme.example/api/odata/", "colour": "red"}, "'colour' was unexpected"),
    ({"inloox_url": "https://acme.example/api/odata/", "limits": {"runs_per_minute": -1}}, "limits/runs_per_minute"),
    ({"inloox_api_key": "t"}, "inloox_url"),  # a new workspace needs its InLoox
    (["not", "an", "object"], "the body"),
])
def test_a_bad_body_is_422_naming_the_field(api, body, named):
    answer = api.test_client().put("/workspaces/acme", headers=auth(), json=body)
    assert answer.status_code == 422 and named in answer.json["error"]["message"], answer.text


@pytest.mark.parametrize("data, reason", [
    (b"[" * 100 + b"]" * 100, "deeper than 64 levels"),
    (b'{"inloox_url": "\xff"}', "UTF-8"),
    (b"{not json", "JSON"),
])
def test_an_unreadable_body_is_400_saying_why(api, data, reason):
    answer = api.test_client().put("/workspaces/acme", headers=auth(), data=data,
                                   content_type="application/json")
    assert answer.status_code == 400 and reason in answer.json["error"]["message"], answer.text


@pytest.mark.parametrize("data, reason", [
    (b"[" * 100 + b"]" * 100, "deeper than 64 levels"),
    (b'{"source": "\xff"}', "UTF-8"),
    (b"{not json", "JSON"),
])
def test_an_unreadable_webhook_source_body_is_400_saying_why(api, sandbox, data, reason):
    client = api.test_client()
    create(client, "acme", sandbox)
    answer = client.post("/workspaces/acme/webhooks", headers=auth(), data=data, content_type="application/json")
    assert answer.status_code == 400 and reason in answer.json["error"]["message"], answer.text


def test_a_name_or_source_with_a_newline_at_its_end_is_refused_not_made_a_look_alike_of_another(api, sandbox):
    # The names' patterns ended in `$`, which Python also matches before a final newline: PUT /workspaces/acme%0A made
    # a second workspace listed as "acme", with a newline in its Redis keys and queue name, whose export answered 500
    # (a newline in the Content-Disposition header); a webhook source "forms\n" was added, at /hooks/forms%0A.
    client = api.test_client()
    create(client, "acme", sandbox)
    answer = client.put("/workspaces/acme%0A", headers=auth(),
                        json={"inloox_url": sandbox.base_url, "inloox_api_key": INLOOX_TOKEN})
    assert answer.status_code == 422 and "workspace name 'acme\\n'" in answer.json["error"]["message"], answer.text
    assert [w["name"] for w in client.get("/workspaces", headers=auth()).json["workspaces"]] == ["acme", "default"]
    assert client.get("/workspaces/acme%0A/export", headers=auth()).status_code == 404
    source = client.post("/workspaces/acme/webhooks", headers=auth(), json={"source": "forms\n"})
    assert source.status_code == 422 and "source 'forms\\n'" in source.json["error"]["message"], source.text


def test_the_operator_api_needs_the_operator_token(api, sandbox):
    client = api.test_client()
    assert client.put("/workspaces/acme", json={"inloox_url": sandbox.base_url}).status_code == 401
    assert client.get("/workspaces", headers=auth("wrong")).status_code == 401
    assert client.delete("/workspaces/default").status_code == 401
    assert client.get("/workspaces/nope", headers=auth()).status_code == 404
    assert client.put("/workspaces/Not_A_Name", headers=auth(), json={"inloox_url": sandbox.base_url}).status_code == 422


def test_a_new_admin_token_replaces_the_old_one_at_once(api, sandbox):
    client = api.test_client()
    first = create(client, "acme", sandbox)["admin_token"]
    assert client.get("/workspaces/acme/runs", headers=auth(first)).status_code == 200
    assert client.get("/workspaces/acme", headers=auth(first)).status_code == 200  # its own record
    assert client.get("/workspaces", headers=auth(first)).status_code == 401  # but not the others'

    second = client.post("/workspaces/acme/admin-token", headers=auth(first))
    assert second.status_code == 201
    assert client.get("/workspaces/acme/runs", headers=auth(first)).status_code == 401
    assert client.get("/workspaces/acme/runs", headers=auth(second.json["admin_token"])).status_code == 200


def test_without_an_operator_token_no_one_gets_past_a_workspaces_admin_token(redis_url, sandbox):
    from app import create_app
    from workers.workspaces import Workspace

    # Two customers with admin tokens, and no OPERATOR_TOKEN: acme's admin (or anyone) took globex over
    # by asking the operator API for a new admin token of globex's, or paused, changed or deleted it.
    served = {name: Workspace(name, sandbox.base_url, sandbox.token, admin_token=f"{name}-admin-7Kp")
              for name in ("acme", "globex")}
    client = create_app({"TESTING": True, "REDIS_URL": redis_url, "WORKSPACES": served}).test_client()
    for token in ("acme-admin-7Kp", ""):
        assert client.post("/workspaces/globex/admin-token", headers=auth(token)).status_code == 401
        assert client.put("/workspaces/globex", headers=auth(token),
                          json={"inloox_url": "https://elsewhere.example/api/odata/"}).status_code == 401
        assert client.post("/workspaces/globex/pause", headers=auth(token)).status_code == 401
        assert client.delete("/workspaces/globex", headers=auth(token)).status_code == 401
        assert client.get("/workspaces", headers=auth(token)).status_code == 401
    assert client.get("/workspaces/globex/runs", headers=auth("globex-admin-7Kp")).status_code == 200  # still its own
    assert client.get("/workspaces/globex", headers=auth("globex-admin-7Kp")).json["paused"] is False

    # One workspace protected by ADMIN_TOKEN (README), no OPERATOR_TOKEN: its token is not to be had without it.
    single = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                         "INLOOX_API_KEY": sandbox.token, "ADMIN_TOKEN": "single-admin-7Kp"}).test_client()
    assert single.post("/workspaces/default/admin-token").status_code == 401
    assert single.post("/workspaces/default/admin-token", headers=auth("single-admin-7Kp")).status_code == 201


def test_without_an_operator_token_no_customer_sees_every_workspaces_usage_and_metrics(redis_url, sandbox):
    from app import create_app
    from workers.workspaces import Workspace

    # /usage and /metrics list every workspace (names, events, runs, billable runs, rule ids): an operator's
    # view. Without OPERATOR_TOKEN they were open to anyone while the workspaces had admin tokens.
    served = {name: Workspace(name, sandbox.base_url, sandbox.token, admin_token=f"{name}-admin-7Kp")
              for name in ("acme", "globex")}
    client = create_app({"TESTING": True, "REDIS_URL": redis_url, "WORKSPACES": served}).test_client()
    for token in ("acme-admin-7Kp", ""):
        for route in ("/usage", "/metrics"):
            refused = client.get(route, headers=auth(token))
            assert refused.status_code == 401 and "OPERATOR_TOKEN" in refused.get_data(as_text=True), route
    assert client.get("/workspaces/acme/usage", headers=auth("acme-admin-7Kp")).status_code == 200  # its own
    assert client.get("/workspaces/acme/metrics", headers=auth("acme-admin-7Kp")).status_code == 200

    # One workspace and its ADMIN_TOKEN (README): every workspace is its own, so its token sees them.
    redis.Redis.from_url(redis_url).flushdb()
    single = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                         "INLOOX_API_KEY": sandbox.token, "ADMIN_TOKEN": "single-admin-7Kp"}).test_client()
    for route in ("/usage", "/metrics"):
        assert single.get(route).status_code == 401, route
        assert single.get(route, headers=auth("single-admin-7Kp")).status_code == 200, route

    # Local development (no admin token anywhere, no OPERATOR_TOKEN): open, as before. (acme and globex went to the
    # registry in this Redis, which every process reads: a deployment of its own starts from an empty one.)
    redis.Redis.from_url(redis_url).flushdb()
    local = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                        "INLOOX_API_KEY": sandbox.token}).test_client()
    assert local.get("/usage").status_code == 200 and local.get("/metrics").status_code == 200


def test_pause_and_resume_set_the_flag_every_process_reads(api, sandbox, redis_url):
    client = api.test_client()
    create(client, "acme", sandbox)
    view = registry.View(redis.Redis.from_url(redis_url), Keyring.from_config(api.config), refresh_seconds=0)
    assert view.workspaces()["acme"].paused is False
    assert client.post("/workspaces/acme/pause", headers=auth()).json["paused"] is True
    assert view.workspaces()["acme"].paused is True and client.get("/workspaces/acme", headers=auth()).json["paused"]
    assert client.post("/workspaces/acme/resume", headers=auth()).json["paused"] is False
    assert view.workspaces()["acme"].paused is False
    assert client.post("/workspaces/nope/pause", headers=auth()).status_code == 404


def test_a_workspaces_incarnation_is_made_at_its_create_and_kept_until_it_is_deleted(api, sandbox, redis_url):
    client, connection = api.test_client(), redis.Redis.from_url(redis_url)
    view = registry.View(connection, Keyring.from_config(api.config), refresh_seconds=0)
    create(client, "acme", sandbox)
    first = view.workspaces()["acme"].incarnation
    assert first

    assert client.post("/workspaces/acme/pause", headers=auth()).status_code == 200
    assert client.post("/workspaces/acme/resume", headers=auth()).status_code == 200
    changed = client.put("/workspaces/acme", headers=auth(),
                         json={"limits": {"runs_per_minute": 60}, "alerts": "json://a"})
    assert changed.status_code == 200 and changed.json["limits"]["runs_per_minute"] == 60
    assert client.post("/workspaces/acme/webhooks", headers=auth(), json={"source": "forms"}).status_code == 201
    registry.rotate_secrets(connection, Keyring.from_config(api.config))
    assert view.workspaces()["acme"].incarnation == first
    assert "incarnation" not in client.get("/workspaces/acme", headers=auth()).json  # nothing for the API to show

    assert client.delete("/workspaces/acme", headers=auth()).status_code in (200, 204)
    create(client, "acme", sandbox)
    assert view.workspaces()["acme"].incarnation not in ("", first)


def test_a_record_made_before_incarnations_has_one_of_its_own_that_changes_stay_with(api, sandbox, redis_url):
    client, connection = api.test_client(), redis.Redis.from_url(redis_url)
    view = registry.View(connection, Keyring.from_config(api.config), refresh_seconds=0)
    for name in ("acme", "globex"):
        create(client, name, sandbox)
        record = registry.read(connection, name)
        del record["incarnation"]  # as the version before incarnations stored it
        connection.hset(registry.RECORDS, name, json.dumps(record))
    connection.incr(registry.VERSION)
    old = view.workspaces()["acme"].incarnation
    assert old and old != view.workspaces()["globex"].incarnation

    assert client.post("/workspaces/acme/pause", headers=auth()).status_code == 200
    assert client.put("/workspaces/acme", headers=auth(), json={"limits": {"runs_per_minute": 60}}).status_code == 200
    assert view.workspaces()["acme"].incarnation == old
    client.delete("/workspaces/acme", headers=auth())
    create(client, "acme", sandbox)
    assert view.workspaces()["acme"].incarnation not in ("", old)


def test_a_declared_workspace_is_served_with_the_registrys_incarnation_of_it(redis_url, sandbox):
    from workers.workspaces import Workspace

    connection = redis.Redis.from_url(redis_url)
    keyring = Keyring.from_config({"SECRETS_KEY": os.environ["SECRETS_KEY"]})
    declared = {"acme": Workspace(name="acme", inloox_url=sandbox.base_url, inloox_api_key=INLOOX_TOKEN)}
    served = registry.Served(connection, {"WORKSPACES": declared, "SECRETS_KEY": os.environ["SECRETS_KEY"]},
                             refresh_seconds=0)
    registry.apply_workspaces(connection, keyring, declared)
    first = served.workspaces()["acme"].incarnation
    assert first == registry.workspace(keyring, registry.read(connection, "acme")).incarnation != ""

    registry.delete(connection, "acme")
    assert served.workspaces()["acme"].incarnation == ""  # declared, not in the registry: nothing kept for it
    registry.apply_workspaces(connection, keyring, declared)
    assert served.workspaces()["acme"].incarnation not in ("", first)


def test_a_webhook_source_added_in_one_process_is_served_by_the_web_without_a_restart(api, stack, sandbox):
    stack.env.update(OPERATOR_TOKEN=OPERATOR)
    web = stack.web()
    create(api.test_client(), "acme", sandbox)
    body = {"title": "Quote", "project": "x"}
    refused = deliver(web, body, "msg_0", path="/workspaces/acme/hooks/helpdesk", secret="whsec_" + "QUJD" * 8)
    assert refused.status_code == 404

    added = api.test_cli_runner().invoke(args=["webhooks", "add", "helpdesk", "--workspace", "acme"])
    assert added.exit_code == 0, added.output
    secret = added.output.split("secret: ")[1].split()[0]
    assert secret.startswith("whsec_")
    wait_until(lambda: deliver(web, body, "msg_1", path="/workspaces/acme/hooks/helpdesk",
                               secret=secret).status_code == 202, 5, "the web to serve the new source")

    listed = api.test_client().get("/workspaces/acme/webhooks", headers=auth()).json["webhooks"]
    assert [h["source"] for h in listed] == ["helpdesk"] and secret not in str(listed)


def test_a_rotated_webhook_secret_keeps_working_beside_the_new_one_until_removed(api, sandbox):
    client = api.test_client()
    create(client, "acme", sandbox)
    added = client.post("/workspaces/acme/webhooks", headers=auth(), json={"source": "helpdesk"})
    assert added.status_code == 201, added.text
    assert client.post("/workspaces/acme/webhooks", headers=auth(), json={"source": "helpdesk"}).status_code == 409
    old = added.json["secret"]
    rotated = client.post("/workspaces/acme/webhooks/helpdesk/rotate", headers=auth())
    assert rotated.status_code == 200 and rotated.json["secret"] != old
    body = {"title": "Quote", "project": "x"}
    for n, secret in enumerate((old, rotated.json["secret"])):
        answer = _signed(client, "/workspaces/acme/hooks/helpdesk", body, f"msg_{n}", secret)
        assert answer.status_code == 202, answer.text

    assert client.delete("/workspaces/acme/webhooks/helpdesk", headers=auth()).status_code == 200
    assert _signed(client, "/workspaces/acme/hooks/helpdesk", body, "msg_9", old).status_code == 404
    assert client.delete("/workspaces/acme/webhooks/helpdesk", headers=auth()).status_code == 404


def test_a_removed_webhook_source_leaves_no_counter_of_its_own(api, sandbox, redis_url):
    """Each source counts its events (`events{source="webhook", kind=<source>}` in metrics:counters, shown at
    /metrics); removed, its deliveries count as `kind="unknown"`, and its own counters stayed in the shared hash
    (and at /metrics) for as long as the workspace lived, one set more for every source ever removed."""
    from workers import metrics

    client, connection = api.test_client(), redis.Redis.from_url(redis_url)
    create(client, "acme", sandbox)
    secrets = {s: client.post("/workspaces/acme/webhooks", headers=auth(), json={"source": s}).json["secret"]
               for s in ("helpdesk", "forms")}
    for source, secret in secrets.items():
        assert _signed(client, f"/workspaces/acme/hooks/{source}", {"a": 1}, "msg_1", secret).status_code == 202
        assert _signed(client, f"/workspaces/acme/hooks/{source}", {"a": 1}, "msg_1", secret).status_code == 200
        assert _signed(client, f"/workspaces/acme/hooks/{source}", {"a": 1}, "msg_2", "whsec_" + "A" * 32).status_code == 401

    def kinds() -> set[str]:
        return {metrics.parse_field(f)[1].get("kind") for f in connection.hkeys(metrics.COUNTERS)
                if metrics.parse_field(f)[1].get("workspace") == "acme"}

    assert kinds() == {"helpdesk", "forms"}
    assert client.delete("/workspaces/acme/webhooks/helpdesk", headers=auth()).status_code == 200
    assert kinds() == {"forms"}


def test_the_default_workspace_takes_webhook_sources_at_slash_webhooks(app, runner):
    added = runner.invoke(args=["webhooks", "add", "helpdesk"])
    assert added.exit_code == 0, added.output
    secret = added.output.split("secret: ")[1].split()[0]
    client = app.test_client()
    wait_until(lambda: _signed(client, "/hooks/helpdesk", {"a": 1}, "msg_1", secret).status_code == 202, 5,
               "the new source to be served")
    assert [h["source"] for h in client.get("/webhooks").json["webhooks"]] == ["helpdesk"]
    assert "helpdesk" in runner.invoke(args=["webhooks", "list"]).output


def test_delete_leaves_no_key_of_the_workspace_and_its_routes_answer_404(api, sandbox, redis_url):
    from rq import Queue

    from workers import workspaces
    from workers.enqueue import queue_run

    client, connection = api.test_client(), redis.Redis.from_url(redis_url)
    token = create(client, "zephyrco", sandbox)["admin_token"]
    secret = client.post("/workspaces/zephyrco/webhooks", headers=auth(), json={"source": "forms"}).json["secret"]
    bundle = {"files": {"a.yaml": "id: a\ndescription: A.\nwhen:\n  - manual: true\nthen:\n  - notify: json://127.0.0.1:9/x\n    body: hi\n"}}
    assert client.put("/workspaces/zephyrco/rules", headers=auth(token), json=bundle).status_code == 201, "bundle"
    assert _signed(client, "/workspaces/zephyrco/hooks/forms", {"a": 1}, "msg_1", secret).status_code == 202
    Queue("zephyrco", connection=connection).enqueue("workers.jobs.nothing", job_id="zephyrco-job-1")
    with workspaces.using(workspaces.Workspace("zephyrco", sandbox.base_url, INLOOX_TOKEN)):
        for n in range(2):  # a rule's `concurrency`: RQ's rate-limit keys, named after ours; the second waits its turn
            queue_run(connection, {"id": f"run_{n}", "plan": {"concurrency": {"key": "forms", "limit": 1}}})
    assert list(connection.scan_iter(match="rq:rl:ws:zephyrco:*"))
    assert client.post("/workspaces/zephyrco/subscriptions", headers=auth(token),
                       json={"url": "https://example.com/hook", "events": ["Task.updated"]}).status_code == 201
    assert list(connection.scan_iter(match="*zephyrco*"))  # there was something to delete

    deleted = client.delete("/workspaces/zephyrco", headers=auth())
    assert deleted.status_code == 200, deleted.text
    assert list(connection.scan_iter(match="*zephyrco*")) == []
    assert [v for v in every_value(connection) if b"zephyrco" in v] == []
    assert client.get("/workspaces/zephyrco/runs", headers=auth()).status_code == 404
    assert client.get("/workspaces/zephyrco", headers=auth()).status_code == 404
    assert client.get("/runs", headers=auth()).status_code == 200  # the default workspace is untouched


def test_the_web_lets_go_of_a_deleted_workspaces_context_and_compiled_rules(api, sandbox, monkeypatch):
    """A hosted web process outlives thousands of workspaces: what it built for one deleted must not stay."""
    from web import resources
    from workers import worker_context

    monkeypatch.setattr(worker_context, "_kept", {})  # this process's compiled rules: none of an earlier test
    monkeypatch.setattr(resources, "_slots", {})
    client, store = api.test_client(), api.extensions["inloox_automation"]
    token = create(client, "zephyrco", sandbox)["admin_token"]
    rule = "id: a\ndescription: A.\nwhen:\n  - manual: true\nthen:\n  - notify: json://127.0.0.1:9/x\n    body: hi\n"
    uploaded = client.put("/workspaces/zephyrco/rules", headers=auth(token), json={"files": {"a.yaml": rule}})
    assert uploaded.status_code == 201, uploaded.text
    planned = client.post("/workspaces/zephyrco/rules/a/run?dry_run=1", headers=auth(token), json={"input": {}})
    assert planned.status_code == 200, planned.text
    assert "context:zephyrco" in store and "zephyrco" in worker_context._kept  # built and compiled here
    store["inloox:zephyrco"] = ("built", "for the chat")  # as a chat command's InLoox client and slot are kept
    resources._slots["zephyrco"] = object()

    assert client.delete("/workspaces/zephyrco", headers=auth()).status_code == 200
    assert client.get("/runs", headers=auth()).status_code == 200  # any request, once the registry changed

    assert [key for key in store if "zephyrco" in key] == []
    assert "zephyrco" not in worker_context._kept and "zephyrco" not in resources._slots


def test_no_secret_or_token_is_stored_in_plain_text(api, sandbox, redis_url):
    client = api.test_client()
    admin = create(client, "acme", sandbox, slack_signing_secret=SLACK_SECRET)["admin_token"]
    hook = client.post("/workspaces/acme/webhooks", headers=auth(), json={"source": "forms"}).json["secret"]
    rotated = client.post("/workspaces/acme/webhooks/forms/rotate", headers=auth()).json["secret"]
    api.test_client().get("/runs")  # the default workspace applied too (its sandbox token)
    values = b"\n".join(every_value(redis.Redis.from_url(redis_url)))
    for secret in (INLOOX_TOKEN, SLACK_SECRET, admin, hook, rotated, sandbox.token):
        assert secret.encode() not in values, secret
    assert b"fernet:" in values


def test_after_rotating_to_a_new_key_only_the_new_key_is_needed(api, sandbox, redis_url):
    from app import create_app

    client = api.test_client()
    create(client, "acme", sandbox, slack_signing_secret=SLACK_SECRET)
    client.post("/workspaces/acme/webhooks", headers=auth(), json={"source": "forms"})
    old_key, new_key = api.config["SECRETS_KEY"], generate_key()
    connection = redis.Redis.from_url(redis_url)

    rotating = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                           "INLOOX_API_KEY": sandbox.token, "SECRETS_KEY": f"{new_key},{old_key}"})
    result = rotating.test_cli_runner().invoke(args=["secrets", "rotate"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("re-sealed 4 secret(s)")  # acme: token, slack, hook; default: its token
    assert rotating.test_cli_runner().invoke(args=["secrets", "rotate"]).output.startswith("re-sealed 0 secret(s)")

    only_new = registry.View(connection, Keyring([new_key]))
    assert set(only_new.workspaces()) == {"acme", "default"} and only_new.unreadable() == {}
    assert only_new.workspaces()["acme"].slack_signing_secret == SLACK_SECRET
    only_old = registry.View(connection, Keyring([old_key]))
    assert only_old.workspaces() == {} and Keyring([new_key]).key_ids[0] in only_old.unreadable()["acme"]


def test_secrets_rotate_seals_every_other_workspace_past_one_it_cannot_open_and_says_which(api, sandbox, redis_url):
    from app import create_app

    connection, lost = redis.Redis.from_url(redis_url), Keyring([generate_key()])
    registry.put(connection, lost, "aaa", {"inloox_url": sandbox.base_url, "inloox_api_key": INLOOX_TOKEN})
    client = api.test_client()
    create(client, "zzz", sandbox, slack_signing_secret=SLACK_SECRET)
    sub = client.post("/workspaces/zzz/subscriptions", headers=auth(),
                      json={"url": "https://example.com/hook", "events": ["Task.updated"]})
    assert sub.status_code == 201, sub.text
    old_key, new_key = api.config["SECRETS_KEY"], generate_key()

    rotating = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                           "INLOOX_API_KEY": sandbox.token, "SECRETS_KEY": f"{new_key},{old_key}"})
    result = rotating.test_cli_runner().invoke(args=["secrets", "rotate"])

    assert result.exit_code != 0  # not done: the old key must not be dropped yet
    assert "'aaa'" in result.output and lost.key_ids[0] in result.output and INLOOX_TOKEN not in result.output
    only_new = registry.View(connection, Keyring([new_key]), refresh_seconds=0)
    assert set(only_new.workspaces()) == {"default", "zzz"}  # the others are all under the new key
    assert only_new.workspaces()["zzz"].slack_signing_secret == SLACK_SECRET
    stored = b"".join(connection.hvals("ws:zzz:subs"))
    assert stored.count(f"fernet:{Keyring([new_key]).newest}:".encode()) == 1 and f"fernet:{Keyring([old_key]).newest}:".encode() not in stored


def test_a_secret_this_process_cannot_unseal_stops_only_its_workspace(api, sandbox, redis_url):
    connection = redis.Redis.from_url(redis_url)
    other_key = Keyring([generate_key()])
    registry.put(connection, other_key, "globex", {"inloox_url": sandbox.base_url, "inloox_api_key": INLOOX_TOKEN})
    client = api.test_client()
    create(client, "acme", sandbox)

    refused = client.get("/workspaces/globex/runs", headers=auth())
    assert refused.status_code == 503
    message = refused.json["error"]["message"]
    assert "globex" in message and other_key.key_ids[0] in message and INLOOX_TOKEN not in message
    assert client.get("/workspaces/acme/runs", headers=auth()).status_code == 200
    assert client.get("/runs", headers=auth()).status_code == 200
    listed = {w["name"]: w["unreadable"] for w in client.get("/workspaces", headers=auth()).json["workspaces"]}
    assert listed["acme"] == "" and other_key.key_ids[0] in listed["globex"]


def test_readyz_names_the_workspaces_this_process_cannot_unseal_and_stays_ready_while_it_serves_others(
        api, sandbox, redis_url):
    connection, other_key = redis.Redis.from_url(redis_url), Keyring([generate_key()])
    registry.put(connection, other_key, "globex", {"inloox_url": sandbox.base_url, "inloox_api_key": INLOOX_TOKEN})
    client = api.test_client()
    create(client, "acme", sandbox)

    answer = client.get("/readyz", headers=auth())
    assert answer.json["checks"].get("secrets") == {"ok": True, "degraded": True, "workspaces": 2,  # acme, default
                                                    "unreadable": [{"workspace": "globex",
                                                                    "needs_key": other_key.key_ids[0]}]}
    assert INLOOX_TOKEN not in answer.text and api.config["SECRETS_KEY"] not in answer.text

    # Anyone else (the load balancer, a customer, a stranger) is told how many, not which customers: /readyz is
    # public, and named every workspace whose key this process lacked.
    for headers in ({}, {"Authorization": "Bearer not-the-operator"}):
        public = client.get("/readyz", headers=headers)  # not ready: no worker runs here
        assert public.json["checks"]["secrets"]["unreadable"] == {
            "count": 1, "names": "shown to the operator's token (OPERATOR_TOKEN)"}
        assert "globex" not in public.text and other_key.key_ids[0] not in public.text


def test_readyz_is_not_ready_when_secrets_key_opens_no_workspace_of_the_registry(api, sandbox, redis_url):
    from app import create_app

    client = api.test_client()
    create(client, "acme", sandbox)
    wrong = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                        "INLOOX_API_KEY": sandbox.token, "INLOOX_REQUESTS_PER_SECOND": "0",
                        "SECRETS_KEY": generate_key()})

    answer = wrong.test_client().get("/readyz")
    assert answer.status_code == 503
    secrets = answer.json["checks"].get("secrets", {})
    assert secrets.get("ok") is False and secrets["error"] == "SECRETS_KEY opens none of the registry's 2 workspace(s)"
    assert secrets["unreadable"]["count"] == 2 and "acme" not in answer.text  # no operator token here to name them
    # Its default workspace is there, unreadable: not "no default workspace".
    assert answer.json["checks"]["inloox"] == {"ok": True, "skipped": "the default workspace cannot be unsealed "
                                                                      "here (see checks.secrets)"}
    assert INLOOX_TOKEN not in answer.text and sandbox.token not in answer.text


def test_a_process_with_another_key_leaves_the_declared_secrets_sealed_for_the_others(redis_url, sandbox):
    """A process started with a wrong SECRETS_KEY (a typo, a key dropped too early) applies the same declaration
    at its start: it cannot open what is stored, and must not seal it again under a key the others lack."""
    from workers.workspaces import Workspace

    connection, ours, typo = redis.Redis.from_url(redis_url), Keyring([generate_key()]), Keyring([generate_key()])
    hook = "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    declared = {"acme": Workspace(name="acme", inloox_url=sandbox.base_url, inloox_api_key=INLOOX_TOKEN,
                                  slack_signing_secret=SLACK_SECRET, webhook_sources={"forms": [hook]})}
    registry.apply_workspaces(connection, ours, declared)
    version = registry.version(connection)

    registry.apply_workspaces(connection, typo, declared)

    assert registry.version(connection) == version  # nothing written
    served = registry.View(connection, ours, refresh_seconds=0)
    assert served.unreadable() == {}
    assert served.workspaces()["acme"].inloox_api_key == INLOOX_TOKEN
    assert served.workspaces()["acme"].slack_signing_secret == SLACK_SECRET
    assert served.workspaces()["acme"].webhook_sources == {"forms": [hook]}
    # The process with the wrong key says which key it lacks, for that workspace only.
    assert ours.key_ids[0] in registry.View(connection, typo, refresh_seconds=0).unreadable()["acme"]


def test_a_dashboard_session_cannot_be_made_from_what_redis_keeps_and_ends_with_its_token(api, sandbox, redis_url):
    import hashlib
    import hmac

    client, connection = api.test_client(), redis.Redis.from_url(redis_url)
    token = create(client, "acme", sandbox)["admin_token"]
    stored = registry.read(connection, "acme")["admin_token_sha256"]
    # Whoever reads Redis (a dump, a backup) has the token's hash: a cookie made from it alone must not log in.
    forged = hmac.new(stored.encode(), b"inloox-automation dashboard", hashlib.sha256).hexdigest()
    stranger = api.test_client()
    stranger.set_cookie("ui_session", forged, path="/workspaces/acme/ui")
    assert stranger.get("/workspaces/acme/ui/runs").status_code == 302  # to the login form

    admin = api.test_client()
    assert admin.post("/workspaces/acme/ui/login", data={"token": token}).status_code == 302
    assert admin.get("/workspaces/acme/ui/runs").status_code == 200
    assert client.post("/workspaces/acme/admin-token", headers=auth()).status_code == 201
    assert admin.get("/workspaces/acme/ui/runs").status_code == 302  # the old token's session ends with it


def test_export_holds_bundles_subscriptions_events_and_runs_but_no_secret(api, sandbox):
    client = api.test_client()
    token = create(client, "acme", sandbox)["admin_token"]
    secret = client.post("/workspaces/acme/webhooks", headers=auth(), json={"source": "forms"}).json["secret"]
    bundle = {"files": {"a.yaml": "id: a\ndescription: A.\nwhen:\n  - webhook: forms\nthen:\n  - notify: json://127.0.0.1:9/x\n    body: hi\n"}}
    assert client.put("/workspaces/acme/rules", headers=auth(token), json=bundle).status_code == 201
    sub = client.post("/workspaces/acme/subscriptions", headers=auth(token),
                      json={"url": "https://example.com/hook", "events": ["Task.updated"]}).json
    assert _signed(client, "/workspaces/acme/hooks/forms", {"a": 1}, "msg_1", secret).status_code == 202

    archive = client.get("/workspaces/acme/export", headers=auth(token))
    assert archive.status_code == 200, archive.text
    exported = archive.json
    assert exported["workspace"]["name"] == "acme"
    assert exported["rule_bundles"][0]["files"] == bundle["files"]
    assert [s["id"] for s in exported["subscriptions"]] == [sub["id"]]
    assert [e["id"] for e in exported["events"]] == ["webhook:forms:msg_1"]
    assert "runs" in exported
    for hidden in (secret, sub["secret"], INLOOX_TOKEN, token):
        assert hidden not in archive.text


def test_an_export_is_a_heavy_request_one_at_a_time_per_workspace(api, sandbox, redis_url):
    # An export reads up to 10,000 events (webhook bodies of up to 64 KiB) and 10,000 runs and writes them as one JSON
    # body: 2,000 events of 60 KiB were 109 MiB, 1.3 s of CPU and 431 MiB more RSS in the web process, which serves
    # every workspace. Any number of them ran at once, while replays, uploads and what-ifs take turns (web/heavy.py).
    client = api.test_client()
    token = create(client, "acme", sandbox)["admin_token"]
    connection = redis.Redis.from_url(redis_url)
    connection.set("ws:acme:heavy", "another process's replay", ex=60)

    refused = client.get("/workspaces/acme/export", headers=auth(token))

    assert refused.status_code == 429 and refused.headers["Retry-After"] == "10", refused.text
    assert "workspace 'acme' has a replay" in refused.json["error"]["message"], refused.text
    assert connection.get("ws:acme:heavy") == b"another process's replay"
    connection.delete("ws:acme:heavy")
    assert client.get("/workspaces/acme/export", headers=auth(token)).status_code == 200
    assert connection.exists("ws:acme:heavy") == 0  # given back when it ended


EXPORTED_EVENTS = 400  # four of the export's pages (EXPORT_PAGE), each event's body 60 KB
EXPORTED_RUNS = 250


def test_an_export_is_written_to_a_file_a_page_at_a_time_and_the_file_is_gone_once_sent(api, sandbox, redis_url):
    # Built whole in the web process, which answers every workspace's webhooks, an export of 2,000 events of 60 KiB
    # (a 128 MiB archive) took 389 MiB more memory; here 400 of them took nearly three times their archive. Now it is
    # written to a nameless temporary file a page of events or runs at a time, and waitress sends the file.
    client = api.test_client()
    token = create(client, "acme", sandbox, limits={"webhooks_per_second": 0, "events_per_day": 0})["admin_token"]
    secret = client.post("/workspaces/acme/webhooks", headers=auth(), json={"source": "forms"}).json["secret"]
    for n in range(EXPORTED_EVENTS):
        body = {"title": f"Form {n}", "text": f"{n:06d} é" * 4600}  # 60 KB as sent (é as \u00e9)
        assert _signed(client, "/workspaces/acme/hooks/forms", body, f"msg_{n}", secret).status_code == 202
    made = _runs("acme", redis_url, EXPORTED_RUNS)
    unlinked_before = _unlinked_temporary_files()

    tracemalloc.start()
    try:
        answer = client.get("/workspaces/acme/export", headers=auth(token))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    waiting = _unlinked_temporary_files()
    text = answer.get_data()
    answer.close()

    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Disposition"] == 'attachment; filename="acme.json"'
    assert answer.mimetype == "application/json" and int(answer.headers["Content-Length"]) == len(text)
    assert peak < len(text) / 2, f"the export took {peak / 2 ** 20:.1f} MiB for a {len(text) / 2 ** 20:.1f} MiB archive"
    # Every byte as jsonify wrote the archive: compact, keys sorted, ASCII, a newline at the end.
    archive = json.loads(text)
    assert text == (json.dumps(archive, sort_keys=True, separators=(",", ":")) + "\n").encode()
    assert [e["id"] for e in archive["events"]] == [f"webhook:forms:msg_{n}" for n in reversed(range(EXPORTED_EVENTS))]
    assert archive["events"][0]["event"]["payload"]["body"]["text"] == f"{EXPORTED_EVENTS - 1:06d} é" * 4600
    assert [r["id"] for r in archive["runs"]] == [r["id"] for r in reversed(made)]
    assert [size for inode, size in waiting.items() if inode not in unlinked_before] == [len(text)]  # on disk
    assert set(_unlinked_temporary_files()) == set(unlinked_before)  # and gone once sent


def test_an_export_past_its_bound_is_a_409_and_leaves_no_file(api, sandbox, redis_url, monkeypatch):
    client = api.test_client()
    token = create(client, "acme", sandbox)["admin_token"]
    _runs("acme", redis_url, 300)  # ~170 KB of runs
    monkeypatch.setattr(workspace_export, "EXPORT_MAX_BYTES", 100_000)  # 2 GiB of runs would take minutes
    unlinked_before = _unlinked_temporary_files()

    refused = client.get("/workspaces/acme/export", headers=auth(token))

    assert refused.status_code == 409, refused.text
    assert refused.json["error"]["message"] == ("workspace 'acme' was not exported: the archive grew past 100,000 "
                                                "bytes, the most an export writes")
    assert set(_unlinked_temporary_files()) == set(unlinked_before)
    assert redis.Redis.from_url(redis_url).exists("ws:acme:heavy") == 0  # its turn given back
    assert client.get("/workspaces/acme/export", headers=auth(token)).status_code == 409  # and taken again


def _exported_size(client, name: str, token: str) -> int:
    answer = client.get(f"/workspaces/{name}/export", headers=auth(token))
    assert answer.status_code == 200, answer.text
    size = len(answer.get_data())
    answer.close()
    return size


def test_exports_still_being_downloaded_hold_at_most_export_disk_bytes_of_the_process(api, sandbox, redis_url):
    # An export's turn (web/heavy.py) ends once its file is written, but the file stays on disk until its download
    # ends: exports of one workspace after another, each downloaded slowly, kept up to 2 GiB each until the disk the
    # web's temporary files share was full, and every workspace's exports (and more) failed.
    client = api.test_client()
    acme = create(client, "acme", sandbox)["admin_token"]
    globex = create(client, "globex", sandbox)["admin_token"]
    _runs("acme", redis_url, 300)  # ~170 KB
    _runs("globex", redis_url, 50)  # ~30 KB
    acme_size, globex_size = _exported_size(client, "acme", acme), _exported_size(client, "globex", globex)
    api.config["EXPORT_DISK_BYTES"] = str(acme_size + globex_size // 2)  # room for acme's, not for both
    unlinked_before = _unlinked_temporary_files()

    downloading = client.get("/workspaces/acme/export", headers=auth(acme))  # its body not read yet
    refused = client.get("/workspaces/globex/export", headers=auth(globex))

    assert downloading.status_code == 200, downloading.text
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "60", refused.text
    message = refused.json["error"]["message"]
    assert message.startswith("workspace 'globex' was not exported: exports still being downloaded from this web "
                              f"server hold {acme_size:,} of the {acme_size + globex_size // 2:,} bytes it keeps on "
                              "disk for exports (EXPORT_DISK_BYTES)"), message
    assert [size for inode, size in _unlinked_temporary_files().items()
            if inode not in unlinked_before] == [acme_size]  # globex's part written is gone
    assert len(downloading.get_data()) == acme_size and len(json.loads(downloading.get_data())["runs"]) == 300
    downloading.close()
    assert set(_unlinked_temporary_files()) == set(unlinked_before)

    # globex's refused part was given back with its file: its whole archive fits in barely more than itself.
    api.config["EXPORT_DISK_BYTES"] = str(globex_size + 100)
    assert _exported_size(client, "globex", globex) in range(globex_size - 100, globex_size + 100)
    assert _exported_size(client, "globex", globex) in range(globex_size - 100, globex_size + 100)


def test_an_export_larger_than_export_disk_bytes_alone_is_a_409_and_gives_its_part_back(api, sandbox, redis_url):
    client = api.test_client()
    token = create(client, "acme", sandbox)["admin_token"]
    _runs("acme", redis_url, 50)
    size = _exported_size(client, "acme", token)
    api.config["EXPORT_DISK_BYTES"] = str(size // 2)
    unlinked_before = _unlinked_temporary_files()

    refused = client.get("/workspaces/acme/export", headers=auth(token))

    assert refused.status_code == 409, refused.text
    assert refused.json["error"]["message"] == (f"workspace 'acme' was not exported: the archive grew past "
                                                f"{size // 2:,} bytes, the most this web server keeps on disk for "
                                                f"exports (EXPORT_DISK_BYTES)")
    assert set(_unlinked_temporary_files()) == set(unlinked_before)
    api.config["EXPORT_DISK_BYTES"] = str(size + 100)  # had the half written stayed counted, this would be a 429
    assert _exported_size(client, "acme", token) in range(size - 100, size + 100)


def test_a_workspace_keeps_one_export_on_disk_at_a_time_and_leaves_the_rest_to_the_others(api, sandbox, redis_url):
    # Without a share of its own, one customer's exports, each downloaded slowly, took all of EXPORT_DISK_BYTES and
    # every other customer's export was refused until they ended.
    client = api.test_client()
    acme = create(client, "acme", sandbox)["admin_token"]
    globex = create(client, "globex", sandbox)["admin_token"]
    _runs("acme", redis_url, 50)

    downloading = client.get("/workspaces/acme/export", headers=auth(acme))
    again = client.get("/workspaces/acme/export", headers=auth(acme))

    assert downloading.status_code == 200, downloading.text
    assert again.status_code == 429 and again.headers["Retry-After"] == "60", again.text[:300]
    assert again.json["error"]["message"] == ("workspace 'acme' was not exported: an export of workspace 'acme' is "
                                              "still being downloaded from this web server (one at a time); try "
                                              "again in 60 s")
    assert client.get("/workspaces/globex/export", headers=auth(globex)).status_code == 200  # another's is served
    downloading.get_data()
    downloading.close()
    assert client.get("/workspaces/acme/export", headers=auth(acme)).status_code == 200


@pytest.mark.timeout(90)
def test_an_export_whose_client_goes_mid_download_gives_its_disk_back(api, stack, sandbox, redis_url):
    # Under waitress the file is sent from its I/O loop and closed there, once sent or once the client is gone;
    # Flask's call_on_close is never called for it (web/export_disk.py). Had the count ended anywhere else, a
    # client gone mid-download would have kept its bytes counted for good, and refused every later export.
    client = api.test_client()
    acme = create(client, "acme", sandbox, limits={"webhooks_per_second": 0, "events_per_day": 0})["admin_token"]
    globex = create(client, "globex", sandbox)["admin_token"]
    secret = client.post("/workspaces/acme/webhooks", headers=auth(), json={"source": "forms"}).json["secret"]
    for n in range(200):  # ~12 MB: more than the sockets' buffers hold, so the download is still going
        body = {"title": f"Form {n}", "text": f"{n:06d} e" * 7500}
        assert _signed(client, "/workspaces/acme/hooks/forms", body, f"msg_{n}", secret).status_code == 202
    _runs("globex", redis_url, 50)
    acme_size, globex_size = _exported_size(client, "acme", acme), _exported_size(client, "globex", globex)
    stack.env.update(OPERATOR_TOKEN=OPERATOR, EXPORT_DISK_BYTES=str(acme_size + globex_size // 2))
    web = stack.web(threads=2)
    address = urlparse(web)

    downloading = socket.socket()
    downloading.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader's small window
    try:
        downloading.settimeout(30)
        downloading.connect((address.hostname, address.port))
        downloading.sendall(f"GET /workspaces/acme/export HTTP/1.1\r\nHost: x\r\n"
                            f"Authorization: Bearer {acme}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += downloading.recv(1024)
        assert head.startswith(b"HTTP/1.1 200 "), head[:200]

        refused = requests.get(f"{web}/workspaces/globex/export", headers=auth(globex), timeout=30)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "60", refused.text
        assert "(EXPORT_DISK_BYTES)" in refused.json()["error"]["message"]
    finally:
        downloading.close()  # gone mid-download, most of the archive unread

    wait_until(lambda: requests.get(f"{web}/workspaces/globex/export", headers=auth(globex),
                                    timeout=30).status_code == 200,
               30, "globex's export to be served once acme's client was gone")
    served = requests.get(f"{web}/workspaces/globex/export", headers=auth(globex), timeout=30)
    assert served.status_code == 200 and len(served.content) in range(globex_size - 100, globex_size + 100)


def _runs(name: str, redis_url: str, count: int) -> list[dict]:
    """`count` finished runs of the workspace, stored as a worker stores them, oldest first."""
    from engine import Plan
    from workers import workspaces
    from workers.runs import create_run

    connection, made = redis.Redis.from_url(redis_url), []
    with workspaces.using(workspaces.Workspace(name, "http://unused/", "unused")):
        for n in range(count):
            at = datetime(2030, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=n)
            run = {"id": f"run_{n}", "rule_id": "r", "rule_version": "1", "event_id": f"e{n}", "status": "succeeded",
                   "reason": "", "created_at": at.isoformat(), "updated_at": at.isoformat(), "steps": [],
                   "outputs": {"step": {"Name": f"Task {n}", "DescriptionHTML": "<p>done</p>" * 40}}, "attempts": 1,
                   "plan": Plan(rule_id="r", rule_version="1", event_id=f"e{n}", event={}).to_dict()}
            assert create_run(connection, run)
            made.append(run)
    return made


def _unlinked_temporary_files() -> dict[tuple[int, int], int]:
    """The files of the temporary folder this process holds open with no name left (tempfile.TemporaryFile): their
    size by (device, inode). pytest's captured output is some of them."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(tempfile.gettempdir()) and target.endswith(" (deleted)"):
                stat = os.fstat(int(fd))
                found[(stat.st_dev, stat.st_ino)] = stat.st_size
        except OSError:
            continue  # closed since it was listed (the listing's own descriptor among them)
    return found


def test_a_workspaces_file_is_applied_again_without_changing_anything(redis_url, sandbox, tmp_path):
    path = tmp_path / "workspaces.yaml"
    path.write_text(f"workspaces:\n  acme:\n    inloox_url: {sandbox.base_url}\n    inloox_api_key: {INLOOX_TOKEN}\n"
                    f"    admin_token: acme-admin-1\n    webhooks: {{forms: whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY}}\n")
    connection, keyring = redis.Redis.from_url(redis_url), Keyring([generate_key()])
    registry.put(connection, keyring, "other", {"inloox_url": sandbox.base_url})
    assert registry.apply_file(connection, keyring, str(path)) == ["other"]  # left running, and said
    version = registry.version(connection)
    registry.add_webhook(connection, keyring, "acme", "helpdesk")
    registry.apply_file(connection, keyring, str(path))
    assert registry.version(connection) == version + 1  # only the API's change; the file's apply wrote nothing
    served = registry.View(connection, keyring).workspaces()["acme"]
    assert sorted(served.webhook_sources) == ["forms", "helpdesk"]  # the API's source survives a restart
    assert registry.token_matches("acme-admin-1", served.admin_token_hash)


def _signed(client, path: str, body: dict, msg_id: str, secret: str):
    import json
    import time
    from datetime import datetime, timezone

    from standardwebhooks import Webhook

    raw, stamp = json.dumps(body), int(time.time())
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, timezone.utc), raw)
    return client.post(path, data=raw, headers={"content-type": "application/json", "webhook-id": msg_id,
                                                "webhook-timestamp": str(stamp), "webhook-signature": signature})


def test_the_flask_workspaces_commands_are_the_apis_twins(api, sandbox, redis_url):
    runner = api.test_cli_runner()
    created = runner.invoke(args=["workspaces", "create", "acme", "--inloox-url", sandbox.base_url],
                            env={"INLOOX_API_KEY_NEW": INLOOX_TOKEN})
    assert created.exit_code == 0 and "admin token: wsa_" in created.output, created.output
    assert runner.invoke(args=["workspaces", "create", "acme", "--inloox-url", sandbox.base_url]).exit_code == 1
    assert runner.invoke(args=["workspaces", "update", "acme", "--limits", '{"runs_per_minute": 5}']).output \
        .startswith("updated: acme")
    assert runner.invoke(args=["workspaces", "update", "acme", "--limits", '{"runs_per_minute": 5}']).output \
        .startswith("unchanged: acme")
    assert runner.invoke(args=["workspaces", "pause", "acme"]).exit_code == 0
    shown = runner.invoke(args=["workspaces", "show", "acme"]).output
    assert '"paused": true' in shown and INLOOX_TOKEN not in shown
    assert "PAUSED: paused by the operator" in runner.invoke(args=["workspaces", "list"]).output
    assert runner.invoke(args=["workspaces", "delete", "acme", "--yes"]).output.startswith("deleted: acme")
    missing = runner.invoke(args=["workspaces", "show", "acme"])
    assert missing.exit_code == 1 and "no workspace 'acme'" in missing.output


def test_the_append_only_file_holds_no_secret_in_plain_text(tmp_path, sandbox):
    """Every write Valkey ever took is in its AOF (issue 20's acceptance: search the file for the values)."""
    from app import create_app
    from tests.support.valkey import Valkey

    server = Valkey(tmp_path / "redis").start()
    try:
        app = create_app({"TESTING": True, "REDIS_URL": server.url, "INLOOX_URL": sandbox.base_url,
                          "INLOOX_API_KEY": sandbox.token, "INLOOX_REQUESTS_PER_SECOND": "0", "OPERATOR_TOKEN": OPERATOR})
        client = app.test_client()
        admin = create(client, "acme", sandbox, slack_signing_secret=SLACK_SECRET)["admin_token"]
        hook = client.post("/workspaces/acme/webhooks", headers=auth(), json={"source": "forms"}).json["secret"]
        rotated = client.post("/workspaces/acme/webhooks/forms/rotate", headers=auth()).json["secret"]
        sub = client.post("/workspaces/acme/subscriptions", headers=auth(admin),
                          json={"url": "https://example.com/hook", "events": ["Task.updated"]}).json["secret"]
        client.get("/runs")  # the default workspace applied too (its sandbox token)
        redis.Redis.from_url(server.url).execute_command("BGREWRITEAOF")  # and what a rewrite keeps
        time.sleep(1)
        written = b"".join(p.read_bytes() for p in (tmp_path / "redis").rglob("*") if p.is_file() and "aof" in p.name)
        assert b"registry:workspaces" in written and b"https://example.com/hook" in written  # the writes are there
        for secret in (INLOOX_TOKEN, SLACK_SECRET, admin, hook, rotated, sub, sandbox.token):
            assert secret.encode() not in written, secret
            assert secret.removeprefix("whsec_").encode() not in written, secret
    finally:
        server.stop()


def test_a_leftover_purge_that_meets_redis_away_is_done_once_redis_is_back(tmp_path, sandbox):
    """A worker notes a deleted workspace's leftovers for 3 and 15 s later; Redis away at both times (a failover
    as the workspace is deleted) must not leave what it wrote meanwhile for good: the purge waits for Redis."""
    from tests.support.valkey import Valkey

    server = Valkey(tmp_path / "redis").start()
    try:
        connection = server.client()
        keyring = Keyring([generate_key()])
        registry.put(connection, keyring, "acme", {"inloox_url": sandbox.base_url, "inloox_api_key": INLOOX_TOKEN})
        registry.delete(connection, "acme")
        leftovers = registry.Leftovers()
        leftovers.let_go("acme", now=0.0)  # the worker noticed the deletion
        connection.set("ws:acme:runs:done", "written in the second before it noticed")

        server.stop()  # Redis away at both purges: the worker logs the error and goes on (workers/worker.py)
        for at in registry.Leftovers.AFTER:
            with pytest.raises(redis.ConnectionError):
                leftovers.purge_due(connection, now=at)
        server.start()

        leftovers.purge_due(connection, now=registry.Leftovers.AFTER[-1] + 1.0)
        assert list(connection.scan_iter(match="*acme*")) == []
    finally:
        server.stop()


def test_a_leftover_purge_whose_step_fails_is_begun_again_not_taken_as_done(redis_url, monkeypatch):
    """A purge goes on over several calls (one generator of steps): a step that raised other than a Redis error ended
    that generator, and the next call took the ended generator for a purge done, forgot it, and left the rest of the
    workspace's keys for good. Like one that meets Redis away, it is begun again."""
    from workers.registry import _removal

    connection = redis.Redis.from_url(redis_url)
    connection.set("ws:acme:runs:done", "x")
    connection.set("rq:scheduler-lock:acme", "x")  # deleted by the purge's last step
    real, failed = _removal._delete_queue_keys, []

    def failing_once(connection, name):
        if not failed:
            failed.append(name)
            raise ValueError("a key the purge cannot read")
        yield from real(connection, name)

    monkeypatch.setattr(_removal, "_delete_queue_keys", failing_once)
    leftovers = registry.Leftovers()
    leftovers.let_go("acme", now=0.0)
    with pytest.raises(ValueError):
        leftovers.purge_due(connection, now=registry.Leftovers.AFTER[0])
    leftovers.purge_due(connection, now=registry.Leftovers.AFTER[0] + 1.0)
    assert list(connection.scan_iter(match="*acme*")) == []


def test_a_run_that_ends_long_after_its_workspace_was_deleted_leaves_nothing_behind(redis_url, sandbox):
    """A worker's last purge of a deleted workspace came 15 s after it let the workspace go, while a run of it in
    flight (several steps of a slow InLoox, each up to three requests of INLOOX_TIMEOUT) stored its record when it
    ended, later: a deleted customer's run stayed in Redis for a week. Each step renews the run's lease, which the
    15 s purge deletes with the workspace's other keys, so such a run stops at its next step or, at its last, stores
    its record within one lease: the worker purges once more after that."""
    from datetime import datetime, timezone

    from engine import Plan
    from workers import workspaces
    from workers.runs import create_run
    from workers.worker_context import run_lease

    connection = redis.Redis.from_url(redis_url)
    lease = run_lease(10.0)  # a worker's, at the default INLOOX_TIMEOUT
    registry.put(connection, Keyring([generate_key()]), "acme", {"inloox_url": sandbox.base_url,
                                                                "inloox_api_key": INLOOX_TOKEN})
    registry.delete(connection, "acme")
    leftovers = registry.Leftovers(lease=lease)
    leftovers.let_go("acme", now=0.0)  # the worker noticed the deletion
    for at in (3.0, 15.0):
        leftovers.purge_due(connection, now=at)

    # The run's last step began just before the 15 s purge, under a full lease; its record is stored as it ends.
    with workspaces.using(workspaces.Workspace("acme", sandbox.base_url, INLOOX_TOKEN)):
        now = datetime.now(timezone.utc)
        create_run(connection, {"id": "run_late", "rule_id": "r", "rule_version": "1", "event_id": "e",
                                "status": "succeeded", "reason": "", "created_at": now.isoformat(),
                                "updated_at": now.isoformat(), "steps": [], "outputs": {}, "attempts": 0,
                                "plan": Plan(rule_id="r", rule_version="1", event_id="e", event={}).to_dict()})
    assert list(connection.scan_iter(match="ws:acme:*"))
    leftovers.purge_due(connection, now=15.0 + lease + registry.Leftovers.MARGIN)
    assert list(connection.scan_iter(match="*acme*")) == []


def test_a_deleted_workspace_s_many_leftovers_keep_no_other_workspace_s_tick_waiting(redis_url, sandbox, rules_dir):
    """A scheduler purged a deleted workspace's leftovers whole in one round: with 200,000 of them, every other
    customer's ticks of that round waited for it. Its rounds go on meanwhile: a customer who signs up as the purge
    begins has its due tick fired while most of them are still there, and they all go in the end."""
    from tests.support.stack import TICK_RULE, write_rule
    from workers import eventlog, scheduler

    connection = redis.Redis.from_url(redis_url)
    keyring = Keyring.from_config({"SECRETS_KEY": os.environ["SECRETS_KEY"]})
    fields = {"inloox_url": sandbox.base_url, "inloox_api_key": INLOOX_TOKEN}
    registry.put(connection, keyring, "acme", fields)
    write_rule(rules_dir, "tick", TICK_RULE)
    leftovers, turns, release, stop = 200_000, [], threading.Event(), threading.Event()
    rounds = []  # at each round's end: (keys in Redis, globex's ticks fired)

    def turned():
        turns.append(None)
        if len(turns) == 2:  # acme's turn in the first round, held while acme is deleted and leaves its keys
            release.wait(60)

    def round_ended(ok):
        size = connection.dbsize()
        if release.is_set() and size < leftovers and not connection.hexists(registry.RECORDS, "globex"):
            connection.zadd("ws:globex:" + scheduler.LAST_KEY, {"tick": time.time() - 90})  # a tick is due
            registry.put(connection, keyring, "globex", {**fields, "rules": str(rules_dir)})
        rounds.append((size, len(eventlog.waiting(connection, workspace="globex"))))

    served = registry.Served(connection, {"SECRETS_KEY": os.environ["SECRETS_KEY"]}, refresh_seconds=0)
    thread = threading.Thread(target=scheduler.run, args=(connection, served, scheduler.SchedulerSettings(0.05), stop),
                              kwargs={"rounds": round_ended, "turned": turned})
    thread.start()
    try:
        wait_until(lambda: len(turns) >= 2, 20, "acme's turn")
        registry.delete(connection, "acme")
        for start in range(0, leftovers, 10_000):  # what its turn, and other processes, still wrote of it
            connection.mset({f"ws:acme:runs:{n}": "x" for n in range(start, start + 10_000)})
        release.set()
        fired = wait_until(lambda: [size for size, ticks in rounds if ticks], 120, "globex's tick")[0]
        assert fired > leftovers // 2, rounds  # most of acme's leftovers were still there
        wait_until(lambda: not list(connection.scan_iter(match="ws:acme:*", count=10_000)), 300, "acme's leftovers gone")
    finally:
        release.set()
        stop.set()
        thread.join(30)


TWO_TASKS = """\
id: two-tasks
description: Each form becomes two tasks, one step after the other.
when:
  - webhook: forms
then:
  - id: first
    inloox.create: Task
    values: {Name: "First {{ webhook.body.title }}", ProjectId: "{{ webhook.body.project }}", WorkAmount: 1}
  - id: second
    inloox.create: Task
    values: {Name: "Second {{ webhook.body.title }}", ProjectId: "{{ webhook.body.project }}", WorkAmount: 1}
"""


def test_a_run_in_flight_as_its_workspace_is_deleted_writes_nothing_more_anywhere(api, stack, sandbox, redis_url,
                                                                                  rules_dir, tmp_path):
    """A real worker's run of a workspace is held between its two steps (its first task written in InLoox) while
    the operator deletes the workspace; it goes on only after every purge the worker makes of it. It then finds its
    lease gone and stops: no second task in the deleted customer's InLoox, and nothing of the workspace in Redis.
    Meanwhile the worker's event consumer turns without error: it used to keep reading the deleted workspace's
    log while that event was in flight (NOGROUP: a Redis error, and the log made again), and to look after it (no
    such workspace), each turn failing before it read any other workspace's events."""
    from tests.support.stack import ensure_project, write_form_rule

    client, connection = api.test_client(), redis.Redis.from_url(redis_url)
    project = ensure_project(sandbox)
    acme = sandbox.add_user(INLOOX_TOKEN, "Acme", "Bot")
    token = create(client, "acme", sandbox)["admin_token"]
    secret = client.post("/workspaces/acme/webhooks", headers=auth(), json={"source": "forms"}).json["secret"]
    assert client.put("/workspaces/acme/rules", headers=auth(token),
                      json={"files": {"two.yaml": TWO_TASKS}}).status_code == 201
    helpdesk = api.test_cli_runner().invoke(args=["webhooks", "add", "helpdesk"]).output.split("secret: ")[1].split()[0]
    write_form_rule(rules_dir)  # the default workspace's rules: another customer's, served by the same worker
    (rules_dir / "forms.yaml").write_text((rules_dir / "forms.yaml").read_text().replace("webhook: forms",
                                                                                        "webhook: helpdesk"))
    release = tmp_path / "release-run"
    # INLOOX_TIMEOUT=1: a run lease of 18 s, so the worker's last purge of a deleted workspace comes ~48 s after it.
    stack.env.update(ENGINE_FAILPOINTS="hold:between_steps", ENGINE_FAILPOINTS_RELEASE=str(release),
                     INLOOX_TIMEOUT="1")
    worker = stack.worker("worker", queues=("acme",))
    assert _signed(client, "/workspaces/acme/hooks/forms", {"title": "Call Ann", "project": project}, "msg_1",
                   secret).status_code == 202
    wait_until(lambda: "failpoint between_steps: held" in worker.output(), 30, "the run held after its first step")
    assert task_names(sandbox) == ["First Call Ann"]
    writes = [r for r in sandbox.requests() if r["method"] != "GET" and r["user"] == acme]

    assert client.delete("/workspaces/acme", headers=auth()).status_code == 200
    # Each of the worker's purges deletes every key of the workspace: a key of our own shows when one has come.
    for purge in range(len(registry.Leftovers(lease=18.0).after)):
        connection.set("ws:acme:canary", purge)
        wait_until(lambda: not connection.exists("ws:acme:canary"), 90, f"the worker's purge {purge + 1}")
    assert _signed(client, "/hooks/helpdesk", {"title": "Meanwhile", "project": project}, "msg_2",
                   helpdesk).status_code == 202  # the source was added before the worker started: served
    # (The held thread is the one that runs a quiet worker's events together: that event waits for it either way.)
    assert "error in its loop" not in worker.output() and "NOGROUP" not in worker.output()
    release.touch()
    wait_until(lambda: "event webhook:forms:msg_1 (acme) not handled" in worker.output(), 30,
               "the held run to end")
    wait_until(lambda: "Meanwhile" in task_names(sandbox), 30, "the other workspace's event")

    assert [k for k in connection.scan_iter(match="*acme*")] == []
    assert [f for f in connection.hkeys("metrics:counters") if b"acme" in f] == []
    assert [r for r in sandbox.requests() if r["method"] != "GET" and r["user"] == acme] == writes
    assert task_names(sandbox) == ["First Call Ann", "Meanwhile"]


def task_names(sandbox) -> list[str]:
    return sorted(t["Name"] for t in sandbox.get("Task").json()["value"])


FORMS_ONE_AT_A_TIME = """\
id: forms-one-at-a-time
description: A form becomes a task, one at a time per project.
when:
  - webhook: forms
concurrency: {key: "{{ webhook.body.project }}", limit: 1}
then:
  - id: task
    inloox.create: Task
    values: {Name: "{{ webhook.body.title }}", ProjectId: "{{ webhook.body.project }}", WorkAmount: 1}
"""
STILL_OPEN = """\
id: still-open
description: A task still open an hour after it was created.
when:
  - inloox: Task
    on: created
    for: 1h
then:
  - notify: "{url}"
    body: "still open: {{{{ task.Name }}}}"
"""
EVERY_MINUTE = """\
id: every-minute
description: A tick every minute.
when:
  - schedule: "* * * * *"
then:
  - notify: "{url}"
    body: tick
"""


def test_a_deleted_workspace_leaves_no_key_or_value_naming_it_after_events_runs_holds_ticks_polls_and_deliveries(
        api, stack, sandbox, redis_url, receiver):
    """Everything a served workspace writes, written by a real worker that polls and schedules too: webhook events,
    runs under a rule's `concurrency` (RQ's rate-limit keys, named after our key), a held run and its check
    scheduled in RQ, schedule ticks, polls of its InLoox, change-feed deliveries. Deleted, and once the worker has
    let it go, nothing in the shared Redis names it: no key, no member of a shared set, no field of a shared hash."""
    from tests.support.stack import ensure_project

    client, connection = api.test_client(), redis.Redis.from_url(redis_url)
    project = ensure_project(sandbox)
    sandbox.add_user(INLOOX_TOKEN, "Acme", "Bot")
    token = create(client, "acme", sandbox)["admin_token"]
    secret = client.post("/workspaces/acme/webhooks", headers=auth(), json={"source": "forms"}).json["secret"]
    bundle = {"forms.yaml": FORMS_ONE_AT_A_TIME, "still-open.yaml": STILL_OPEN.format(url=receiver.json_url),
              "every-minute.yaml": EVERY_MINUTE.format(url=receiver.json_url)}
    assert client.put("/workspaces/acme/rules", headers=auth(token), json={"files": bundle}).status_code == 201
    assert client.post("/workspaces/acme/subscriptions", headers=auth(token),
                       json={"url": f"{receiver.url}/feed", "events": ["Task.created"]}).status_code == 201
    # One create at a time, each slow: the later forms wait their turn in RQ's rate limit as the workspace goes.
    sandbox.fault(kind="latency", latency_ms=1500, methods=["POST"], path="^Task$")
    stack.env.update(WORKER_POLLS="1", POLL_INTERVAL="0.5", SCHEDULE_INTERVAL="0.5")
    worker = stack.worker("worker")  # as the Procfile starts it: it serves every workspace of the registry

    for n in range(3):
        assert _signed(client, "/workspaces/acme/hooks/forms", {"title": f"Form {n}", "project": project},
                       f"msg_{n}", secret).status_code == 202
    # Alex's task after the poller's baseline of the set: taken in by the baseline (a CI run's poller was that slow to
    # start), it is no created task, and the forms' are the engine's own (chained: no rule runs for them), so no run
    # was ever held.
    wait_until(lambda: connection.exists("ws:acme:poll:Task:cursor"), 30, "the poller's Task baseline")
    assert sandbox.post("Task", json={"Name": "Opened by Alex", "ProjectId": project, "WorkAmount": 1}).ok
    wait_until(lambda: any(r["path"] == "/feed" for r in receiver.received), 60, "the change-feed delivery")
    # Each created task is held an hour (Alex's, then each form's as the poller sees it): one at least.
    wait_until(lambda: _statuses(client, token).count("held") >= 1, 60, "a held run")
    wait_until(lambda: list(connection.scan_iter(match="rq:rl:ws:acme:*")), 30, "a run waiting its turn")
    wait_until(lambda: _statuses(client, token).count("succeeded") == 3, 60, "the forms' tasks")

    assert client.delete("/workspaces/acme", headers=auth()).status_code == 200
    # The worker and its poller each purge what is left of the workspace 3 and 15 s after they let it go (the
    # worker once more a run lease later, for runs still in flight: none here). Each purge deletes every key of the
    # workspace: a key of our own shows when one has come.
    for purge in range(3):
        connection.set("ws:acme:canary", purge)
        wait_until(lambda: not connection.exists("ws:acme:canary"), 120, f"the worker's purge {purge + 1}")

    assert "error in its loop" not in worker.output()
    assert [k for k in connection.scan_iter(match="*acme*")] == []
    # RQ's record of the worker itself names the queues it served when it started (acme too): it goes with the worker.
    assert [v for v in every_value(connection, leave_out=b"rq:worker:") if b"acme" in v] == []


def _statuses(client, token: str) -> list[str]:
    return [r["status"] for r in client.get("/workspaces/acme/runs?limit=100", headers=auth(token)).json["runs"]]


def test_a_workspace_write_redis_refuses_is_not_half_made(api, sandbox, redis_url):
    # The registry's write stored the record, then bumped the version every process re-reads on: with the version
    # refused (a value that is no counter), the operator was answered an error, the workspace existed all the same,
    # no process had re-read it, and the retry was answered that it exists.
    api.config["PROPAGATE_EXCEPTIONS"] = False  # answered as the operator would be answered
    client, connection = api.test_client(), redis.Redis.from_url(redis_url)
    connection.set("registry:version", "not a counter")
    body = {"inloox_url": sandbox.base_url, "inloox_api_key": INLOOX_TOKEN}

    refused = client.put("/workspaces/acme", headers=auth(), json=body)

    assert refused.status_code >= 500
    assert client.get("/workspaces/acme", headers=auth()).status_code == 404
    connection.delete("registry:version")  # mended
    assert client.put("/workspaces/acme", headers=auth(), json=body).status_code == 201


def test_the_operators_usage_of_every_workspace_leaves_out_only_one_whose_counts_redis_refuses(api, sandbox, redis_url):
    # Every workspace's usage was read in one pass: one workspace's day of counts under a key of another type answered
    # the operator's whole report with a 500.
    from datetime import datetime, timezone

    client, connection = api.test_client(), redis.Redis.from_url(redis_url)
    api.config["PROPAGATE_EXCEPTIONS"] = False  # answered as the operator would be answered
    create(client, "acme", sandbox)
    create(client, "globex", sandbox)
    today = datetime.now(timezone.utc).date().isoformat()
    connection.set(f"ws:globex:usage:{today}", "not a hash")

    answer = client.get("/usage", headers=auth())

    assert answer.status_code == 200, answer.text
    shown = {w["workspace"]: w for w in answer.json["workspaces"]}
    assert {"acme", "globex"} <= set(shown)
    assert "error" not in shown["acme"] and shown["acme"]["runs"] == 0
    assert "cannot be read" in shown["globex"]["error"]


def test_a_scheduler_process_deletes_what_it_wrote_of_a_workspace_deleted_during_its_round(api, stack, sandbox,
                                                                                          redis_url, tmp_path):
    """`python -m workers.scheduler` runs no poll loop, whose purges (workers/poller/loop.py Following) delete what a
    process wrote of a workspace in the moment before it noticed the deletion: a scheduler's turn of the workspace in
    progress as it was deleted stored the rule's last look after the delete, and `ws:acme:schedule:last` stayed for
    good (a name created again found it: the old life's look)."""
    from tests.support.stack import TICK_RULE, write_rule

    folder = tmp_path / "acme-rules"
    folder.mkdir()
    write_rule(folder, "tick", TICK_RULE)
    create(api.test_client(), "acme", sandbox, rules=str(folder))
    release = tmp_path / "release-turn"
    stack.env.update(ENGINE_FAILPOINTS="hold:schedule_workspace", ENGINE_FAILPOINTS_RELEASE=str(release))
    scheduler = stack.scheduler()
    wait_until(lambda: "failpoint schedule_workspace: held" in scheduler.output(), 20, "a workspace's turn held")

    connection = redis.Redis.from_url(redis_url)
    assert api.test_client().delete("/workspaces/acme", headers=auth()).status_code == 200
    release.touch()  # the round goes on with acme, which it listed before the delete
    wait_until(lambda: connection.exists("ws:acme:schedule:last"), 10, "the held turn to store its look")
    time.sleep(registry.Leftovers.AFTER[-1] + 3.0)  # the purges' times, and a round after

    assert [k for k in connection.scan_iter(match="ws:acme:*")] == [], scheduler.output()[-3000:]
    assert scheduler.alive()
