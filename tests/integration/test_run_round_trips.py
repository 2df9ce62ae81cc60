"""Issue 22: what one run costs in Redis round trips on the worker's hot path, on a real Valkey.

An event is handled the way the worker's consumer does it (`workers.jobs.handle`, counts batched
as the worker batches them), against the sandbox over HTTP. Round trips are counted where they
happen, at the connection (each request written to the socket, a pipeline being one), and the
commands Valkey executed are read from its own INFO commandstats. What a user would see is
checked too: the run succeeded and InLoox holds the task, once.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
import redis

from engine import Event, Plan
from inloox.connections import exchanges
from tests.support.stack import PROJECT, ensure_project, write_form_rule, write_rule
from workers import guards, ledger, metrics, workspaces
from workers.jobs import handle
from workers.runs import load_run, run_id
from workers.worker_context import build_context

# The worker's hot path for a one-step create: start (guards, record, lock, trace, and the create's
# "sent" mark), then the POST, then the final status with the step's record and the lock's release.
# Seven before issue 22, three with "sent" a round trip of its own.
MAX_ROUND_TRIPS_PER_RUN = 2


class _CountingConnection(redis.Connection):
    """A connection that counts what it writes to the socket: one per command or pipeline."""

    sent = 0

    def send_packed_command(self, command, check_health=True):
        type(self).sent += 1
        return super().send_packed_command(command, check_health)


def _commands(connection: redis.Redis) -> int:
    """Commands Valkey has executed since its stats were reset (INFO itself excluded)."""
    stats = connection.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config|resetstat"))


def _context(redis_url: str, sandbox, rules_dir, *, outbound_allow: str = ""):
    connection = redis.Redis(connection_pool=redis.ConnectionPool.from_url(
        redis_url, connection_class=_CountingConnection))
    workspace = workspaces.Workspace(workspaces.DEFAULT, sandbox.base_url, sandbox.token, rules_path=str(rules_dir),
                                     limits=workspaces.Limits(inloox_requests_per_second=0))
    config = {"INLOOX_TIMEOUT": "10", "OUTBOUND_ALLOW": outbound_allow, "RULES_ENV": "", "DELIVERY_RETRY_SECONDS": ""}
    return build_context(config, workspace, connection), workspace


def _form_context(redis_url: str, sandbox, rules_dir):
    """`_context` for the forms rule (tests/support/stack.py), its project in the sandbox."""
    ensure_project(sandbox)
    write_form_rule(rules_dir)
    return _context(redis_url, sandbox, rules_dir)


def _event(n: int) -> dict:
    body = {"title": f"Task {n}", "project": PROJECT}
    return Event(source="webhook", kind="forms", id=f"webhook:forms:msg_rt_{n}", occurred_at=datetime.now(timezone.utc),
                 payload={"id": f"msg_rt_{n}", "body": body, "headers": {}}).to_dict()


@pytest.fixture
def batched_counts(redis_url):
    """Counts kept in memory and written every second, as the worker does (workers/worker.py); what
    the test left pending is written to its own Redis, not to the next test's of this process."""
    metrics.batch(3600.0)
    yield
    metrics.batch(0.0)
    metrics.flush(redis.Redis.from_url(redis_url))


def test_a_one_step_run_costs_few_round_trips(redis_url, sandbox, tmp_path, batched_counts):
    ctx, workspace = _form_context(redis_url, sandbox, tmp_path)
    observer = redis.Redis.from_url(redis_url)
    with workspaces.using(workspace):
        handle(ctx, _event(0), accepted_at=time.time())  # rules read, scripts cached, connections open
        events = 10
        observer.config_resetstat()
        sent_before = _CountingConnection.sent
        for n in range(1, events + 1):
            handle(ctx, _event(n), accepted_at=0.0)
        round_trips = (_CountingConnection.sent - sent_before) / events
        commands = _commands(observer) / events
        runs = [load_run(observer, run_id_of(n)) for n in range(events + 1)]

    print(f"per run: {round_trips:.1f} round trips, {commands:.1f} commands")
    assert [r["status"] for r in runs] == ["succeeded"] * (events + 1)
    names = sorted(t["Name"] for t in sandbox.get("Task").json()["value"])
    assert names == sorted(f"Task {n}" for n in range(events + 1))
    assert round_trips <= MAX_ROUND_TRIPS_PER_RUN, f"{round_trips:.1f} round trips per run ({commands:.1f} commands)"


def run_id_of(n: int) -> str:
    return run_id(Plan(rule_id="form-to-task", rule_version="", event_id=f"webhook:forms:msg_rt_{n}", event={}))


def test_a_paused_rule_stores_its_run_as_skipped_and_writes_nothing(redis_url, sandbox, tmp_path, batched_counts):
    ctx, workspace = _form_context(redis_url, sandbox, tmp_path)
    with workspaces.using(workspace):
        ctx.connection.set(workspaces.key("rule:paused:form-to-task"), "paused by Ann")
        handle(ctx, _event(1), accepted_at=time.time())
        run = load_run(ctx.connection, run_id_of(1))

    assert (run["status"], run["reason"]) == ("skipped", "rule paused: paused by Ann")
    assert sandbox.count("Task") == 0


