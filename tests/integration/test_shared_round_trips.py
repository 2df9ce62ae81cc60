"""Issue 22: threads that each handle one event (a worker against a slow InLoox) share their Redis round
trips (workers/round_trips): on a real Valkey, against the sandbox over HTTP. What each thread gets back
is what its own pipeline would have given it: its replies, its own errors, and a lost connection."""
from __future__ import annotations

import threading
import time

import redis

from tests.integration.test_run_round_trips import (MAX_ROUND_TRIPS_PER_RUN, _CountingConnection, _context, _event,
                                                    batched_counts, run_id_of)
from tests.support.processes import free_port
from tests.support.stack import ensure_project, write_form_rule
from workers import workspaces
from workers.jobs import handle
from workers.round_trips import RoundTrips, shared
from workers.runs import load_run

__all__ = ["batched_counts"]  # the fixture, used by name

THREADS = 16


def _together(count: int, work) -> list:
    """`work(n)` on `count` threads released at once; what each returned or raised."""
    start, results = threading.Barrier(count), [None] * count

    def run(n: int) -> None:
        start.wait()
        try:
            results[n] = work(n)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def _company(trips: RoundTrips, connection: redis.Redis) -> None:
    """Sixteen threads' round trips at once: other threads are about, so a leader waits for them (after
    this, even a thread that reuses the identity of one of them, as a new thread may, finds company)."""
    _together(16, lambda n: trips.execute(connection.pipeline(transaction=False).ping()))


def test_events_handled_on_many_threads_at_once_share_their_round_trips(redis_url, sandbox, tmp_path, batched_counts):
    ensure_project(sandbox)
    write_form_rule(tmp_path)
    ctx, workspace = _context(redis_url, sandbox, tmp_path)

    def one_event(n: int) -> dict:
        with workspaces.using(workspace):
            return handle(ctx, _event(n), accepted_at=0.0)

    with workspaces.using(workspace):
        handle(ctx, _event(0), accepted_at=time.time())  # rules read, scripts cached, connections open
    # A connection for each thread before counting, and the round trips of a busy worker's threads.
    _together(THREADS, lambda n: shared(ctx.connection).execute(ctx.connection.pipeline(transaction=False).ping()))
    sent_before = _CountingConnection.sent
    outcomes = _together(THREADS, lambda n: one_event(n + 1))
    round_trips = (_CountingConnection.sent - sent_before) / THREADS
    with workspaces.using(workspace):
        runs = [load_run(ctx.connection, run_id_of(n)) for n in range(THREADS + 1)]

    assert outcomes == [{"event_id": f"webhook:forms:msg_rt_{n}", "runs": [run_id_of(n)]}
                        for n in range(1, THREADS + 1)]
    assert [r["status"] for r in runs] == ["succeeded"] * (THREADS + 1)
    names = sorted(t["Name"] for t in sandbox.get("Task").json()["value"])
    assert names == sorted(f"Task {n}" for n in range(THREADS + 1)), "each task written once"
    # Alone, each thread's run takes MAX_ROUND_TRIPS_PER_RUN (its start and its end).
    assert round_trips <= MAX_ROUND_TRIPS_PER_RUN / 2, f"{round_trips:.2f} round trips per run"


def test_each_thread_gets_its_own_replies_and_only_its_own_errors(redis_url):
    connection = redis.Redis.from_url(redis_url)
    connection.set("words", "not a number")
    trips = RoundTrips(connection, window=0.2)
    _company(trips, connection)
    sent, carried = trips.sent, trips.carried

    def pipeline(n: int) -> list:
        pipe = connection.pipeline(transaction=False)
        pipe.set(f"key:{n}", n)
        pipe.incr("words" if n == 1 else f"count:{n}")
        pipe.get(f"key:{n}")
        return trips.execute(pipe)

    results = _together(3, pipeline)

    assert (trips.sent - sent, trips.carried - carried) == (1, 3), "one round trip carried the three pipelines"
    assert results[0] == [True, 1, b"0"]
    assert isinstance(results[1], redis.ResponseError) and "Command # 2 (INCRBY words 1)" in str(results[1])
    assert results[2] == [True, 1, b"2"]
    assert connection.get("key:1") == b"1", "the erring thread's other commands ran, as in its own pipeline"


