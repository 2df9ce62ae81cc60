"""`for:` holds: a matched rule waits, then runs only if InLoox still matches; the wait survives restarts."""
from __future__ import annotations

import signal
import time
from datetime import datetime

import redis as redis_lib
from rq.job import Job

from sandbox.seed import ME_ID
from tests.support.processes import wait_until
from tests.support.stack import all_runs, make_task, runs_in, start, write_rule
from workers import enqueue, recovery, workspaces
from workers.holds import RECHECK_AFTER_ERROR
from workers.runs import GRACE

UNASSIGNED_RULE = """
id: unassigned-task-alert
description: Warn the team when a new task is still unassigned a little later.
when:
  - inloox: Task
    on: created
    for: {hold}
if:
  - {{path: task.ContactId, op: exists, value: false}}
then:
  - notify: "{{{{ env.TEAM_CHANNEL_URL }}}}"
    title: Unassigned task
    body: "{{{{ task.Name }}}} has no assignee."
"""


def test_a_rule_still_matching_after_its_hold_runs_once(engine, sandbox, receiver, rules_dir, redis_url):
    write_rule(rules_dir, "unassigned", UNASSIGNED_RULE.format(hold="2s"))
    start(engine, redis_url)

    make_task(sandbox, "Nobody's job")

    wait_until(lambda: runs_in(redis_url, "held"), 10, "the run to be held")
    [message] = wait_until(lambda: receiver.received, 15, "the notification after the hold")
    assert "Nobody's job has no assignee." in str(message["body"])
    # The run's status is stored once the notification was answered: a moment after it arrived.
    wait_until(lambda: [r["status"] for r in all_runs(redis_url)] == ["succeeded"], 5, "the run to succeed")


def test_a_rule_no_longer_matching_after_its_hold_is_skipped(engine, sandbox, receiver, rules_dir, redis_url):
    write_rule(rules_dir, "unassigned", UNASSIGNED_RULE.format(hold="3s"))
    start(engine, redis_url)

    task = make_task(sandbox, "Taken at once")
    wait_until(lambda: runs_in(redis_url, "held"), 10, "the run to be held")
    sandbox.patch(f"Task({task})", json={"ContactId": ME_ID})

    [run] = wait_until(lambda: runs_in(redis_url, "skipped"), 15, "the run to be skipped after the hold")
    assert "no longer matches" in run["reason"] and "ContactId" in run["reason"]
    assert receiver.received == []


def test_a_hold_survives_a_killed_worker(engine, sandbox, receiver, rules_dir, redis_url):
    write_rule(rules_dir, "unassigned", UNASSIGNED_RULE.format(hold="4s"))
    start(engine, redis_url)
    make_task(sandbox, "Nobody's job")
    wait_until(lambda: runs_in(redis_url, "held"), 10, "the run to be held")

    engine.processes[0].signal(signal.SIGKILL)  # the worker and its scheduler, as in a crash
    engine.worker("worker-2")

    # The hold is kept in Redis; worker-2's scheduler takes over once the dead one's lock
    # (20 s, workers/rq_schedule.py) has expired, so the run fires late but exactly once.
    wait_until(lambda: runs_in(redis_url, "succeeded"), 100, "the held run to fire after the restart")
    assert len(receiver.received) == 1


