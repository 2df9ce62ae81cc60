"""for_each with real processes: the overdue digest, run against the sandbox's demo account, tells
each assignee about their own overdue tasks, one notification each, exactly once per item."""
from __future__ import annotations

import shutil
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import redis

from engine import Event
from tests.support.processes import wait_until
from tests.support.stack import PREFIX, all_runs
from workers.intake import submit_event

DIGEST = Path(__file__).parents[2] / "rules" / "overdue-tasks-digest.yaml"


def overdue_by_assignee(sandbox) -> dict[str, list[str]]:
    """What the digest should say, read from the sandbox directly."""
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    rows = sandbox.get("Task", **{"$filter": f"IsDone eq false and EndDateTime lt {now} and ContactId ne null",
                                  "$select": "Name,ContactDisplayName"}).json()["value"]
    found = defaultdict(list)
    for row in rows:
        found[row["ContactDisplayName"]].append(row["Name"])
    return found


def run_by_hand(redis_url: str, rule_id: str) -> redis.Redis:
    """Submit one manual event of `rule_id`, as `flask rules run` does; the connection, for what follows."""
    connection = redis.Redis.from_url(redis_url)
    event = Event("manual", rule_id, datetime.now(timezone.utc), id=f"manual:{rule_id}:1")
    assert submit_event(connection, event, dedup_key=f"test:{rule_id}:1", dedup_ttl=60)
    return connection


def one_run_ended(redis_url: str, what: str) -> dict:
    """The only run, once it is neither queued nor retrying."""
    [run] = wait_until(lambda: (r := all_runs(redis_url)) and r[0]["status"] not in ("queued", "retrying") and r,
                       60, what)
    return run


def test_the_digest_sends_each_assignee_one_notification_listing_their_overdue_tasks(stack, sandbox, receiver,
                                                                                      rules_dir, redis_url, workspace):
    sandbox.reset(seed="demo")
    shutil.copy(DIGEST, rules_dir / DIGEST.name)
    expected = overdue_by_assignee(sandbox)
    assert len(expected) >= 2  # the demo data has overdue tasks of several people
    stack.worker("worker-1")
    stack.worker("worker-2")

    event = Event("manual", "overdue-tasks-digest", datetime.now(timezone.utc), id="manual:digest:1")
    assert submit_event(redis.Redis.from_url(redis_url), event, dedup_key="test:digest:1", dedup_ttl=60)

    wait_until(lambda: len(receiver.received) == len(expected), 30, f"{len(expected)} notifications")
    runs = wait_until(lambda: (r := all_runs(redis_url)) and {x["status"] for x in r} == {"succeeded"} and r,
                      10, "every run to finish")
    titles = sorted(str(m["body"]["title"]) for m in receiver.received)
    assert titles == sorted(f"{name}: {len(tasks)} overdue task(s)" for name, tasks in expected.items())
    for message in receiver.received:
        name = message["body"]["title"].split(":")[0]
        assert sorted(line[2:].split(", due")[0] for line in message["body"]["message"].splitlines()) == \
            sorted(expected[name])
    [query_run] = [r for r in runs if r["plan"]["for_each"]]
    assert sorted(query_run["item_runs"]) == sorted(r["id"] for r in runs if r["plan"]["item_key"])
    assert len(runs) == len(expected) + 1


EACH_TASK = """
id: each-open-task
when:
  - manual: true
for_each:
  inloox.query: Task
  filter: "IsDone eq false"
  select: [TaskItemId, Name]
then:
  - notify: "{{ env.TEAM_CHANNEL_URL }}"
    title: "Open: {{ item.Name }}"
    body: "{{ item.TaskItemId }}"
"""