def test_one_threads_pipelines_in_one_round_trip_each_get_their_own_replies_and_errors(redis_url):
    """A batch run together holds several workspaces' pipelines (workers.jobs.handle_together): one round
    trip for all, each pipeline's replies its own, an error reply its own, a lost connection every one's."""
    connection = redis.Redis.from_url(redis_url)
    connection.set("words", "not a number")
    trips = RoundTrips(connection, window=0.2)
    pipes = [connection.pipeline(transaction=False) for _ in range(3)]
    for n, pipe in enumerate(pipes):
        pipe.set(f"key:{n}", n)
        pipe.incr("words" if n == 1 else f"count:{n}")
        pipe.get(f"key:{n}")

    first, second, third = trips.execute_each(pipes)

    assert (trips.sent, trips.carried) == (1, 3)
    assert first == [True, 1, b"0"] and third == [True, 1, b"2"]
    assert isinstance(second, redis.ResponseError) and "Command # 2 (INCRBY words 1)" in str(second)
    assert connection.get("key:1") == b"1", "the erring pipeline's other commands ran, as in its own round trip"
    assert all(pipe.command_stack == [] for pipe in pipes)
    gone = redis.Redis(port=free_port(), socket_connect_timeout=1)  # nothing listens there
    trips.connection = gone
    lost = trips.execute_each([gone.pipeline(transaction=False).set(f"lost:{n}", n) for n in range(2)])
    assert [type(r) for r in lost] == [redis.ConnectionError] * 2


def test_a_lost_connection_is_raised_in_every_thread_of_the_round_trip(redis_url):
    connection = redis.Redis.from_url(redis_url)
    trips = RoundTrips(connection, window=0.2)
    _company(trips, connection)
    gone = redis.Redis(port=free_port(), socket_connect_timeout=1)  # nothing listens there
    trips.connection = gone

    results = _together(3, lambda n: trips.execute(gone.pipeline(transaction=False).set(f"key:{n}", n)))

    assert [type(r) for r in results] == [redis.ConnectionError] * 3
    assert connection.keys("key:*") == []


def test_a_thread_alone_does_not_wait_for_company(redis_url):
    connection = redis.Redis.from_url(redis_url)
    trips = RoundTrips(connection, window=2.0)
    began = time.monotonic()
    for n in range(5):  # one thread's round trips one after the other are no company for it
        pipe = connection.pipeline(transaction=False).set("alone", n).get("alone")
        assert trips.execute(pipe) == [True, str(n).encode()]

    assert time.monotonic() - began < 2.0, "a lone thread sent at once, each time"
    assert (trips.sent, trips.carried) == (5, 5)


def test_an_empty_pipeline_is_no_round_trip(redis_url):
    connection = redis.Redis.from_url(redis_url)
    trips = RoundTrips(connection)

    assert trips.execute(connection.pipeline(transaction=False)) == []
    assert trips.sent == 0


def test_a_leader_interrupted_while_it_gathers_still_sends_the_others_round_trip(redis_url):
    # A stop signal's exception in the thread that leads (an RQ job runs on the worker's main thread):
    # the threads that joined must not wait for ever, nor may every later thread join a round trip
    # nobody sends.
    connection = redis.Redis.from_url(redis_url)
    sleeps = [time.sleep]
    trips = RoundTrips(connection, window=0.2, sleep=lambda seconds: sleeps[0](seconds))
    _company(trips, connection)
    sleeping, joined = threading.Event(), threading.Event()

    def interrupted_sleep(seconds: float) -> None:
        sleeping.set()
        joined.wait(10)
        raise KeyboardInterrupt

    sleeps[0] = interrupted_sleep
    results = {}

    def leader() -> None:
        try:
            trips.execute(connection.pipeline(transaction=False).set("lead", 1))
        except KeyboardInterrupt as exc:
            results["leader"] = exc

    def follower() -> None:
        sleeping.wait(10)  # the leader gathers
        threading.Timer(0.05, joined.set).start()  # once this thread has joined
        results["follower"] = trips.execute(connection.pipeline(transaction=False).set("follow", 2).get("follow"))

    threads = [threading.Thread(target=leader), threading.Thread(target=follower)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert isinstance(results.get("leader"), KeyboardInterrupt)
    assert results.get("follower") == [True, b"2"], "the follower got its replies"
    sleeps[0] = time.sleep
    assert trips.execute(connection.pipeline(transaction=False).get("lead")) == [b"1"], "later threads go on"
