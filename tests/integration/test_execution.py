"""The execution core with real processes: rules as new as the event, many events per worker, stuck runs."""
from __future__ import annotations

import os

import re
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
import requests
from rq.job import Job

from engine import Plan
from engine.events import Event
from inloox.errors import ServerError
from tests.support.processes import Process, free_port, wait_until
from tests.support.stack import PROJECT, FORM_RULE, all_runs, deliver, ensure_project, runs_in, write_form_rule, write_rule
from workers import enqueue, eventlog, metrics, recovery, workspaces
from workers.intake import submit_event
from workers.jobs import RetryRefused, retry_run
from workers.runs import LIMITED_GRACE, create_run, load_run

SINK = Path(__file__).resolve().parents[2] / "bench" / "sink.py"


def test_an_event_accepted_right_after_a_rule_was_added_meets_that_rule(stack, sandbox, rules_dir, redis_url):
    write_form_rule(rules_dir)
    ensure_project(sandbox)
    stack.worker()
    web = stack.web()
    assert deliver(web, {"title": "Warm up", "project": PROJECT}, "msg_warm").status_code == 202
    wait_until(lambda: runs_in(redis_url, "succeeded"), 20, "the first run (the worker has read the rules)")

    # Within a moment of that look at the rules: a new rule for the same source, then an event for it.
    write_rule(rules_dir, "forms-copy", FORM_RULE.format(extra="").replace("id: form-to-task", "id: form-copy"))
    assert deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_new_rule").status_code == 202

    wait_until(lambda: len(runs_in(redis_url, "succeeded")) == 3, 20, "both rules' runs of the second event")
    second = [r["rule_id"] for r in all_runs(redis_url) if r["event_id"] == "webhook:forms:msg_new_rule"]
    assert sorted(second) == ["form-copy", "form-to-task"]
    assert sorted(t["Name"] for t in sandbox.get("Task").json()["value"]) == ["Call Ann", "Call Ann", "Warm up"]


def test_one_worker_keeps_many_slow_runs_in_flight(stack, sandbox, rules_dir, redis_url):
    write_form_rule(rules_dir)
    ensure_project(sandbox)
    # InLoox answers each create after 1.5 s: forty of them one after the other would take a minute.
    sandbox.fault(kind="latency", latency_ms=1500, methods=["POST"], path="^Task$")
    stack.env["WORKER_THREADS"] = "40"
    stack.worker()
    web = stack.web()

    for n in range(40):
        assert deliver(web, {"title": f"Task {n}", "project": PROJECT}, f"msg_slow_{n}").status_code == 202

    # Not a speed test: what shows concurrency is that creates overlap at the sandbox.
    wait_until(lambda: len(runs_in(redis_url, "succeeded")) == 40, 50, "all forty runs")
    assert sandbox.count("Task") == 40
    starts = sorted(r["at"] for r in sandbox.requests() if r["method"] == "POST" and r["path"] == "Task")
    assert len(starts) == 40
    assert _most_overlapping(starts, window=1.5) >= 10, "creates should have been in flight together"
    # Each of them kept its connection: none was closed after use for want of room in the pool.
    assert "Connection pool is full" not in stack.logs()


def test_against_a_slow_inloox_a_worker_keeps_more_in_flight_than_the_threads_it_used_to_have(
        stack, sandbox, rules_dir, redis_url):
    # Each create is answered after a second, however many are sent: what limits a worker here is
    # what it has in flight. The fixed pool of 48 threads it had made that 48 a second at most.
    write_form_rule(rules_dir)
    ensure_project(sandbox)
    sandbox.fault(kind="latency", latency_ms=1000, methods=["POST"], path="^Task$")
    worker = stack.worker()
    web = stack.web()

    for n in range(300):
        assert deliver(web, {"title": f"Task {n}", "project": PROJECT}, f"msg_many_{n}").status_code == 202

    threads = []  # the worker's, while it drains

    def created_all() -> bool:
        threads.append(len(os.listdir(f"/proc/{worker.popen.pid}/task")))
        return sandbox.count("Task") == 300

    wait_until(created_all, 90, "all three hundred tasks")
    starts = sorted(r["at"] for r in sandbox.requests() if r["method"] == "POST" and r["path"] == "Task")
    assert len(starts) == 300  # each created once
    # A thread's next create starts a second after its last: 48 threads start at most 48 in any second.
    assert _most_overlapping(starts, window=1.0) > 48
    # ...and not by a thread per event in flight: they await their answers on one thread's loop (the lane,
    # workers/consumer/), where hundreds of threads spent the worker's CPU handing the GIL around.
    assert max(threads) < 48, f"the worker ran {max(threads)} threads"


