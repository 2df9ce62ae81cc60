"""`/healthz` and `/readyz` against a real Redis and the sandbox."""
from __future__ import annotations

import pytest
import redis

from app import create_app
from tests.support.bundled import HELLO, bundled_app, compiled_from, upload
from tests.support.processes import free_port, wait_until
from workers import rq_schedule


def test_healthz_answers_without_dependencies():
    app = create_app({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_reports_each_dependency_ok(client, stack):
    stack.worker()
    response = wait_until(lambda: _ready(client), 20, "/readyz with a worker running")
    assert response.json["status"] == "ready"
    assert response.json["checks"]["redis"] == {"ok": True}
    assert response.json["checks"]["inloox"]["ok"] is True
    assert response.json["checks"]["worker"] == {"ok": True, "workers": 1}


def test_readyz_is_not_ready_without_a_worker(client):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["worker"]["ok"] is False
    assert "no RQ worker" in response.json["checks"]["worker"]["error"]
    assert response.json["checks"]["redis"] == {"ok": True}


def _ready(client):
    response = client.get("/readyz")
    return response if response.status_code == 200 else None


def test_readyz_names_an_unreachable_redis(redis_url, sandbox):
    # No shared InLoox rate limit, whose window lives in Redis: InLoox itself is checked apart.
    app = create_app({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": sandbox.token, "INLOOX_REQUESTS_PER_SECOND": "0"})
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



@pytest.mark.timeout(120)
def test_readyz_is_not_ready_while_a_workers_event_consumer_does_not_run(client, stack):
    # Every turn of the worker's event loop fails (as a bug in it would): RQ's heartbeat goes on, but
    # no event would be handled, and /readyz must say so, naming the worker, within seconds.
    stack.env["ENGINE_FAILPOINTS"] = "consumer_turn~"  # every worker's loop
    stack.worker("stuck-worker")
    wait_until(lambda: _ready(client), 20, "/readyz with the worker's first beat")
    response = wait_until(lambda: (r := client.get("/readyz")).status_code == 503 and r, 20,
                          "/readyz to notice the consumer")
    check = response.json["checks"]["worker"]
    assert check["ok"] is False and check["workers"] == 1
    assert check["error"].startswith("not running in ") and "(event consumer failing)" in check["error"]


def test_readyz_is_not_ready_while_redis_refuses_every_turn_of_a_workers_event_consumer(client, stack, redis_url):
    # Before, any Redis error counted as an outage, which /readyz's own Redis check would show; but Redis answered
    # (WRONGTYPE at every read of the log), no event was handled, and the worker's beat said "running". The worker's
    # only workspace is refused: it serves nobody (with others served, it is ready and names it: test_workspaces.py).
    stack.worker("refused-worker")
    wait_until(lambda: _ready(client), 20, "/readyz with the worker's first beat")
    connection = redis.Redis.from_url(redis_url)
    connection.delete("ws:default:events")  # the workspace's event log replaced by a value of another type
    connection.set("ws:default:events", "not a stream")

    response = wait_until(lambda: (r := client.get("/readyz")).status_code == 503 and r, 15,
                          "/readyz to notice the consumer")

    assert "(event consumer failing)" in response.json["checks"]["worker"]["error"]
    assert response.json["checks"]["redis"] == {"ok": True}


def test_readyz_names_a_worker_whose_rq_scheduler_fails_at_every_start(client, stack, redis_url):
    # Before, /readyz never looked at RQ's scheduler: it ended at each start (restarted by RQ's maintenance every 10 s),
    # no retry or hold of any workspace moved onto its queue, and the worker was ready.
    stack.worker("scheduling-worker")
    wait_until(lambda: _ready(client), 20, "/readyz with the worker's first beat")
    redis.Redis.from_url(redis_url).set(rq_schedule.DUE, "not a sorted set")  # WRONGTYPE at each look at the index

    response = wait_until(lambda: (r := client.get("/readyz")).status_code == 503 and r, 15,
                          "/readyz to notice the scheduler")

    assert "(RQ scheduler failing)" in response.json["checks"]["worker"]["error"]


def test_readyz_names_a_worker_whose_rq_scheduler_hangs(client, stack):
    stack.env["ENGINE_FAILPOINTS"] = "hold:rq_schedule_turn"  # its first turn held, never released
    worker = stack.worker("stuck-scheduler")
    wait_until(lambda: "failpoint rq_schedule_turn: held" in worker.output(), 15, "the scheduler's first turn to hang")

    response = wait_until(lambda: (r := client.get("/readyz")).status_code == 503 and r,
                          18, "/readyz to notice the scheduler")  # ten seconds of silence, then a beat within five

    assert "(RQ scheduler stalled)" in response.json["checks"]["worker"]["error"]


@pytest.mark.timeout(120)
def test_readyz_says_so_while_every_rq_job_place_is_held_by_a_job_past_its_time_out(client, stack, redis_url):
    # A job that outlives its RQ time-out keeps its thread (none should: each bounds its own requests, but a bug
    # could), and the worker's RQ loop takes nothing more while every place is held that way: not ready, until it ends.
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    stack.env["WORKER_JOBS"] = "1"
    stack.worker("held-worker")
    wait_until(lambda: _ready(client), 20, "/readyz with the worker's first beat")
    queue = Queue("default", connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)
    job = queue.enqueue("time.sleep", 12, job_timeout=1)
    response = wait_until(lambda: (r := client.get("/readyz")).status_code == 503 and r, 20,
                          "/readyz to notice the job place held")
    check = response.json["checks"]["worker"]
    assert check["ok"] is False
    assert check["error"].startswith("not running in ")
    assert check["error"].endswith(" (RQ jobs stuck: each of its 1 job places held past the job's time-out)")
    wait_until(lambda: job.get_status(refresh=True) == "finished", 30, "the job to end")
    wait_until(lambda: _ready(client), 20, "/readyz once the place is free again")


def test_readyz_names_the_bundle_version_without_compiling_its_rules(redis_url):
    # A 1 MB bundle takes ~5 s of CPU to compile, in the web's one GIL: the probe needs only its number.
    app = bundled_app(redis_url)
    upload(app, {"hello.yaml": HELLO})

    response = app.test_client().get("/readyz")

    assert response.json["checks"]["rules"] == {"ok": True, "version": "v1", "broken": []}
    assert compiled_from(app) == ""
