"""A command whose answer Redis lost is never sent again by the client: redis-py's own retry stays off.

redis-py retries a command, or a whole pipeline, on a ConnectionError or TimeoutError when its connection's Retry
allows it (`redis.Redis(host=…)` is built with 10 retries by default). Redis may have executed the first send: only
its answer was lost (a connection reset after the write, an answer slower than the socket timeout). Sent again,
an INCR counts twice, a run's end bills twice (the script that writes the counts with the record's `billed` mark
runs twice), a SET NX claim answers nil to the very process that took it. The processes' recovery is built for an
outcome they do not know (the error raised, the event handled again, the ledger's "sent" mark, the `billed` mark,
the claim that holds the process's name): it needs the client to send each command once and raise.

The proxies of tests/support/cut.py let the command reach Valkey, which executes it, and lose its answer: by
closing the connection (MidWriteCut) or by never answering (LostAnswer, the client's socket timeout ends the wait).
"""
from __future__ import annotations

import threading
import time

import pytest
import redis

from tests.integration.test_run_round_trips import _event, batched_counts
from tests.support.cut import LostAnswer, MidWriteCut
from tests.support.stack import ensure_project, write_form_rule
from workers import round_trips, workspaces

__all__ = ["batched_counts"]  # the fixture, used by name

NOWHERE = "http://127.0.0.1:9/api/odata/"


def _worker_client(url: str) -> redis.Redis:
    """The worker's and the poller's client (its event threads, its jobs, the poller's polls)."""
    from workers.settings import redis_client

    return redis_client({"REDIS_URL": url, "WORKER_THREADS": "4"})


def _web_client(url: str) -> redis.Redis:
    """The web's client, as its app builds it."""
    from app import create_app
    from web.resources import get_redis

    app = create_app({"TESTING": True, "REDIS_URL": url, "INLOOX_URL": NOWHERE, "INLOOX_API_KEY": "token"})
    with app.app_context():
        return get_redis()


def _rq_client(url: str) -> redis.Redis:
    """RQ's own client in the worker (`rq worker --url $REDIS_URL`, then our Worker class): its dequeues and jobs'
    bookkeeping."""
    from rq.cli.helpers import get_redis_from_config

    from workers.worker import Worker

    return Worker(["default"], connection=get_redis_from_config({"REDIS_URL": url}),
                  serializer="rq.serializers.JSONSerializer").connection


CLIENTS = {"worker": _worker_client, "web": _web_client, "rq": _rq_client}
# RQ's client waits 12 s for an answer (RQ's own socket timeout): its reset alone shows its retry policy, which a
# timeout follows as well.
CASES = [("worker", "reset"), ("worker", "timeout"), ("web", "reset"), ("web", "timeout"), ("rq", "reset")]


def _lose_answer(loss: str, port: int):
    """A proxy to `port` and how to lose the answer of the next command whose bytes start with `name`."""
    if loss == "reset":
        proxy = MidWriteCut(port)
        return proxy, lambda name: proxy.arm(lambda command: command.startswith(name), after=1)
    proxy = LostAnswer(port)
    return proxy, lambda name: proxy.arm(lambda command: command.startswith(name))


def _incr_once(build, loss: str, direct: redis.Redis, url_options: str = "") -> tuple[str, int]:
    """What the client built by `build` made of an INCR whose answer was lost, and the count Valkey holds."""
    proxy, arm = _lose_answer(loss, direct.connection_pool.connection_kwargs["port"])
    with proxy:
        client = build(proxy.url + url_options)
        client.ping()  # connected: the INCR goes on this connection
        arm(b"INCR")
        try:
            outcome = f"answered {client.incr('counted')}"
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            outcome = type(exc).__name__
        client.close()
    return outcome, int(direct.get("counted") or 0)


@pytest.mark.parametrize("loss", ["reset", "timeout"])
def test_a_client_with_redis_pys_default_retry_sends_a_command_twice_when_its_answer_is_lost(redis_url, loss):
    """The proxies do what the tests below need: a client built with redis-py's default Retry sends the INCR again,
    and Valkey counts it twice."""
    direct = redis.Redis.from_url(redis_url)
    retrying = lambda url: redis.Redis(host="127.0.0.1", port=int(url.rsplit(":", 1)[1].split("/")[0]),  # noqa: E731
                                       socket_timeout=1)
    assert _incr_once(retrying, loss, direct) == ("answered 2", 2)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("process, loss", CASES)
