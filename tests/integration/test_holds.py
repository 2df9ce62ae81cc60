"""`for:` holds: a matched rule waits, then runs only if InLoox still matches; the wait survives restarts."""
from __future__ import annotations

import signal

from sandbox.seed import ME_ID
from tests.support.processes import wait_until
from tests.support.stack import all_runs, make_task, runs_in, start, write_rule

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
