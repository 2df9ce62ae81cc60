"""Issue 22: a busy worker's thread handles several events in a row (workers.jobs.handle_batch): their
runs are stored together, and their succeeded runs stored as such together (workers.jobs.Ending): a
round trip for the batch instead of two per run, on a real Valkey, against the sandbox over HTTP; a
worker killed before the batch's last round trip writes nothing twice."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import redis

from tests.integration.test_run_round_trips import _CountingConnection, _context, _event, batched_counts, run_id_of
from tests.support.stack import ensure_project, write_form_rule
from workers import jobs, workspaces
from workers.jobs import Arrival, handle, handle_batch
from workers.runs import load_run

__all__ = ["batched_counts"]  # the fixture, used by name

BATCH = 8
# One round trip to store the batch's runs (with their locks and their creates' "sent" marks), one to
# store them as succeeded. Two per run before.
MAX_ROUND_TRIPS_PER_RUN = 2 / BATCH


@contextlib.contextmanager
def _taken_once_free(redis_url: str, lock: str):
    """Another executor meanwhile: takes `lock` as soon as it is free (a lease that ran out), for up to 10 s."""
    watcher, taken = redis.Redis.from_url(redis_url), threading.Event()

    def take_over():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not taken.is_set():
            if watcher.set(lock, "other", nx=True, px=10_000):
                taken.set()
            time.sleep(0.01)

    thread = threading.Thread(target=take_over, daemon=True)
    thread.start()
    try:
        yield watcher
    finally:
        taken.set()
        thread.join(5)


def _tasks(sandbox) -> list[str]:
    return sorted(t["Name"] for t in sandbox.get("Task").json()["value"])


# One after the other, as a thread between the in-flight limit's floors runs its batch; or together, as the
# busy floor's thread runs its (inloox/together.py): the same runs stored, written and ended the same way.
ORDERS = pytest.mark.parametrize("together", [False, True], ids=["one-after-the-other", "together"])


@ORDERS
def test_a_batch_of_runs_is_stored_as_succeeded_in_one_round_trip(redis_url, sandbox, tmp_path, batched_counts,
                                                                   together):
    ensure_project(sandbox)
    write_form_rule(tmp_path)
    ctx, workspace = _context(redis_url, sandbox, tmp_path)
    with workspaces.using(workspace):
        handle(ctx, _event(0), accepted_at=time.time())  # rules read, scripts cached, connections open
        sent_before = _CountingConnection.sent
        outcomes = handle_batch(ctx, [Arrival(_event(n), 0.0) for n in range(1, BATCH + 1)], together=together)
        round_trips = (_CountingConnection.sent - sent_before) / BATCH
        runs = [load_run(ctx.connection, run_id_of(n)) for n in range(BATCH + 1)]
        locks = [ctx.connection.exists(workspaces.key(f"run-lock:{run_id_of(n)}")) for n in range(BATCH + 1)]

    assert [o["runs"] for o in outcomes] == [[run_id_of(n)] for n in range(1, BATCH + 1)]
    assert [r["status"] for r in runs] == ["succeeded"] * (BATCH + 1)
    assert [s["status"] for r in runs for s in r["steps"]] == ["done"] * (BATCH + 1)
    assert locks == [0] * (BATCH + 1), "every run's lock is given back with its status"
    assert _tasks(sandbox) == sorted(f"Task {n}" for n in range(BATCH + 1))
    assert round_trips <= MAX_ROUND_TRIPS_PER_RUN, f"{round_trips:.2f} round trips per run"


@ORDERS
def test_one_event_that_cannot_be_handled_stops_none_of_the_others_of_its_batch(redis_url, sandbox, tmp_path,
                                                                               batched_counts, together):
    ensure_project(sandbox)
    write_form_rule(tmp_path)
    ctx, workspace = _context(redis_url, sandbox, tmp_path)
    broken = {"id": "webhook:forms:broken", "source": "webhook"}  # no kind, no payload: not an event
    with workspaces.using(workspace):
        outcomes = handle_batch(ctx, [Arrival(_event(1), 0.0), Arrival(broken, 0.0), Arrival(_event(3), 0.0)],
                                together=together)
        runs = [load_run(ctx.connection, run_id_of(n)) for n in (1, 3)]

    assert [type(o).__name__ for o in outcomes] == ["dict", "ValueError", "dict"]
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert _tasks(sandbox) == ["Task 1", "Task 3"]


@ORDERS
def test_a_marker_lookup_answered_with_nonsense_stops_none_of_the_others_of_its_batch(
        redis_url, sandbox, tmp_path, batched_counts, together):
    """A create found "sent" is looked for by its marker, and InLoox's answer to that query is hostile input: a row
    that is not an entity. It used to be adopted as the created task, and the loop guard's note of it
    (`_note_write`, which reads the entity's key) raised AttributeError while the batch's succeeded runs were being
    stored together: every event of the batch failed, the others' runs stayed queued under their leases, their
    writes in InLoox but not their "done" (a notification among them would have stopped as "needs attention")."""
    ensure_project(sandbox)
    write_form_rule(tmp_path)
    ctx, workspace = _context(redis_url, sandbox, tmp_path)
    with workspaces.using(workspace):
        lock = workspaces.key(f"run-lock:{run_id_of(1)}")
        ctx.connection.set(lock, "other", px=30_000)  # an executor that took the event over holds its run
        handle(ctx, _event(1), accepted_at=time.time())  # stored with its create marked "sent", left to the other
        ctx.connection.delete(lock)  # which died before sending: the event is handled again, in a batch
        sandbox.fault(kind="status", status=200, body={"value": ["not a task"]}, count=1, methods=["GET"],
                      path="^Task$")
        outcomes = handle_batch(ctx, [Arrival(_event(1), 0.0), Arrival(_event(2), 0.0)], together=together)
        runs = [load_run(ctx.connection, run_id_of(n)) for n in (1, 2)]

    assert [type(o).__name__ for o in outcomes] == ["dict", "dict"], outcomes
    assert runs[1]["status"] == "succeeded"
    assert runs[0]["status"] == "failed" and "not a task" in runs[0]["reason"], runs[0]["reason"]
    assert _tasks(sandbox) == ["Task 2"]


# A worker's thread with a batch of events, killed (SIGKILL, workers/failpoints.py) once their runs
# were written to InLoox and before their statuses were stored.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tests.integration.test_run_round_trips import _context, _event
    from workers import metrics, workspaces
    from workers.jobs import Arrival, handle_batch

    class Sandbox:
        base_url, token = sys.argv[2], sys.argv[3]

    metrics.batch(3600.0)
    ctx, workspace = _context(sys.argv[1], Sandbox, Path(sys.argv[4]))
    with workspaces.using(workspace):
        handle_batch(ctx, [Arrival(_event(n), time.time()) for n in range(1, int(sys.argv[5]) + 1)],
                     together=sys.argv[6] == "together")
    print("handled")
""")