def test_a_worker_killed_with_many_events_in_flight_on_its_lane_loses_none_and_writes_none_twice(
        stack, sandbox, rules_dir, redis_url):
    # InLoox applies each create at once and answers a second later: killed in between, the worker leaves
    # sixty writes whose outcome nobody knows, all awaited on one thread's loop (workers/consumer/).
    write_form_rule(rules_dir)
    ensure_project(sandbox)
    sandbox.fault(kind="latency", latency_ms=1000, methods=["POST"], path="^Task$")
    stack.env["INLOOX_TIMEOUT"] = "3"  # the dead worker's run leases last 24 s, not 45 (worker_context.run_lease)
    worker = stack.worker()
    web = stack.web()
    for n in range(120):
        assert deliver(web, {"title": f"Task {n}", "project": PROJECT}, f"msg_killed_{n}").status_code == 202

    wait_until(lambda: len([r for r in sandbox.requests() if r["method"] == "POST"]) >= 60, 30, "creates in flight")
    worker.signal(signal.SIGKILL)
    stack.worker(name="worker-2")  # takes the dead worker's events over once they have waited CLAIM_IDLE

    wait_until(lambda: len(runs_in(redis_url, "succeeded")) == 120, 90, "every run finished by the second worker")
    time.sleep(1.5)  # a create sent twice would have been answered by now
    names = sorted(t["Name"] for skip in (0, 100)
                   for t in sandbox.get("Task", **{"$select": "Name", "$skip": str(skip)}).json()["value"])
    assert names == sorted(f"Task {n}" for n in range(120))  # each once


def test_a_busy_worker_takes_several_events_per_thread_and_writes_each_once(stack, rules_dir, redis_url):
    # A backlog against a quick InLoox: the worker keeps a few threads, each taking several events
    # (workers/consumer/in_flight.py), the busy floor's running them together. Each event must still be
    # written once and acknowledged on its own. The sandbox's answers take longer than our CPU per
    # event (it shares these cores): bench/sink.py, the benches' quick InLoox stand-in, answers at once.
    port = free_port()
    sink = stack._start(Process.python(str(SINK), "--port", str(port), name="sink"))
    sink.wait_for_port(port)
    write_form_rule(rules_dir)
    connection = redis.Redis.from_url(redis_url)
    events = 3000
    with workspaces.using(workspaces.Workspace("default", "http://unused/", "unused")):
        for n in range(events):
            body = {"title": f"Task {n}", "project": PROJECT}  # as the web accepts a `forms` webhook
            event = Event(source="webhook", kind="forms", id=f"webhook:forms:busy_{n}",
                          occurred_at=datetime.now(timezone.utc), payload={"id": f"busy_{n}", "body": body})
            assert submit_event(connection, event, dedup_key=workspaces.key(f"hooks:seen:forms:busy_{n}"), dedup_ttl=600)
    stack.env.update(LOG_LEVEL="DEBUG", INLOOX_REQUESTS_PER_SECOND="0",
                     INLOOX_URL=f"http://127.0.0.1:{port}/api/odata/")
    worker = stack.worker()

    stats = lambda: {k: v.get("Task", 0) for k, v in  # noqa: E731
                     requests.get(f"http://127.0.0.1:{port}/_sink/stats", timeout=5).json().items() if isinstance(v, dict)}
    wait_until(lambda: stats()["posts"] >= events, 60, "every event's write")
    wait_until(lambda: len(runs_in(redis_url, "succeeded")) == events, 20, "every run recorded as succeeded")
    time.sleep(1.0)  # a write sent twice would have arrived by now
    assert stats()["posts"] == events and stats()["distinct"] == events and stats()["duplicated"] == 0
    with workspaces.using(workspaces.Workspace("default", "http://unused/", "unused")):
        wait_until(lambda: eventlog.backlog(connection) == 0 and not eventlog.waiting(connection), 10,
                   "every event acknowledged")
    # It starts at its busy floor: one thread, 16 events together. How long it stays there is the machine's to
    # say (an answer that waits 0.2 s for a crowded CPU sends it to a thread per event for a while: CI's three
    # test processes on two cores did), and bench/stack.py measures it; here, that batches ran together at all.
    together = [int(n) for n in re.findall(r"(\d+) events of \d+ workspace\(s\) together", worker.output())]
    assert together and max(together) > 1, f"no events ran together: {together[:20]}"


