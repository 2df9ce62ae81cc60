"""`/healthz` and `/readyz` against a real Redis and the sandbox."""
from __future__ import annotations

from app import create_app
from tests.support.processes import free_port


def test_healthz_answers_without_dependencies():
    app = create_app({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_reports_each_dependency_ok(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["status"] == "ready"
    assert response.json["checks"]["redis"] == {"ok": True}
    assert response.json["checks"]["inloox"]["ok"] is True


def test_readyz_names_an_unreachable_redis(redis_url, sandbox):
    app = create_app({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": sandbox.token})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["redis"]["ok"] is False
    assert "Connection" in response.json["checks"]["redis"]["error"]
    assert response.json["checks"]["inloox"]["ok"] is True


def test_readyz_reports_a_rejected_inloox_token_without_leaking_it(redis_url, sandbox):
    app = create_app({"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": "ilx_SENTINELtokenSENTINEL"})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["inloox"]["ok"] is False
    assert "401" in response.json["checks"]["inloox"]["error"]
    assert "SENTINEL" not in response.get_data(as_text=True)


def test_unknown_path_gets_a_json_error(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert response.json["error"]["code"] == "NotFound"