def test_a_held_run_rechecked_while_inloox_is_down_is_not_taken_for_lost(engine, sandbox, receiver, rules_dir,
                                                                         redis_url, client, runner):
    """InLoox down when a hold ends: the check is scheduled again 30 s later, and the run's deadline was set to that
    same moment. The sweeper took the run for one whose executor was lost as soon as the check was a little late
    (a hanging InLoox holds it for its whole timeout, a backlog for longer), every 30 s of the outage: a false
    `executor_lost` on /metrics and in the worker's log (the run's own record, `runs show`, said nothing of it), and a
    second check queued beside the first. Now the deadline
    counts from the recheck, and a run whose check waits in the queue is its check's, not lost; one whose check was
    lost is started again, as before."""
    write_rule(rules_dir, "unassigned", UNASSIGNED_RULE.format(hold="1s"))
    start(engine, redis_url)
    sandbox.fault(kind="status", status=503, count=100_000, methods=["GET"], path=r"^Task\(")  # InLoox down for it
    make_task(sandbox, "Nobody's job")
    [run] = wait_until(lambda: [r for r in runs_in(redis_url, "held") if "could not re-read InLoox" in r["reason"]],
                       30, "the hold's check to meet InLoox down")
    engine.stop()  # from here on the test's looks are the only ones (the workers' sweeps and checks have ended)

    connection = redis_lib.Redis.from_url(redis_url)
    workspace = workspaces.Workspace("default", sandbox.base_url, sandbox.token)
    recheck = datetime.fromisoformat(run["updated_at"]).timestamp() + RECHECK_AFTER_ERROR
    with workspaces.using(workspace):
        [check] = [Job.fetch(i, connection=connection, serializer="json")
                   for i in enqueue.queue(connection).scheduled_job_registry.get_job_ids() if run["id"] in i]
    # Scheduled, and RQ says so (under the name of the check that scheduled it, RQ marked it finished as that ended).
    assert check.get_status() == "scheduled"

    def sweep(at: float) -> list[str]:
        with workspaces.using(workspace):
            connection.delete(workspaces.key("runs:sweeping"))  # a look of its own, whoever looked a moment ago
            return recovery.sweep(connection, workspace, now=at)

    def shown() -> str:
        return runner.invoke(args=["runs", "show", run["id"]]).output.splitlines()[0]

    def restarted() -> list[str]:
        return [line for line in client.get("/metrics").get_data(as_text=True).splitlines()
                if line.startswith("inloox_automation_runs_restarted_total")]

    check.set_status("started")  # the recheck under way, its InLoox read waiting out the client's timeout
    assert sweep(recheck + 5) == []
    check.set_status("queued")  # the recheck waiting its turn behind a backlog
    assert sweep(recheck + GRACE + 5) == []
    assert restarted() == [] and "held: could not re-read InLoox" in shown()

    check.delete()  # the recheck lost (with a worker killed under it): the sweeper checks the hold again, once
    assert sweep(recheck + 2 * GRACE + 10) == [run["id"]]
    assert sweep(recheck + 2 * GRACE + 11) == []
    assert restarted() == ['inloox_automation_runs_restarted_total{why="executor_lost",workspace="default"} 1.0']


FOLLOW_UP_AFTER_HOLD = """
id: follow-up-after-hold
when:
  - inloox: Task
    on: updated
    for: 1s
then:
  - inloox.create: Task
    values: {Name: "Follow-up {{ task.Name }}", ProjectId: "{{ task.ProjectId }}"}
"""


def test_a_forced_replay_of_a_held_rule_writes_its_own_entity(stack, sandbox, rules_dir, redis_url, workspace):
    from app import create_app
    from engine import Event
    from workers.intake import submit_event

    # A forced run (events replay --force) writes under idempotency keys of its own, so that it is not taken for the
    # first run. When its hold ended, the fresh plan replaced its keys with the first run's: its create found that
    # run's "done" in the ledger (or its marker in InLoox) and adopted its entity: the forced write never happened.
    write_rule(rules_dir, "follow-up", FOLLOW_UP_AFTER_HOLD)
    task = make_task(sandbox, "Write report")
    stack.worker("worker-1")
    connection = redis_lib.Redis.from_url(redis_url)
    entity = sandbox.get(f"Task({task})").json()
    event = Event("inloox", "updated", datetime.now().astimezone(), id="inloox:task:renamed:1", entity_set="Task",
                  key=task, changes={"Name": ["Write", "Write report"]}, entity=entity)
    assert submit_event(connection, event, dedup_key="test:task:renamed:1", dedup_ttl=60)
    wait_until(lambda: [r["status"] for r in all_runs(redis_url)] == ["succeeded"], 20, "the first run")
    assert sandbox.count("Task", "Name eq 'Follow-up Write report'") == 1

    app = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": sandbox.token, "RULES_PATH": str(rules_dir), "INLOOX_REQUESTS_PER_SECOND": "0"})
    forced = app.test_cli_runner().invoke(args=["events", "replay", event.id, "--force"])
    assert "started 1 run(s)" in forced.output, forced.output
    runs = wait_until(lambda: (r := all_runs(redis_url)) and len(r) == 2 and
                      all(x["status"] in ("succeeded", "failed") for x in r) and r, 30, "the forced run to end")
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert sandbox.count("Task", "Name eq 'Follow-up Write report'") == 2