def test_a_queried_row_without_its_key_fails_the_run_naming_the_row_and_a_retry_asks_again(
        stack, sandbox, receiver, rules_dir, redis_url, workspace):
    from tests.support.stack import make_task
    from workers.jobs import retry_run

    # Such a row has no item key (a run's id and its writes' idempotency keys): it raised KeyError where the
    # items were made, and the query's run was left queued for the sweeper to start again and again.
    (rules_dir / "each-open-task.yaml").write_text(EACH_TASK)
    tasks = sorted([make_task(sandbox, "Write report"), make_task(sandbox, "Review report")])
    sandbox.fault(kind="status", status=200, count=1, methods=["GET"], path="^Task$",
                  body={"value": [{"TaskItemId": tasks[0], "Name": "Write report"}, {"Name": "Review report"}]})
    stack.worker("worker-1")

    connection = run_by_hand(redis_url, "each-open-task")

    run = one_run_ended(redis_url, "the query's run to end")
    assert run["status"] == "failed", run["reason"]
    assert "row 2" in run["reason"] and "TaskItemId" in run["reason"] and "Review report" in run["reason"]
    assert receiver.received == []  # no item of that answer ran

    # InLoox answers right again: the retry asks it again rather than fan out the rows it refused.
    retry_run(connection, run["id"])
    wait_until(lambda: len(receiver.received) == 2, 60, "a notification per task")
    runs = wait_until(lambda: (r := all_runs(redis_url)) and {x["status"] for x in r} == {"succeeded"} and r,
                      30, "every run to succeed")
    assert sorted(r["plan"]["item_key"] for r in runs if r["plan"]["item_key"]) == tasks


CLOSE_PROJECT_TASKS = """
id: close-project-tasks
when:
  - inloox: Project
    on: updated
for_each:
  inloox.query: Task
  filter: "ProjectId eq {{ project.ProjectId | odata }} and IsDone eq false"
  select: [TaskItemId, Name]
then:
  - inloox.update: Task
    key: "{{ item.TaskItemId }}"
    values: {IsDone: true}
"""


def test_an_inloox_event_s_for_each_over_many_rows_writes_every_row_and_pauses_no_rule(
        stack, sandbox, rules_dir, redis_url, workspace):
    from tests.support.stack import PROJECT, make_task

    # The loop guard pauses a rule that runs more than 10 times on one entity within a minute. Each item run
    # of one event's for_each counted as a run of the rule on the event's entity: the tenth row's run was
    # refused (skipped, never retried), the rule paused, and the rows after it never written.
    (rules_dir / "close-project-tasks.yaml").write_text(CLOSE_PROJECT_TASKS)
    tasks = sorted(make_task(sandbox, f"Task {n}") for n in range(14))
    stack.worker("worker-1")

    project = sandbox.get(f"Project({PROJECT})").json()
    event = Event("inloox", "updated", datetime.now(timezone.utc), id="inloox:project:closed:1", entity_set="Project",
                  key=PROJECT, changes={"Name": ["Relaunch", "Relaunch (closed)"]}, entity=project)
    connection = redis.Redis.from_url(redis_url)
    assert submit_event(connection, event, dedup_key="test:project:closed:1", dedup_ttl=60)

    runs = wait_until(lambda: (r := all_runs(redis_url)) and len(r) == len(tasks) + 1
                      and all(x["status"] not in ("queued", "retrying") for x in r) and r, 60, "every run to end")
    assert {r["plan"]["item_key"]: (r["status"], r["reason"]) for r in runs if r["plan"]["item_key"]} == \
        {task: ("succeeded", "") for task in tasks}
    assert sandbox.count("Task", "IsDone eq false") == 0
    assert not connection.exists(f"{PREFIX}rule:paused:close-project-tasks")


CLOSE_AND_FOLLOW_UP = """
id: close-and-follow-up
when:
  - manual: true
for_each:
  inloox.query: Task
  filter: "IsDone eq false"
  select: [TaskItemId, Name, ProjectId]
then:
  - id: close
    inloox.update: Task
    key: "{{ item.TaskItemId }}"
    values: {IsDone: true}
  - id: follow_up
    inloox.create: Task
    values: {Name: "Follow-up {{ item.Name }}", ProjectId: "{{ item.ProjectId }}"}
"""