def test_a_run_left_queued_by_a_lost_executor_can_be_retried_by_a_person(redis_url, sandbox):
    connection = redis.Redis.from_url(redis_url)
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token)):
        created = datetime.now(timezone.utc) - timedelta(minutes=5)
        run = {"id": "run_lost", "rule_id": "r", "rule_version": "1", "event_id": "e", "status": "queued",
               "reason": "", "created_at": created.isoformat(), "updated_at": created.isoformat(),
               "plan": Plan(rule_id="r", rule_version="1", event_id="e", event={}).to_dict(), "steps": [], "outputs": {}, "attempts": 0}
        create_run(connection, run)
        connection.zadd(workspaces.key(recovery.ACTIVE), {"run_lost": created.timestamp() + recovery.GRACE})

        assert retry_run(connection, "run_lost")["status"] == "queued"
        assert load_run(connection, "run_lost")["retries"] == 1

        # Not while an executor holds its lease: then it is not stuck, only busy.
        connection.set(workspaces.key("run-lock:run_lost"), "someone", ex=30)
        try:
            retry_run(connection, "run_lost")
        except RetryRefused as exc:
            assert "past their deadline" in str(exc)
        else:
            raise AssertionError("a run with a live executor must not be retried")


def test_a_lock_an_attempt_left_behind_when_redis_failed_is_given_back_only_if_still_its_own(redis_url, sandbox):
    """Issue 22: an attempt Redis failed under keeps its lock's token; `give_back` releases the lock once Redis
    answers and queues the run again, but leaves a lock another executor took meanwhile, and a finished run; a
    record it cannot read stops the giving back of no other (the consumer's loop calls it at every turn). Each run
    queued again is counted, apart from those the sweeper queues when their executor was lost."""
    connection = redis.Redis.from_url(redis_url)
    workspace = workspaces.Workspace("default", sandbox.base_url, sandbox.token)
    with workspaces.using(workspace):
        connection.set(workspaces.key("run:run_unreadable"), b"{not json")
        connection.set(workspaces.key("run-lock:run_unreadable"), "ours", px=45_000)
        recovery.abandoned(workspaces.key("run-lock:run_unreadable"), b"ours", "run_unreadable", 45)
        now = datetime.now(timezone.utc)
        for run_id, status in (("run_cut", "queued"), ("run_taken", "queued"), ("run_ended", "succeeded")):
            create_run(connection, {"id": run_id, "rule_id": "r", "rule_version": "1", "event_id": "e",
                                    "status": status, "reason": "", "created_at": now.isoformat(),
                                    "updated_at": now.isoformat(), "steps": [], "outputs": {}, "attempts": 0,
                                    "plan": Plan(rule_id="r", rule_version="1", event_id="e", event={}).to_dict()})
            connection.set(workspaces.key(f"run-lock:{run_id}"), f"ours-{run_id}", px=45_000)
            recovery.abandoned(workspaces.key(f"run-lock:{run_id}"), f"ours-{run_id}".encode(), run_id, 45)
        connection.set(workspaces.key("run-lock:run_taken"), "another executor's", px=45_000)

    # While Redis is away nothing is given back, and nothing is forgotten.
    away = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        recovery.give_back(away)
    except redis.ConnectionError:
        pass
    else:
        raise AssertionError("give_back must raise while Redis is away")

    assert recovery.give_back(connection) == ["run_cut"]
    with workspaces.using(workspace):
        assert connection.get(workspaces.key("run-lock:run_cut")) is None
        assert connection.get(workspaces.key("run-lock:run_taken")) == b"another executor's"
        assert connection.get(workspaces.key("run-lock:run_ended")) is None
        queued = [job.args[0] for job in enqueue.queue(connection).jobs]
        assert queued == ["run_cut"], queued
    assert recovery.give_back(connection) == []  # each lock is given back once

    # What an operator sees: the run queued again, counted apart from those the sweeper finds without an executor.
    with workspaces.using(workspace):
        connection.zadd(workspaces.key(recovery.ACTIVE), {"run_taken": 0})  # overdue, and its lock lapses
        connection.delete(workspaces.key("run-lock:run_taken"))
        assert recovery.sweep(connection, workspace) == ["run_taken"]
    counted = {labels["why"]: int(n) for name, labels, n in
               ((*metrics.parse_field(f), n) for f, n in connection.hgetall(metrics.COUNTERS).items())
               if name == "runs_restarted"}
    assert counted == {"redis_failed": 1, "executor_lost": 1}, counted