def test_two_checks_of_one_hold_at_once_with_new_rules_between_write_once(stack, sandbox, rules_dir, redis_url):
    """Two checks of one held run at once (the sweeper or a redelivered event schedules one while another reads
    InLoox): each read "held" and queued the run with its own plan. With the rule edited between them, the first
    check's plan ran and wrote; the late one then stored its own plan over the finished run and queued it again:
    a second follow-up task, written by the old rule. Checks now take the run's lock."""
    import threading

    from engine import Event
    from workers import holds
    from workers.intake import submit_event
    from workers.worker_context import build_context

    write_rule(rules_dir, "follow-up", FOLLOW_UP_AFTER_HOLD.replace("for: 1s", "for: 1h"))  # checked by the test
    workspace = workspaces.Workspace(workspaces.DEFAULT, sandbox.base_url, sandbox.token, rules_path=str(rules_dir),
                                     limits=workspaces.Limits(inloox_requests_per_second=0))
    task = make_task(sandbox, "Write report")
    stack.worker("worker-1")  # executes what a check queues
    connection = redis_lib.Redis.from_url(redis_url)
    event = Event("inloox", "updated", datetime.now().astimezone(), id="inloox:task:renamed:2", entity_set="Task",
                  key=task, changes={"Name": ["Write", "Write report"]}, entity=sandbox.get(f"Task({task})").json())
    with workspaces.using(workspace):
        assert submit_event(connection, event, dedup_key="test:task:renamed:2", dedup_ttl=60)
    [run] = wait_until(lambda: runs_in(redis_url, "held"), 20, "the run to be held")

    config = {"INLOOX_TIMEOUT": "10", "OUTBOUND_ALLOW": "", "RULES_ENV": "", "DELIVERY_RETRY_SECONDS": ""}
    ctx = build_context(config, workspace, connection)
    sandbox.fault(kind="latency", latency_ms=8000, count=1, methods=["GET"], path=r"^Task\(")  # the first check's read
    results = {}

    def check(name: str) -> None:
        with workspaces.using(workspace):
            results[name] = holds.check_hold.__wrapped__(ctx, run["id"])

    first = threading.Thread(target=check, args=("first",))
    first.start()
    time.sleep(1)  # its read under way (the sandbox logs a request once it has answered it)
    write_rule(rules_dir, "follow-up", FOLLOW_UP_AFTER_HOLD.replace("for: 1s", "for: 1h")
               .replace("Follow-up", "Next step"))
    time.sleep(2.5)  # past RULES_RECHECK_SECONDS: the second check reads the new rule
    check("second")
    first.join(20)
    wait_until(lambda: [r["status"] for r in all_runs(redis_url)] == ["succeeded"], 30, "the run to end")
    time.sleep(2)  # anything queued again would run by now
    assert [r["status"] for r in all_runs(redis_url)] == ["succeeded"]
    names = sorted(t["Name"] for t in sandbox.get("Task").json()["value"] if t["Name"] != "Write report")
    assert len(names) == 1, names
