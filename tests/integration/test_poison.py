"""Issue 19: no event, however strange, stops the others (real web, workers, sandbox and Valkey).

Two kinds of poison: an event whose handling raises (a bug; `ENGINE_FAILPOINTS=handle_event~poison`
makes every event whose id holds "poison" raise, as a bug would), and an event holding a lone
surrogate, which the web repairs today but an older web stored as it came (so logs written then
still hold such entries). Each must end in its own trace, readable with `flask events show`, while
every good delivery around it becomes its InLoox write within 30 s, across a worker restart.
"""
from __future__ import annotations

import signal
import threading
import time
from datetime import datetime, timezone

import pytest
import redis

from engine.events import Event
from tests.support.processes import wait_until
from tests.support.stack import PROJECT, all_runs, deliver, ensure_project, runs_in, write_form_rule
from workers import activity, eventlog

GOOD = 15
LATENCY_LIMIT = 30.0


def _legacy_surrogate_entry(redis_url: str) -> str:
    """Append, as the web before issue 19 did, a `forms` event whose body holds a lone surrogate."""
    event = Event(source="webhook", kind="forms", id="webhook:forms:msg_legacy",
                  occurred_at=datetime.now(timezone.utc),
                  payload={"id": "msg_legacy", "body": {"title": "Legacy \ud800 title", "project": PROJECT},
                           "headers": {}})
    redis.Redis.from_url(redis_url).xadd(eventlog.stream_key("default"), {"z": eventlog.encode(event.to_dict())})
    return event.id


def _as_if_delivered_five_times(redis_url: str) -> None:
    """Every entry still pending now counts as delivered 5 times and long idle, as after ~100 s of retries.

    The next worker then gives up on it at once: the give-up path is where the poison of issue 19
    killed the consumer thread (its trace could not be stored), and every later event waited.
    """
    connection, stream = redis.Redis.from_url(redis_url), eventlog.stream_key("default")
    pending = connection.xpending_range(stream, eventlog.GROUP, "-", "+", 100)
    if pending:
        connection.xclaim(stream, eventlog.GROUP, "worker-1", 0, [p["message_id"] for p in pending],
                          idle=600_000, retrycount=5)


class TaskWatch:
    """Notes when each task name first appears in the sandbox (polled every half second)."""

    def __init__(self, sandbox):
        self.sandbox, self.seen, self._stop = sandbox, {}, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            try:
                names = [t["Name"] for t in self.sandbox.get("Task", **{"$top": "1000"}).json()["value"]]
            except Exception:  # the sandbox busy for a moment: the next look counts
                continue
            now = time.monotonic()
            for name in names:
                self.seen.setdefault(name, now)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.timeout(170)
def test_a_poison_event_never_holds_up_good_deliveries_across_a_worker_restart(stack, sandbox, rules_dir,
                                                                               redis_url, runner, client):
    stack.env["ENGINE_FAILPOINTS"] = "handle_event~poison"
    write_form_rule(rules_dir)
    ensure_project(sandbox)
    first = stack.worker("worker-1")
    web = stack.web(threads=4)
    watch = TaskWatch(sandbox)
    sent: dict[str, float] = {}
    try:
        assert deliver(web, {"title": "Poison", "project": PROJECT}, "msg_poison").status_code == 202
        legacy_id = _legacy_surrogate_entry(redis_url)
        for n in range(GOOD):
            if n == GOOD // 2:  # a worker restart in between, with the poison still pending
                first.signal(signal.SIGTERM)
                wait_until(lambda: not first.alive(), 30, "the first worker to stop")
                _as_if_delivered_five_times(redis_url)
                stack.worker("worker-2")
            title = f"Good {n}"
            assert deliver(web, {"title": title, "project": PROJECT}, f"msg_good_{n}").status_code == 202
            sent[title] = time.monotonic()
            time.sleep(1.0)
        wait_until(lambda: all(t in watch.seen for t in sent), LATENCY_LIMIT + 5, "every good delivery's task")
    finally:
        watch.stop()
    late = {t: round(watch.seen[t] - sent[t], 1) for t in sent if watch.seen[t] - sent[t] > LATENCY_LIMIT}
    assert late == {}, f"deliveries written more than {LATENCY_LIMIT:.0f} s after they were sent: {late}"
    assert "Poison" not in watch.seen

    poison = runner.invoke(args=["events", "show", "webhook:forms:msg_poison"])
    assert poison.exit_code == 0, poison.output
    assert "handling failed: FailpointError" in poison.output, poison.output
    # Each failed handling is counted on /metrics (it was counted in Redis and never shown).
    failed = 'inloox_automation_events_failed_total{error="FailpointError",workspace="default"}'
    wait_until(lambda: failed in client.get("/metrics").get_data(as_text=True), 10, "the failures on /metrics")

    # The legacy entry was handled like any other: its trace kept, its run stored, and the CLI shows it.
    legacy = runner.invoke(args=["events", "show", legacy_id])
    assert legacy.exit_code == 0, legacy.output
    assert "forms" in legacy.output and "run" in legacy.output, legacy.output