@ORDERS
def test_a_worker_killed_before_its_batch_was_stored_writes_nothing_twice(redis_url, sandbox, tmp_path,
                                                                          batched_counts, together):
    ensure_project(sandbox)
    write_form_rule(tmp_path)
    events = 4
    env = {**os.environ, "ENGINE_FAILPOINTS": "runs_ending"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, redis_url, sandbox.base_url, sandbox.token, str(tmp_path),
                              str(events), "together" if together else "one"], env=env, cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        output, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL, output

    ctx, workspace = _context(redis_url, sandbox, tmp_path)
    with workspaces.using(workspace):
        # What the dead worker left: every task written, no run stored as ended.
        assert _tasks(sandbox) == sorted(f"Task {n}" for n in range(1, events + 1))
        assert {load_run(ctx.connection, run_id_of(n))["status"] for n in range(1, events + 1)} == {"queued"}
        for n in range(1, events + 1):  # the dead worker's locks run out (45 s in production)
            ctx.connection.delete(workspaces.key(f"run-lock:{run_id_of(n)}"))
        # The events, not acknowledged, are delivered again.
        outcomes = handle_batch(ctx, [Arrival(_event(n), time.time()) for n in range(1, events + 1)],
                                together=together)
        runs = [load_run(ctx.connection, run_id_of(n)) for n in range(1, events + 1)]

    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    assert [r["status"] for r in runs] == ["succeeded"] * events
    assert _tasks(sandbox) == sorted(f"Task {n}" for n in range(1, events + 1)), "each task once"