def test_a_failed_item_retried_from_the_start_does_not_repeat_its_landed_update(
        stack, sandbox, rules_dir, redis_url, workspace):
    from tests.support.stack import make_task
    from workers.jobs import retry_run

    # `runs retry --from-start` promises that landed writes are not repeated: the ledger gives their first result.
    # An update did not ask the ledger: it read the task again and, finding it reopened by a person since, sent
    # its PATCH a second time, undoing the person's change.
    (rules_dir / "close-and-follow-up.yaml").write_text(CLOSE_AND_FOLLOW_UP)
    tasks = {make_task(sandbox, "Write report"): "Write report", make_task(sandbox, "Review report"): "Review report"}
    sandbox.fault(kind="status", status=400, count=1, methods=["POST"], path="^Task$")  # one item's follow-up
    stack.worker("worker-1")

    connection = run_by_hand(redis_url, "close-and-follow-up")
    runs = wait_until(lambda: (r := all_runs(redis_url)) and len(r) == 3
                      and all(x["status"] not in ("queued", "retrying") for x in r) and r, 60, "every run to end")
    [failed] = [r for r in runs if r["status"] == "failed"]
    assert [(s["id"], s["status"]) for s in failed["steps"]] == [("close", "done"), ("follow_up", "error")]
    reopened = failed["plan"]["item_key"]
    assert sandbox.patch(f"Task({reopened})", json={"IsDone": False}).status_code in (200, 204)  # a person

    retry_run(connection, failed["id"], from_start=True)
    wait_until(lambda: (r := [x for x in all_runs(redis_url) if x["id"] == failed["id"]]) and
               r[0]["status"] not in ("queued", "retrying"), 60, "the retried run to end")
    retried = next(x for x in all_runs(redis_url) if x["id"] == failed["id"])
    assert retried["status"] == "succeeded", retried["reason"]
    assert sandbox.get(f"Task({reopened})").json()["IsDone"] is False  # the person's change stands
    for name in tasks.values():
        assert sandbox.count("Task", f"Name eq 'Follow-up {name}'") == 1


DELETE_OLDEST = """
id: delete-oldest-open
when:
  - manual: true
then:
  - id: oldest
    inloox.query: Task
    filter: "IsDone eq false"
    orderby: Name
    top: 1
  - inloox.delete: Task
    key: "{{ steps.oldest.value[0].TaskItemId }}"
  - inloox.create: Task
    values: {Name: "Deleted {{ steps.oldest.value[0].Name }}", ProjectId: "{{ steps.oldest.value[0].ProjectId }}"}
"""


def test_a_run_retried_from_the_start_does_not_repeat_its_landed_delete_on_what_a_query_finds_now(
        stack, sandbox, rules_dir, redis_url, workspace):
    from tests.support.stack import make_task
    from workers.jobs import retry_run

    # A retry from the start asks its queries again, and a later step reading `steps.<id>` gets today's answer. The
    # delete did not ask the ledger: its query now found the next task (the first one was deleted by the first
    # attempt), and the retry deleted that one too.
    (rules_dir / "delete-oldest-open.yaml").write_text(DELETE_OLDEST)
    first, second = make_task(sandbox, "A first"), make_task(sandbox, "B second")
    sandbox.fault(kind="status", status=400, count=1, methods=["POST"], path="^Task$")  # the third step, once
    stack.worker("worker-1")

    connection = run_by_hand(redis_url, "delete-oldest-open")
    run = one_run_ended(redis_url, "the run to end")
    assert run["status"] == "failed", run["reason"]
    assert sandbox.get(f"Task({first})").status_code == 404 and sandbox.get(f"Task({second})").status_code == 200

    retry_run(connection, run["id"], from_start=True)
    wait_until(lambda: all_runs(redis_url)[0]["status"] not in ("queued", "retrying"), 60, "the retried run to end")
    assert all_runs(redis_url)[0]["status"] == "succeeded", all_runs(redis_url)[0]["reason"]
    assert sandbox.get(f"Task({second})").status_code == 200  # deleted once: not the next task the query finds