def test_runs_waiting_for_inloox_start_once_it_answers_and_not_again_at_every_look(redis_url, sandbox):
    """A run parked while its InLoox was down (`recovery.wait_for_inloox`) is left while InLoox still does not answer,
    started once it does; should it meet InLoox down again at once (reads answered, writes refused), the next look
    starts nothing yet (5 s, then doubling), and the runs keep their own backoff meanwhile."""
    connection = redis.Redis.from_url(redis_url)
    workspace = workspaces.Workspace("waiting-for-inloox", sandbox.base_url, sandbox.token)

    def park(run_id: str) -> None:
        with workspaces.using(workspace), connection.pipeline(transaction=False) as pipe:
            recovery.wait_for_inloox(pipe, run_id, time.time() + 300)
            pipe.execute()

    def down():
        raise ServerError("503 SERVICE UNAVAILABLE", status=503)

    with workspaces.using(workspace):
        now = datetime.now(timezone.utc)
        for run_id, status in (("run_parked", "retrying"), ("run_done_meanwhile", "succeeded")):
            create_run(connection, {"id": run_id, "rule_id": "r", "rule_version": "1", "event_id": "e",
                                    "status": status, "reason": "", "created_at": now.isoformat(),
                                    "updated_at": now.isoformat(), "steps": [], "outputs": {}, "attempts": 0,
                                    "plan": Plan(rule_id="r", rule_version="1", event_id="e", event={}).to_dict()})
    assert recovery.inloox_back(connection, workspace, down) == []  # nothing parked here yet
    park("run_parked")
    park("run_done_meanwhile")

    assert recovery.inloox_back(connection, workspace, down) == []
    assert recovery.inloox_back(connection, workspace, lambda: None) == ["run_parked"]
    with workspaces.using(workspace):
        assert [job.args[0] for job in enqueue.queue(connection).jobs] == ["run_parked"]
    park("run_parked")  # InLoox refused it again
    assert recovery.inloox_back(connection, workspace, lambda: None) == []  # not at every look
    assert recovery.parked("waiting-for-inloox")


def _most_overlapping(starts: list[str], window: float) -> int:
    """The most requests that started within any `window` seconds (ISO times)."""
    times = [datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in starts]
    return max(sum(1 for t in times if first <= t < first + window) for first in times)