def test_a_rule_running_too_often_on_one_entity_is_paused(redis_url, sandbox, tmp_path, batched_counts):
    ctx, workspace = _form_context(redis_url, sandbox, tmp_path)
    with workspaces.using(workspace):
        for n in range(guards.RUN_LIMIT + 2):
            event = _event(n) | {"entity_set": "Task", "key": "k1"}
            handle(ctx, event, accepted_at=time.time())
        runs = [load_run(ctx.connection, run_id_of(n)) for n in range(guards.RUN_LIMIT + 2)]
        paused = ctx.connection.get(workspaces.key("rule:paused:form-to-task"))
        # The refused runs' creates were marked "sent" with them: the marks go within the hour, not in 7 days.
        refused_marks = [ctx.connection.ttl(workspaces.key(f"step:{r['plan']['operations'][0]['idempotency_key']}"))
                         for r in runs[guards.RUN_LIMIT:]]

    reason = f"rule paused: ran more than {guards.RUN_LIMIT} times on Task(k1) within {guards.RUN_WINDOW}s"
    assert [r["status"] for r in runs] == ["succeeded"] * guards.RUN_LIMIT + ["skipped"] * 2
    assert [r["reason"] for r in runs[guards.RUN_LIMIT:]] == [reason, reason]
    assert paused.decode() in reason
    assert sandbox.count("Task") == guards.RUN_LIMIT
    assert all(0 < ttl <= ledger.LEDGER_AFTER_FINISH for ttl in refused_marks), refused_marks


def test_a_second_handling_of_an_event_continues_its_runs_and_writes_once(redis_url, sandbox, tmp_path,
                                                                          batched_counts):
    ctx, workspace = _form_context(redis_url, sandbox, tmp_path)
    with workspaces.using(workspace):
        first = handle(ctx, _event(1), accepted_at=time.time())
        second = handle(ctx, _event(1), accepted_at=time.time())
        run = load_run(ctx.connection, run_id_of(1))
        lock = ctx.connection.get(workspaces.key(f"run-lock:{run_id_of(1)}"))

    assert first["runs"] == second["runs"] == [run_id_of(1)]
    assert run["status"] == "succeeded" and lock is None
    assert sandbox.count("Task") == 1


NOTIFY_RULE = """
id: form-to-chat
when:
  - webhook: forms
then:
  - notify: "{url}"
    title: New form
    body: "{{{{ webhook.body.title }}}}"
"""


def test_the_wait_for_a_slow_notification_is_seen_by_the_workers_in_flight_limit(redis_url, sandbox, tmp_path,
                                                                                  receiver, batched_counts):
    """Events waiting on a receiver outside InLoox (Slack, Teams) are not the worker being busy with its own
    CPU: the in-flight limit (workers/consumer/in_flight.py) reads these waits too. Were they unseen, it would
    give such events 4 threads of 8 events each, one after the other: 13 a second with a receiver that answers
    in 300 ms, against 160 on 48 threads."""
    receiver.delay = 0.3
    write_rule(tmp_path, "chat", NOTIFY_RULE.format(url=receiver.json_url))
    ctx, workspace = _context(redis_url, sandbox, tmp_path, outbound_allow="127.0.0.1")
    exchanges.take()  # what earlier tests of this process left
    with workspaces.using(workspace):
        handle(ctx, _event(1), accepted_at=time.time())
    waits = exchanges.take()

    assert [m["body"]["message"] for m in receiver.received] == ["Task 1"]
    assert max(waits, default=0.0) >= 0.3, waits


def test_an_event_handled_again_after_its_rule_was_paused_leaves_its_run_as_it_was(
        redis_url, sandbox, tmp_path, batched_counts):
    # An event is handled again when its worker died before acknowledging it (up to five deliveries). The run's
    # creation asked the guards before it looked whether the run existed: each handling counted the entity's runs
    # again, and redeliveries of one event beside a few others of the same entity paused the rule as a loop. The run
    # itself was safe (its record is stored only if none exists), and stays so.
    ctx, workspace = _form_context(redis_url, sandbox, tmp_path)
    with workspaces.using(workspace):
        event = _event(1) | {"entity_set": "Task", "key": "k1"}
        handle(ctx, event, accepted_at=time.time())
        ctx.connection.set(workspaces.key("rule:paused:form-to-task"), "paused by Ann")
        handle(ctx, event, accepted_at=time.time())  # the same event, delivered again
        for n in range(2, guards.RUN_LIMIT + 1):  # other events of the same entity, up to the loop limit
            handle(ctx, _event(n) | {"entity_set": "Task", "key": "k2"}, accepted_at=time.time())
        ctx.connection.delete(workspaces.key("rule:paused:form-to-task"))
        for _ in range(guards.RUN_LIMIT):  # delivered again and again: one run, counted once
            handle(ctx, event, accepted_at=time.time())
        run = load_run(ctx.connection, run_id_of(1))
        paused = ctx.connection.get(workspaces.key("rule:paused:form-to-task"))

    assert (run["status"], run["reason"]) == ("succeeded", "")
    assert paused is None
    assert sandbox.count("Task") == 1  # the k2 events came while the rule was paused: skipped


def test_a_run_whose_listing_redis_refused_is_listed_once_its_event_is_handled_again(
        redis_url, sandbox, tmp_path, batched_counts):
    # The run's creation stored its record, then listed it: with the listing refused (a key of another type), the
    # record stayed unlisted and unknown to the sweeper; the event's next handling found the record and ran it, and
    # no listing ever showed the run.
    ctx, workspace = _form_context(redis_url, sandbox, tmp_path)
    with workspaces.using(workspace):
        ctx.connection.set(workspaces.key("runs"), "not a sorted set")
        with pytest.raises(redis.ResponseError):
            handle(ctx, _event(1), accepted_at=time.time())
        ctx.connection.delete(workspaces.key("runs"))  # mended
        handle(ctx, _event(1), accepted_at=time.time())  # the event, delivered again
        listed = [i.decode() for i in ctx.connection.zrange(workspaces.key("runs"), 0, -1)]
        run = load_run(ctx.connection, run_id_of(1))

    assert listed == [run_id_of(1)] and run["status"] == "succeeded"
    assert sandbox.count("Task") == 1
