"""The OpenAPI document at /openapi.json, and Schemathesis against the app: no 500, no answer the document does not describe."""
from __future__ import annotations

import time
from collections import Counter

import pytest
from schemathesis import openapi
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, from_schema
from schemathesis.engine.events import EngineFinished, FatalError, NonFatalError, ScenarioFinished

from app import create_app
from tests.support.processes import wait_until
from tests.support.stack import WEBHOOK_SECRET, all_runs, write_rule

ADMIN_TOKEN = "fuzz-admin-token"
RULE = """
id: say-hello
description: Say hello when a person asks.
when:
  - manual: true
then:
  - notify: "{{ env.TEAM_CHANNEL_URL }}"
    title: Hello
    body: "Hello from {{ input.by }}"
"""
CHECKS = ("not_a_server_error", "status_code_conformance", "response_schema_conformance",
          "content_type_conformance", "response_headers_conformance")
# Every example is a real request against Redis and the sandbox; these bound the run to about a minute.
EXAMPLES_PER_OPERATION = 100
STATEFUL_EXAMPLES = 200


@pytest.fixture
def served(redis_url, sandbox, rules_dir, receiver, monkeypatch):
    """The app as it is served (not TESTING: a bug must surface as a 500, as a client would see it)."""
    monkeypatch.setenv("TEAM_CHANNEL_URL", receiver.json_url)  # what RULES_ENV lets rules read
    write_rule(rules_dir, "hello", RULE)
    return create_app({"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url, "INLOOX_API_KEY": sandbox.token,
                       "RULES_PATH": str(rules_dir), "DEV_INBOX": "1", "ADMIN_TOKEN": ADMIN_TOKEN,
                       "INLOOX_REQUESTS_PER_SECOND": "0", "WEBHOOK_SOURCES": {"forms": [WEBHOOK_SECRET]}})


@pytest.fixture
def known(served, stack, redis_url):
    """Ids that exist (a rule, its run and event, a subscription), so generated requests reach past the 404s."""
    client, auth = served.test_client(), {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    started = client.post("/rules/say-hello/run", json={"input": {"by": "Ann"}}, headers=auth)
    assert started.status_code == 202, started.text
    worker = stack.worker()
    wait_until(lambda: [r for r in all_runs(redis_url) if r["status"] == "succeeded"], 30, "the seeded run")
    worker.stop()  # the fuzzer needs the data, not a worker taking the machine's two cores
    subscription = client.post("/subscriptions", headers=auth,
                               json={"url": "https://example.com/hook", "events": ["Task.updated"]})
    assert subscription.status_code == 201, subscription.text
    return {"ws": "default", "rule_id": "say-hello", "run_id": started.json["run_id"],
            "event_id": started.json["event_id"], "sub_id": subscription.json["id"], "number": "1"}


def test_the_document_names_every_endpoint_the_app_serves(served):
    documented = set(served.test_client().get("/openapi.json").json["paths"])
    served_paths = {rule.rule.replace("<", "{").replace(">", "}") for rule in served.url_map.iter_rules()
                    if rule.endpoint not in ("static", "favicon", "rq_dashboard_favicon")
                    and "/ui" not in rule.rule}  # the dashboard: HTML pages
    assert served_paths <= documented, served_paths - documented


# 52-75 s of CPU-bound generation in a CI run; past the suite's 120 s once a core of the machine was taken by
# another job. A hang of the web still ends it.
@pytest.mark.timeout(300)
def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(served, known):
    config = SchemathesisConfig.from_dict({
        "seed": 19,
        "suppress-health-check": ["all"],
        "parameters": known,
        "auth": {"openapi": {"adminToken": {"bearer": ADMIN_TOKEN}}},
        # Auth is the configured token throughout: negated tokens only ever meet the same 401.
        "generation": {"mode": "all", "max-examples": EXAMPLES_PER_OPERATION, "database": "none",
                       "with-security-parameters": False},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        # /readyz answers 503 "not ready" by design here: the fuzzed stack runs no worker.
        "operations": [{"include-path": "/readyz",
                        "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "4xx", 503]}}}],
        "continue-on-failure": True,
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
                   # The document's links, plus Schemathesis' dependency analysis; not its reading of URLs in
                   # bodies ("location-headers"), which raises on a stored subscription URL like "http://[".
                   "stateful": {"enabled": True, "max-steps": 6, "inference": {"algorithms": ["dependency-analysis"]},
                                "generation": {"max-examples": STATEFUL_EXAMPLES}}},
    })
    schema = openapi.from_wsgi("/openapi.json", served, config=config)
    started = time.monotonic()
    failures, errors, answers = _run(schema)
    elapsed = time.monotonic() - started
    print(f"schemathesis: {elapsed:.0f} s; answers by phase and status: {sorted(answers.items())}")
    problems = failures + sorted(set(errors))
    assert not problems, f"{len(problems)} problems in {elapsed:.0f} s:\n" + "\n\n".join(problems[:40])
    assert {phase for phase, _ in answers} == {"examples", "coverage", "fuzzing", "stateful"}, "a phase sent nothing"


def _run(schema) -> tuple[list[str], list[str], Counter]:
    """Run every phase; return each distinct failure (check, operation, request), errors, and answers by (phase, status)."""
    failures: dict[tuple, str] = {}
    errors, answers = [], Counter()
    for event in from_schema(schema).execute():
        if isinstance(event, ScenarioFinished):
            answers.update((event.phase.value, i.response.status_code) for i in event.recorder.interactions.values()
                           if i.response is not None)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        failures.setdefault((check.name, failure.operation, failure.title),
                                            f"[{check.name}] {failure.operation}: {failure.title}\n"
                                            f"{failure.message}\n{check.failure_info.code_sample}")
        elif isinstance(event, (NonFatalError, FatalError)):  # an exception in the app, or in the run itself
            errors.append(f"{type(event).__name__}: {getattr(event, 'label', '')} "
                          f"{getattr(event, 'value', getattr(event, 'exception', ''))}")
        elif isinstance(event, EngineFinished):
            break
    return list(failures.values()), errors, answers


def test_operation_ids_are_unique_and_every_link_leads_to_one(served):
    spec = served.test_client().get("/openapi.json").json
    operations = [op for path in spec["paths"].values() for op in path.values()]
    ids = [op["operationId"] for op in operations if "operationId" in op]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    linked = {link["operationId"] for op in operations for response in op["responses"].values()
              for link in response.get("links", {}).values()}
    assert linked and linked <= set(ids), linked - set(ids)