def test_a_run_whose_job_waits_its_turn_is_not_taken_for_lost(stack, sandbox, rules_dir, redis_url, client):
    """A retrying run whose next attempt's job is still scheduled (no scheduler up to move it) or queued (behind
    another customer's backlog) past the run's deadline is that job's: the sweeper used to queue it another job
    (`-sweep<time>`) at every look, 30 s apart, for as long as the backlog lasted (RQ jobs piling up in the Redis
    and the workers every workspace shares), each a false `runs_restarted{why="executor_lost"}` and a warning. A
    run whose job was really lost is started again, once."""
    write_form_rule(rules_dir)
    ensure_project(sandbox)
    stack.worker()
    web = stack.web()
    # InLoox says "not now, in 10 minutes": the run retries then (its job scheduled), and nobody touches it meanwhile.
    sandbox.fault(kind="status", status=429, retry_after=600, methods=["POST"], path="^Task$", count=1)
    assert deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_waits").status_code == 202
    [run] = wait_until(lambda: runs_in(redis_url, "retrying"), 30, "the run to wait for its retry")
    stack.stop()  # from here on the test's looks are the only ones

    connection = redis.Redis.from_url(redis_url)
    workspace = workspaces.Workspace("default", sandbox.base_url, sandbox.token)
    with workspaces.using(workspace):
        queue = enqueue.queue(connection)
        [job] = [Job.fetch(i, connection=connection, serializer="json")
                 for i in queue.scheduled_job_registry.get_job_ids() if run["id"] in i]
    assert job.get_status() == "scheduled"

    def sweep(at: float) -> list[str]:
        with workspaces.using(workspace):
            connection.delete(workspaces.key("runs:sweeping"))  # a look of its own, whoever looked a moment ago
            return recovery.sweep(connection, workspace, now=at)

    def jobs_of_the_run() -> list[str]:
        with workspaces.using(workspace):
            return [i for i in queue.get_job_ids() + queue.scheduled_job_registry.get_job_ids() if run["id"] in i]

    def restarted() -> list[str]:
        return [line for line in client.get("/metrics").get_data(as_text=True).splitlines()
                if line.startswith("inloox_automation_runs_restarted_total")]

    due = run["resume_at"] + recovery.GRACE
    assert sweep(due + 5) == []  # its job still scheduled: no worker's scheduler has moved it yet
    with workspaces.using(workspace):
        queue.scheduled_job_registry.remove(job)
        queue.enqueue_job(job)  # as the scheduler moves it at its time: now it waits behind the queue's backlog
    assert job.get_status() == "queued"
    assert sweep(due + recovery.GRACE + 10) == []
    assert sweep(due + 2 * recovery.GRACE + 15) == []
    assert jobs_of_the_run() == [job.id] and restarted() == []

    with workspaces.using(workspace):
        queue.remove(job)
    job.delete()  # lost (with a worker killed under it): the sweeper starts the run again, once
    assert sweep(due + 3 * recovery.GRACE + 20) == [run["id"]]
    assert sweep(due + 4 * recovery.GRACE + 25) == []  # the job it queued waits its turn in turn
    assert len(jobs_of_the_run()) == 1 and jobs_of_the_run() != [job.id]
    assert restarted() == ['inloox_automation_runs_restarted_total{why="executor_lost",workspace="default"} 1.0']


def test_a_run_waiting_behind_its_rules_concurrency_limit_is_not_taken_for_lost(redis_url, sandbox):
    """A run of a rule with `concurrency` has an RQ job of its own from the start (`<run id>`), which RQ holds back
    (`rate_limited`) while the rule's limit is full: past the run's deadline it is not lost, nor is a first job
    queued behind a backlog."""
    connection = redis.Redis.from_url(redis_url)
    workspace = workspaces.Workspace("default", sandbox.base_url, sandbox.token)
    plan = Plan(rule_id="r", rule_version="1", event_id="e", event={}, concurrency={"key": "k", "limit": 1}).to_dict()
    with workspaces.using(workspace):
        now = datetime.now(timezone.utc)
        for run_id in ("run_first", "run_second"):
            run = {"id": run_id, "rule_id": "r", "rule_version": "1", "event_id": "e", "status": "queued",
                   "reason": "", "created_at": now.isoformat(), "updated_at": now.isoformat(), "steps": [],
                   "outputs": {}, "attempts": 0, "plan": plan}
            create_run(connection, run)
            enqueue.queue_run(connection, run)
        queue = enqueue.queue(connection)
        assert [Job.fetch(workspaces.current().name + "-" + i, connection=connection, serializer="json").get_status()
                for i in ("run_first", "run_second")] == ["queued", "rate_limited"]
        later = time.time() + LIMITED_GRACE + 60
        assert recovery.sweep(connection, workspace, now=later) == []
        connection.delete(workspaces.key("runs:sweeping"))
        assert recovery.sweep(connection, workspace, now=later + 60) == []
        assert len(queue.get_job_ids()) == 1  # no job more for either