def test_each_process_client_sends_a_command_once_when_its_answer_is_lost(redis_url, monkeypatch, process, loss):
    """The worker's, the web's and RQ's clients raise, and Valkey counted the INCR once: the caller's recovery
    knows the outcome is unknown, no retry of redis-py's decided it for them."""
    monkeypatch.setenv("REDIS_URL", redis_url)  # the worker's own settings (RQ's client is the one under test)
    direct = redis.Redis.from_url(redis_url)
    outcome, counted = _incr_once(CLIENTS[process], loss, direct)
    assert (outcome, counted) == ("ConnectionError" if loss == "reset" else "TimeoutError", 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("process, loss", CASES)
def test_a_retry_asked_for_in_redis_url_sends_nothing_twice(redis_url, monkeypatch, process, loss):
    """REDIS_URL is the operator's, passed to redis-py as it is: `?retry_on_timeout=true` (a common advice for a
    flaky network) gave every client a retry, and the INCR whose answer was lost was counted twice. A run's end
    (its billable counts) or a claim would have been sent twice the same way."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    direct = redis.Redis.from_url(redis_url)
    outcome, counted = _incr_once(CLIENTS[process], loss, direct, "?retry_on_timeout=true")
    assert (outcome, counted) == ("ConnectionError" if loss == "reset" else "TimeoutError", 1)


def test_threads_sharing_a_round_trip_whose_answer_is_lost_each_raise_and_count_once(redis_url):
    """Several threads' pipelines go in one round trip (workers/round_trips): a lost answer raises in every one of
    them, and each thread's counts were written once."""
    direct = redis.Redis.from_url(redis_url)
    threads = 6
    with MidWriteCut(direct.connection_pool.connection_kwargs["port"]) as proxy:
        trips = round_trips.RoundTrips(_worker_client(proxy.url), window=0.2)
        trips._gap = 0.0  # as in a busy worker: threads came close together, so a leader waits for the others
        trips.connection.ping()
        proxy.arm(lambda command: command.startswith(b"HINCRBY"), after=threads)  # the round trip, whole
        start, outcomes = threading.Barrier(threads), [None] * threads

        def one(n: int) -> None:
            with trips.connection.pipeline(transaction=False) as pipe:
                pipe.hincrby("counts", f"thread{n}", 1)
                start.wait()
                time.sleep(0.01 * n)  # one leads, the others join its round trip within the window
                try:
                    outcomes[n] = trips.execute(pipe)
                except redis.ConnectionError as exc:
                    outcomes[n] = exc

        workers = [threading.Thread(target=one, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        proxy.wait_cut()

    assert trips.sent == 1 and trips.carried == threads  # one round trip carried every thread's pipeline
    assert all(isinstance(o, redis.ConnectionError) for o in outcomes), outcomes
    counted = {k.decode(): int(v) for k, v in direct.hgetall("counts").items()}
    assert counted == {f"thread{n}": 1 for n in range(threads)}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("url_options", ["", "?retry_on_timeout=true"], ids=["as-shipped", "retry-in-url"])
def test_a_run_whose_end_is_answered_too_late_on_the_workers_client_bills_once_when_handled_again(
        redis_url, sandbox, tmp_path, batched_counts, url_options):
    """The event path on the worker's own client: a run's end (its record, `billed`, its billable counts, in one
    script, in the batch's shared round trip) reaches Valkey and its answer does not come within the socket
    timeout. The worker raises and the event is handled again: one task in InLoox, the run counted once. With a
    retry asked for in REDIS_URL, redis-py sent the run's end again and the run was billed twice."""
    from workers import recovery
    from workers.jobs import Arrival, handle_batch
    from workers.metering import usage
    from workers.worker_context import build_context

    ensure_project(sandbox)
    write_form_rule(tmp_path)
    direct = redis.Redis.from_url(redis_url)
    month = usage.month_of(usage.today())
    with LostAnswer(direct.connection_pool.connection_kwargs["port"]) as proxy:
        workspace = workspaces.Workspace(workspaces.DEFAULT, sandbox.base_url, sandbox.token, rules_path=str(tmp_path),
                                         limits=workspaces.Limits(inloox_requests_per_second=0))
        config = {"INLOOX_TIMEOUT": "10", "OUTBOUND_ALLOW": "", "RULES_ENV": "", "DELIVERY_RETRY_SECONDS": ""}
        ctx = build_context(config, workspace, _worker_client(proxy.url + url_options))
        with workspaces.using(workspace):
            assert not [o for o in handle_batch(ctx, [Arrival(_event(0), 0.0)]) if isinstance(o, BaseException)]
            arrivals = [Arrival(_event(1), 0.0)]
            proxy.arm(lambda command: b"billable_runs" in command)
            outcomes = handle_batch(ctx, arrivals)
            proxy.wait_lost(0)
            assert len(outcomes) == 1 and isinstance(outcomes[0], redis.TimeoutError), outcomes
            recovery.give_back(direct)  # the worker gives the run's lock back once Redis answers
            assert not [o for o in handle_batch(ctx, arrivals) if isinstance(o, BaseException)]  # handled again
            billed = usage.read_month(direct, "default", month).get("billable_runs", 0)

    assert billed == 2, "the run whose answer was lost was billed other than once"
    titles = sorted(t["Name"] for t in sandbox.get("Task").json()["value"] if t["Name"].startswith("Task "))
    assert titles == ["Task 0", "Task 1"], "each task once"


RULE = """rules:
  - id: r1
    trigger: {webhook: forms}
    actions: []
"""


def _exec_lost(loss: str, port: int):
    """A proxy to `port` that loses the answer of the next EXEC, once Valkey executed it."""
    proxy, arm = _lose_answer(loss, port)
    return proxy, lambda: arm(b"EXEC")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loss", ["reset", "timeout"])
def test_a_bundle_upload_whose_exec_answer_is_lost_stores_one_version_and_says_it_failed(redis_url, loss):
    """An upload is a WATCH/MULTI/EXEC transaction. redis-py turns a connection error met while keys are watched into
    a WatchError, and `Redis.transaction` ran the upload again on it: Valkey had executed the EXEC, so one upload
    stored two versions (no retry of redis-py's involved). The error is raised now (the web answers 503)."""
    from workers import bundles

    direct = redis.Redis.from_url(redis_url)
    proxy, arm = _exec_lost(loss, direct.connection_pool.connection_kwargs["port"])
    with proxy:
        client = _worker_client(proxy.url)
        client.ping()
        arm()
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            bundles.upload(client, "ws:lost:", {"a.yaml": RULE}, by="alex", checked=bundles.Checked(["r1"], []))

    assert sorted(int(n) for n in direct.hkeys("ws:lost:rules:versions")) == [1], "one upload, one version"
    assert direct.get("ws:lost:rules:active") == b"1"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loss", ["reset", "timeout"])
def test_a_subscription_rotation_whose_exec_answer_is_lost_adds_its_new_secret_once(redis_url, loss):
    """A rotation is a change of the subscription under WATCH: run again after its EXEC's answer was lost, it added
    the same new secret twice (one current, one as the old secret of the overlap). An answer that never comes (the
    socket timeout) is turned into a WatchError as a reset is, so both are checked."""
    import os

    from workers import subscriptions
    from workers.secrets import Keyring

    keyring = Keyring.from_config(os.environ)
    direct = redis.Redis.from_url(redis_url)
    with workspaces.using(workspaces.Workspace("lost", NOWHERE, "token")):
        sub, _ = subscriptions.create(direct, {"url": "https://example.com/hook", "events": ["Task.*"]},
                                      keyring=keyring)
        proxy, arm = _exec_lost(loss, direct.connection_pool.connection_kwargs["port"])
        with proxy:
            client = _worker_client(proxy.url)
            client.ping()
            arm()
            with pytest.raises(redis.ConnectionError if loss == "reset" else redis.TimeoutError):
                subscriptions.rotate(client, sub.id, keyring=keyring)
            # Redis has executed the EXEC: a cut once it closed its end, a silence once the client timed out.
            proxy.wait_cut() if loss == "reset" else proxy.wait_lost(0)
        secrets = [keyring.unseal(s["secret"]) for s in subscriptions.get(direct, sub.id).secrets]

    assert len(secrets) == 2 and len(set(secrets)) == 2, "the new secret and the old one, each once"