def test_a_run_whose_step_raises_ends_failed_with_its_error_rather_than_queued_for_good(stack, sandbox, rules_dir,
                                                                                      redis_url):
    """A bug met while a run writes (`before_send~` raises FailpointError at every write, as a bug would) is retried as
    a retryable failure, and the run fails once its rule's attempts are used up, saying what was raised; its event is
    handled. It used to stay queued for good: its event was delivered again and given up on, and the sweeper started
    the run again every ~30 s, an RQ job failing four times each, with no end."""
    stack.env["ENGINE_FAILPOINTS"] = "before_send~"
    write_form_rule(rules_dir, extra="retry: {attempts: 2, backoff: 0.1}")
    ensure_project(sandbox)
    stack.worker()
    web = stack.web()
    assert deliver(web, {"title": "Buggy", "project": PROJECT}, "msg_buggy").status_code == 202

    [run] = wait_until(lambda: all_runs(redis_url), 15, "the run")
    try:
        [failed] = wait_until(lambda: runs_in(redis_url, "failed"), 20, "the run to fail")
    except AssertionError:
        raise AssertionError(f"the run is {all_runs(redis_url)[0]['status']}, not failed") from None
    assert failed["id"] == run["id"] and "FailpointError" in failed["reason"], failed["reason"]
    assert sandbox.count("Task", "Name eq 'Buggy'") == 0
    connection = redis.Redis.from_url(redis_url)
    wait_until(lambda: not connection.xpending(eventlog.stream_key("default"), eventlog.GROUP)["pending"], 10,
               "the event to be acknowledged")


def test_an_entry_that_cannot_be_decoded_holds_up_no_event_read_with_it_and_is_given_up(stack, sandbox, rules_dir,
                                                                                        redis_url):
    # Before, the read that brought it failed whole: the good event read with it stayed pending, and the claim that
    # took both over 20 s later failed the same way, at every claim, before any give-up: neither was ever handled.
    write_form_rule(rules_dir)
    ensure_project(sandbox)
    connection, stream = redis.Redis.from_url(redis_url), eventlog.stream_key("default")
    damaged = connection.xadd(stream, {"z": b"not what any web writes"}).decode()
    good = Event(source="webhook", kind="forms", id="webhook:forms:msg_after_damage",
                 occurred_at=datetime.now(timezone.utc),
                 payload={"id": "msg_after_damage", "body": {"title": "After damage", "project": PROJECT},
                          "headers": {}})
    connection.xadd(stream, {"z": eventlog.encode(good.to_dict())})
    activity.note(connection, prefix="ws:default:")  # as the web's acceptance does: looked after every few seconds
    worker = stack.worker()

    wait_until(lambda: sandbox.count("Task", "Name eq 'After damage'") == 1, 15, "the good event's task")
    assert f"event entry {damaged} cannot be decoded" in worker.output()
    # Idle long enough to be claimed at the worker's next look (CLAIM_IDLE passed, as 20 s on would have it).
    connection.xclaim(stream, eventlog.GROUP, "another-worker", 0, [damaged], idle=600_000)
    wait_until(lambda: not connection.xpending(stream, eventlog.GROUP)["pending"], 10, "the damaged entry given up on")
    wait_until(lambda: f"event entry {damaged} (default) given up" in worker.output(), 5, "the give-up logged")
    # It ends in a trace of its own, as every event that cannot be handled does: before, in the worker's log alone,
    # and the log's listings left it out (a person saw nothing of it).
    from app import create_app

    app = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": sandbox.token, "RULES_PATH": str(rules_dir)})
    listed = app.test_client().get("/events?limit=5").get_json()["events"]
    [shown] = [e for e in listed if e["entry"] == damaged]
    assert shown["id"] == f"damaged:{damaged}" and shown["status"] == "not handled"
    assert shown["error"].startswith("this entry of the event log cannot be decoded")
    assert "cannot be decoded" in app.test_cli_runner().invoke(args=["events", "show", damaged]).output
    page = app.test_client().get(f"/ui/events/damaged:{damaged}").get_data(as_text=True)
    assert "cannot be decoded" in page
