"""What the API answers while Redis cannot be reached: 503 with Retry-After and the error shape, not a 500."""
import pytest

from app import create_app


@pytest.fixture
def client():
    # Port 1: nothing listens, so every connection is refused at once, as in an outage. Without SECRETS_KEY the
    # workspaces are the declared ones (no registry read before the route, which answers 503 itself).
    app = create_app({"TESTING": True, "REDIS_URL": "redis://127.0.0.1:1/0", "RULES_ENV": "", "SECRETS_KEY": "",
                      "INLOOX_REQUESTS_PER_SECOND": "0"})
    return app.test_client()


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/runs", None), ("GET", "/events?since=1h", None), ("GET", "/ui/runs", None),
    ("POST", "/events/replay", {"since": "1h"}),
])
def test_a_route_that_meets_a_redis_outage_answers_503_to_retry(client, method, path, body):
    """A Redis outage is not a bug of the request: the client is told to come back (Retry-After), as the webhook
    route already does, rather than given a 500 and a traceback in the log for each request."""
    answer = client.open(path, method=method, json=body)
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert int(answer.headers["Retry-After"]) > 0
    assert answer.json["error"]["code"] == "ServiceUnavailable"
    assert "Redis" in answer.json["error"]["message"]
