"""The rules API as an admin uses it: what an upload that cannot be loaded answers."""
from __future__ import annotations

import time

import pytest

from tests.support.bundled import (ADMIN as BUNDLED_ADMIN, HELLO, LARGE, bundled_app, compiled_from, heavy_turn_held,
                                   large_bundle, upload)
from engine import load_texts
from web import bundle_check
from web.resources import get_context
from workers.workspaces import Workspace

ADMIN = "globex-admin-token"


@pytest.fixture
def api(redis_url):
    """The app serving one workspace whose rules are uploaded bundles (no InLoox call is made)."""
    from app import create_app

    globex = Workspace("globex", "http://127.0.0.1:9", "unused", admin_token=ADMIN)
    return create_app({"TESTING": True, "REDIS_URL": redis_url, "WORKSPACES": {"globex": globex}}).test_client()


def test_a_bundle_whose_aliases_expand_too_far_is_refused_with_422_at_the_alias(api):
    # 108 KiB of YAML naming one 100 KiB string 2,000 times would be 195 MiB in the web process.
    bomb = ("id: bomb\nwhen: {manual: true}\ndescription: &s " + "x" * 100 * 1024 + "\n"
            "then:\n  - notify: x\n    body: y\n    tags: [" + ", ".join(["*s"] * 2000) + "]\n")

    refused = api.put("/workspaces/globex/rules", data=bomb, headers={
        "Content-Type": "application/yaml", "Authorization": f"Bearer {ADMIN}"})

    assert refused.status_code == 422
    [error] = refused.get_json()["errors"]
    assert error.startswith("rules.yaml:7:48: then[0].tags[9]: the alias *s takes the file past 1,104,900 characters "
                            "once its YAML aliases are expanded (the limit is 10 times the file's size"), error
    listing = api.get("/workspaces/globex/rules", headers={"Authorization": f"Bearer {ADMIN}"}).get_json()
    assert listing["versions"] == []  # nothing was stored


@pytest.mark.parametrize("backoff", ["9999999999w", "1e400"])
def test_a_duration_too_long_for_the_clock_is_refused_with_422_at_its_line(api, backoff):
    rule = ("id: patient\ndescription: Waits long between tries.\nwhen:\n  - manual: true\n"
            f"retry: {{attempts: 2, backoff: {backoff}}}\nthen:\n  - notify: json://127.0.0.1:9/x\n    body: hi\n")

    refused = api.put("/workspaces/globex/rules", data=rule, headers={
        "Content-Type": "application/yaml", "Authorization": f"Bearer {ADMIN}"})

    assert refused.status_code == 422, refused.text
    assert refused.get_json()["errors"][0].startswith("rules.yaml:5:"), refused.text
    assert "is not a duration" in refused.get_json()["errors"][0], refused.text


@pytest.mark.parametrize("number", ["١", "１", " 1", "+1", "1_0", "-1", "x"])
def test_a_version_number_is_ascii_digits_only(api, number):
    auth = {"Authorization": f"Bearer {ADMIN}"}
    for rule_id in ("first", "second"):  # version 2 active; `int()` would read each path as 1 or 10
        bundle = f"id: {rule_id}\nwhen: {{manual: true}}\nthen:\n  - notify: json://127.0.0.1:9/x\n    body: hi\n"
        assert api.put("/workspaces/globex/rules", data=bundle, headers={
            **auth, "Content-Type": "application/yaml"}).status_code == 201

    refused = api.post(f"/workspaces/globex/rules/versions/{number}/activate", headers=auth)

    assert refused.status_code == 404, refused.text
    assert refused.get_json()["error"]["message"].startswith(f"no rule bundle version {number!r}")
    assert api.get("/workspaces/globex/rules", headers=auth).get_json()["active"] == "v2"