def test_a_run_whose_lease_ran_out_while_its_batch_was_slow_is_left_to_the_executor_that_took_it(
        redis_url, sandbox, tmp_path, batched_counts):
    """A batch's leases are taken with its runs; should the events before a run take longer than half its
    lease, the lease is renewed before the run starts, and a run another executor took meanwhile (the
    sweeper's RQ job, once the lease ran out) is left to it."""
    ensure_project(sandbox)
    write_form_rule(tmp_path)
    ctx, workspace = _context(redis_url, sandbox, tmp_path)
    ctx = dataclasses.replace(ctx, run_lease=1.0)
    lock = f"ws:default:run-lock:{run_id_of(3)}"

    with workspaces.using(workspace):
        handle(ctx, _event(0), accepted_at=time.time())  # rules read, connections open
        sandbox.fault(kind="latency", latency_ms=700, methods=["POST"], path="^Task$", count=2)  # events 1 and 2
        with _taken_once_free(redis_url, lock) as watcher:
            handle_batch(ctx, [Arrival(_event(n), 0.0) for n in (1, 2, 3)])
        runs = [load_run(ctx.connection, run_id_of(n)) for n in (1, 2, 3)]

    assert [r["status"] for r in runs] == ["succeeded", "succeeded", "queued"]
    assert watcher.get(lock) == b"other", "the other executor still holds the third run"
    assert _tasks(sandbox) == ["Task 0", "Task 1", "Task 2"]


def test_an_event_run_together_after_its_thread_was_held_up_renews_its_lease_first(
        redis_url, sandbox, tmp_path, batched_counts, monkeypatch):
    """Run together, an event starts when the one before waits for InLoox. Should that one first hold the
    thread with a call that blocks it (a Redis round trip that waits for a failover) past the batch's leases, the
    next events' leases are renewed before they run, and a run another executor took meanwhile is left to it."""
    ensure_project(sandbox)
    write_form_rule(tmp_path)
    ctx, workspace = _context(redis_url, sandbox, tmp_path)
    ctx = dataclasses.replace(ctx, run_lease=1.0)
    lock = f"ws:default:run-lock:{run_id_of(3)}"
    execute = jobs._execute_event

    def held_up(ctx, parsed, event, started, ending):
        if event["id"].endswith("_1"):
            time.sleep(1.3)  # the thread is held: no other event of the batch runs meanwhile
        return execute(ctx, parsed, event, started, ending)

    monkeypatch.setattr(jobs, "_execute_event", held_up)
    with workspaces.using(workspace):
        handle(ctx, _event(0), accepted_at=time.time())  # rules read, connections open
        with _taken_once_free(redis_url, lock) as watcher:
            handle_batch(ctx, [Arrival(_event(n), 0.0) for n in (1, 2, 3)], together=True)
        runs = [load_run(ctx.connection, run_id_of(n)) for n in (1, 2, 3)]

    assert [r["status"] for r in runs] == ["succeeded", "succeeded", "queued"]
    assert watcher.get(lock) == b"other", "the other executor still holds the third run"
    assert _tasks(sandbox) == ["Task 0", "Task 1", "Task 2"]


def _another_workspace(name: str, sandbox, rules_dir, connection, *, outbound_allow: str = ""):
    """The context of a workspace beside `_context`'s, on the same Redis connection (as a worker's are)."""
    from workers.worker_context import build_context

    workspace = workspaces.Workspace(name, sandbox.base_url, sandbox.token, rules_path=str(rules_dir),
                                     limits=workspaces.Limits(inloox_requests_per_second=0))
    return build_context({"INLOOX_TIMEOUT": "10", "OUTBOUND_ALLOW": outbound_allow, "RULES_ENV": "",
                          "DELIVERY_RETRY_SECONDS": ""}, workspace, connection)


SLOW_NOTIFY_RULE = """
id: note-forms
description: Tell the team about each form.
when:
  - webhook: forms
then:
  - notify: "{url}"
    title: Form
    body: "{{{{ webhook.body.title }}}}"
"""


