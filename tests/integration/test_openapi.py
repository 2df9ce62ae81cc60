"""The OpenAPI document at /openapi.json, and Schemathesis against the app: no input makes a 500."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import status_code_conformance

from app import create_app
from tests.support.stack import WEBHOOK_SECRET

# Every example is a real request against Redis and the sandbox; 50 per operation keeps the run < 60 s.
EXAMPLES_PER_OPERATION = 50


@pytest.fixture
def served(redis_url, sandbox, rules_dir):
    """The app as it is served (not TESTING: a bug must surface as a 500, as a client would see it)."""
    return create_app({"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url, "INLOOX_API_KEY": sandbox.token,
                       "RULES_PATH": str(rules_dir), "DEV_INBOX": "1", "WEBHOOK_SOURCES": {"forms": [WEBHOOK_SECRET]}})


def test_the_document_names_every_endpoint_the_app_serves(served):
    documented = set(served.test_client().get("/openapi.json").json["paths"])
    served_paths = {rule.rule.replace("<", "{").replace(">", "}") for rule in served.url_map.iter_rules()
                    if rule.endpoint not in ("static", "favicon")
                    and "/ui" not in rule.rule}  # the dashboard: HTML pages
    assert served_paths <= documented, served_paths - documented


def test_no_generated_request_gets_a_server_error(served):
    # Each operation's strategy driven by Hypothesis here: Schemathesis' pytest plugin does not
    # support pytest 9 yet.
    schema = schemathesis.openapi.from_wsgi("/openapi.json", served)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case):
            response = case.call()
            # 503 is a documented answer (/readyz without a worker, a hook when Redis is down); 500 never is.
            assert response.status_code != 500, f"{case.method} {case.formatted_path}: {response.text[:500]}"
            case.validate_response(response, checks=[status_code_conformance])

        check()