def test_an_idempotency_key_sent_again_with_another_input_is_refused_with_422(api):
    # Stripe's rule: a key stands for one request. Answered as a duplicate, the second input was dropped unsaid.
    auth = {"Authorization": f"Bearer {ADMIN}"}
    bundle = "id: hello\nwhen: {manual: true}\nthen:\n  - notify: json://127.0.0.1:9/x\n    body: 'hi {{ input.by }}'\n"
    assert api.put("/workspaces/globex/rules", data=bundle, headers={
        **auth, "Content-Type": "application/yaml"}).status_code == 201

    def run(key: str, given: dict):
        return api.post("/workspaces/globex/rules/hello/run", json={"input": given},
                        headers={**auth, "Idempotency-Key": key})

    first, again, other = run("order-7", {"by": "Ann"}), run("order-7", {"by": "Ann"}), run("order-7", {"by": "Bob"})

    assert (first.status_code, first.get_json()["accepted"]) == (202, True)
    assert (again.status_code, again.get_json()["accepted"]) == (202, False)
    assert again.get_json()["run_id"] == first.get_json()["run_id"]
    assert other.status_code == 422, other.text
    assert other.get_json()["error"]["message"] == (
        "this Idempotency-Key was used for rule 'hello' with another input: a key stands for one request, "
        "sent again unchanged; give a new request a new key")
    assert run("order-7", {"by": "Ann"}).get_json()["accepted"] is False  # the first input still stands
    assert run("order-8", {"by": "Bob"}).get_json()["accepted"] is True


def test_a_manual_run_that_must_compile_the_bundle_first_takes_a_heavy_turn(redis_url):
    # Its first compile in this process (~5.6 s of CPU for a 1 MB bundle) holds the web's one GIL: one at a time, as
    # an upload's check is; once compiled, runs of the same version take no turn.
    app = bundled_app(redis_url)
    upload(app, {**large_bundle(LARGE), "hello.yaml": HELLO})
    client, auth = app.test_client(), {"Authorization": f"Bearer {BUNDLED_ADMIN}"}

    with heavy_turn_held(app):
        refused = client.post("/rules/hello/run", json={}, headers=auth)

    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "10"
    assert "first compile of a rule bundle" in refused.get_json()["error"]["message"]
    assert compiled_from(app) == ""
    assert client.post("/rules/hello/run", json={}, headers=auth).status_code == 202
    assert compiled_from(app) == "1"
    with heavy_turn_held(app):
        assert client.post("/rules/hello/run", json={}, headers=auth).status_code == 202


def test_a_manual_runs_first_compile_of_a_large_bundle_parses_its_yaml_off_the_webs_thread(redis_url):
    # A bundle's first use in a web process compiled it on the request's thread (5-7 s of CPU for 1 MB, in the GIL all
    # webhooks on the process need: acks p50 3 -> 14 ms). Its YAML and schema check (~90 %) are a child's now.
    app, files = bundled_app(redis_url), {**large_bundle(300_000), "hello.yaml": HELLO}
    upload(app, files)
    started = time.thread_time()
    here = load_texts(sorted(files.items()))
    compile_cpu = time.thread_time() - started

    started = time.thread_time()  # the test client serves the request on this thread
    answer = app.test_client().post("/rules/hello/run", json={}, headers={"Authorization": f"Bearer {BUNDLED_ADMIN}"})
    web_cpu = time.thread_time() - started

    assert answer.status_code == 202 and len(here.rules) > 400 and not here.skipped, answer.text
    assert web_cpu < compile_cpu / 2, f"the web's thread: {web_cpu:.2f} s of CPU, a compile here {compile_cpu:.2f} s"
    with app.test_request_context("/readyz"):
        app.preprocess_request()
        there = get_context().rules.ruleset()
    assert [(r.id, r.version, r.file, r.line, r.summary) for r in there.rules.values()] == [
        (r.id, r.version, r.file, r.line, r.summary) for r in here.rules.values()]


def test_a_large_bundles_compile_whose_child_fails_is_done_in_the_web_not_answered_500(redis_url, monkeypatch, tmp_path):
    # The child parse is the web's saving, not the customer's risk: a child that fails for a reason of its own (here it
    # cannot import the web: started in an empty folder) leaves the compile to the web, as before the child.
    app = bundled_app(redis_url)
    upload(app, {**large_bundle(LARGE), "hello.yaml": HELLO})
    monkeypatch.setattr(bundle_check, "_ROOT", tmp_path)

    answer = app.test_client().post("/rules/hello/run", json={}, headers={"Authorization": f"Bearer {BUNDLED_ADMIN}"})

    assert answer.status_code == 202, answer.text
    assert compiled_from(app) == "1"