def test_a_slow_receiver_of_one_workspace_holds_up_none_of_the_other_events_run_together(
        redis_url, sandbox, tmp_path, batched_counts, receiver):
    """A busy worker runs every workspace's events together on one thread (workers.jobs.handle_together). One
    customer's notification to a receiver that takes seconds to answer must not hold up another customer's
    event beside it. Before: the notification's request held the thread, and the whole batch, until the
    answer came (up to its timeout)."""
    from workers.jobs import handle_together

    ensure_project(sandbox)
    (tmp_path / "quick").mkdir()
    (tmp_path / "slow").mkdir()
    write_form_rule(tmp_path / "quick")
    (tmp_path / "slow" / "forms.yaml").write_text(SLOW_NOTIFY_RULE.format(url=receiver.json_url))
    quick_ctx, quick = _context(redis_url, sandbox, tmp_path / "quick")
    slow_ctx = _another_workspace("slow", sandbox, tmp_path / "slow", quick_ctx.connection, outbound_allow="127.0.0.1")
    with workspaces.using(quick):
        handle(quick_ctx, _event(0), accepted_at=time.time())  # rules read, connections open
    receiver.delay = 3.0
    created, stop = [], threading.Event()

    def watch_tasks():
        while not stop.is_set() and not created:
            if "Task 2" in _tasks(sandbox):
                created.append(time.monotonic())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_tasks, daemon=True)
    began = time.monotonic()
    watcher.start()
    try:  # the slow workspace's event first, as the consumer's turns may put it
        outcomes = handle_together([(slow_ctx, [Arrival(_event(1), 0.0)]), (quick_ctx, [Arrival(_event(2), 0.0)])])
    finally:
        stop.set()
        watcher.join(5)
    took = time.monotonic() - began

    assert not [o for part in outcomes for o in part if isinstance(o, BaseException)], outcomes
    assert took >= 3.0 and len(receiver.received) == 1, "the slow notification was sent once, and waited for"
    assert created and created[0] - began < 1.5, "the other workspace's task waited for the slow receiver"
    with workspaces.using(quick):
        assert load_run(quick_ctx.connection, run_id_of(2))["status"] == "succeeded"


def test_a_batch_run_together_stores_every_workspaces_runs_in_the_same_two_round_trips(
        redis_url, sandbox, tmp_path, batched_counts):
    """A busy worker's batch takes every workspace's events in turns (workers/consumer/): their runs are
    stored in one round trip and ended in one more, as one workspace's are, not two per workspace."""
    from workers.jobs import handle_together

    ensure_project(sandbox)
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    write_form_rule(tmp_path / "first")
    write_form_rule(tmp_path / "second")
    first_ctx, first = _context(redis_url, sandbox, tmp_path / "first")
    second_ctx = _another_workspace("second", sandbox, tmp_path / "second", first_ctx.connection)
    second = second_ctx.workspace
    for ctx, workspace, n in ((first_ctx, first, 0), (second_ctx, second, 100)):
        with workspaces.using(workspace):
            handle(ctx, _event(n), accepted_at=time.time())  # rules read, scripts cached, connections open
    half = BATCH // 2
    sent_before = _CountingConnection.sent
    outcomes = handle_together([(first_ctx, [Arrival(_event(n), 0.0) for n in range(1, half + 1)]),
                                (second_ctx, [Arrival(_event(n), 0.0) for n in range(101, 101 + half)])])
    round_trips = (_CountingConnection.sent - sent_before) / BATCH
    with workspaces.using(first):
        runs = [load_run(first_ctx.connection, run_id_of(n)) for n in range(1, half + 1)]
    with workspaces.using(second):
        runs += [load_run(second_ctx.connection, run_id_of(n)) for n in range(101, 101 + half)]

    assert [[o["runs"] for o in part] for part in outcomes] == [
        [[run_id_of(n)] for n in range(1, half + 1)], [[run_id_of(n)] for n in range(101, 101 + half)]]
    assert [r["status"] for r in runs] == ["succeeded"] * BATCH
    assert round_trips <= MAX_ROUND_TRIPS_PER_RUN, f"{round_trips:.2f} round trips per run"


def test_runs_whose_ends_could_not_be_queued_leave_their_events_to_be_handled_again(
        redis_url, sandbox, tmp_path, batched_counts, monkeypatch):
    """Run together, the succeeded runs' ends are queued for the batch's round trip (`Ending.queue`). Should
    that fail, their events are not handled: each gets the error (the consumer leaves it pending, and the
    next delivery finds the write in the ledger), as when the round trip itself fails."""
    from workers.jobs import handle_together

    ensure_project(sandbox)
    write_form_rule(tmp_path)
    ctx, workspace = _context(redis_url, sandbox, tmp_path)
    with workspaces.using(workspace):
        handle(ctx, _event(0), accepted_at=time.time())  # rules read, connections open

    def broken(self, pipe):
        raise RuntimeError("a record that cannot be encoded")

    monkeypatch.setattr(jobs.Ending, "queue", broken)
    [outcomes] = handle_together([(ctx, [Arrival(_event(n), 0.0) for n in (1, 2)])])

    assert [type(o).__name__ for o in outcomes] == ["RuntimeError", "RuntimeError"]
