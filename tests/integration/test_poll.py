"""Finding InLoox changes by polling the sandbox's Dynamic views, with snapshots in a real Redis."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
import redis
import requests
from workers import eventlog

from inloox import Client, InLooxError
from tests.support.polling import client, connection  # noqa: F401  (fixtures)
from inloox.changes import change_feed
from tests.support.hostile import between_pages, without_offset
from workers.poller.poll import PollSettings, poll_once, sweep_deleted

TASKS = change_feed("Task")
PROJECT = {"ProjectId": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "Name": "Website relaunch"}


@pytest.fixture
def project(sandbox):
    assert sandbox.post("Project", json=PROJECT).status_code == 201
    return PROJECT["ProjectId"]


def make_task(sandbox, project, name, **fields) -> str:
    response = sandbox.post("Task", json={"Name": name, "ProjectId": project, "WorkAmount": 2.0, **fields})
    assert response.status_code == 201, response.text
    return response.json()["TaskItemId"]


def queued(connection) -> list[dict]:
    """The accepted events no worker has handled yet (the default workspace's event log)."""
    return [entry.event for entry in eventlog.waiting(connection, workspace="default")]


def test_the_first_poll_takes_a_baseline_and_fires_nothing(sandbox, client, connection, project):
    make_task(sandbox, project, "Write report")
    result = poll_once(client, connection, TASKS, frozenset({"IsDone"}))
    assert result.baseline and result.rows == 1
    assert queued(connection) == []


def test_a_task_marked_done_becomes_one_updated_event_with_from_and_to(sandbox, client, connection, project):
    task = make_task(sandbox, project, "Write report")
    poll_once(client, connection, TASKS, frozenset({"IsDone"}))
    assert sandbox.patch(f"Task({task})", json={"IsDone": True}).status_code in (200, 204)

    result = poll_once(client, connection, TASKS, frozenset({"IsDone"}))

    [event] = queued(connection)
    assert result.accepted == [event["id"]]
    assert (event["kind"], event["entity_set"], event["key"]) == ("updated", "Task", task)
    assert event["changes"] == {"IsDone": [False, True]}
    assert event["entity"]["Name"] == "Write report" and event["entity"]["WorkAmount"] == 2.0
    me = client.me()["ContactId"]
    assert event["actor"] == {"ContactId": me}


def test_polling_again_without_changes_fires_nothing_more(sandbox, client, connection, project):
    task = make_task(sandbox, project, "Write report")
    poll_once(client, connection, TASKS, frozenset({"IsDone"}))
    sandbox.patch(f"Task({task})", json={"IsDone": True})
    poll_once(client, connection, TASKS, frozenset({"IsDone"}))
    for _ in range(3):
        again = poll_once(client, connection, TASKS, frozenset({"IsDone"}))
        assert again.accepted == [] and again.duplicates == 0
    assert len(queued(connection)) == 1


def test_a_change_to_an_unwatched_field_fires_nothing(sandbox, client, connection, project):
    task = make_task(sandbox, project, "Write report")
    poll_once(client, connection, TASKS, frozenset({"IsDone"}))
    sandbox.patch(f"Task({task})", json={"Name": "Write the report"})
    assert poll_once(client, connection, TASKS, frozenset({"IsDone"})).accepted == []
    assert queued(connection) == []


def test_a_new_task_is_a_created_event(sandbox, client, connection, project):
    poll_once(client, connection, TASKS, None)
    task = make_task(sandbox, project, "Call the client")
    poll_once(client, connection, TASKS, None)
    [event] = queued(connection)
    assert (event["kind"], event["key"], event["entity"]["Name"]) == ("created", task, "Call the client")


def test_a_deleted_task_is_found_by_the_sweep_once(sandbox, client, connection, project):
    keep = make_task(sandbox, project, "Keep")
    gone = make_task(sandbox, project, "Gone")
    poll_once(client, connection, TASKS, frozenset({"IsDone"}))
    assert sandbox.delete(f"Task({gone})").status_code == 204

    assert len(sweep_deleted(client, connection, TASKS).accepted) == 1
    assert sweep_deleted(client, connection, TASKS).accepted == []
    [event] = queued(connection)
    assert (event["kind"], event["key"]) == ("deleted", gone)
    assert keep != gone


def test_a_flood_of_changes_is_held_not_run(sandbox, client, connection, project):
    tasks = [make_task(sandbox, project, f"Task {n}") for n in range(5)]
    settings = PollSettings(flood_limit=3)
    poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)
    for task in tasks:
        sandbox.patch(f"Task({task})", json={"IsDone": True})

    result = poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)

    assert result.held == 5 and result.accepted == []
    assert queued(connection) == []
    assert connection.llen("ws:default:poll:Task:held") == 5
    assert poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings).held == 0


def test_floods_nobody_releases_keep_only_the_newest_held_changes(sandbox, client, connection, project):
    """Held changes wait for a person. Nobody came, and every flood (a bulk edit, a nightly import) added its
    changes to the set's held list for good: the shared Redis grew by each import's size, day after day. Now the
    newest `held_keep` stay; the rest are dropped, and the poller's log says how many."""
    tasks = [make_task(sandbox, project, f"Task {n}") for n in range(5)]
    settings = PollSettings(flood_limit=3, held_keep=8)
    poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)
    for done in (True, False, True, False):  # four floods of five changes each
        for task in tasks:
            sandbox.patch(f"Task({task})", json={"IsDone": done})
        assert poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings).held == 5

    held = [json.loads(raw) for raw in connection.lrange("ws:default:poll:Task:held", 0, -1)]
    assert len(held) == 8
    assert [e["changes"]["IsDone"] for e in held[-5:]] == [[True, False]] * 5  # the last flood kept whole
    assert queued(connection) == []


def test_a_poll_costs_two_requests_however_many_rows_the_account_has(sandbox, client, connection, project):
    # All 250 rows are written within a second here, inside the default 5 s overlap window that
    # guards against late commits; in an account they are older. No overlap shows the steady cost.
    settings = PollSettings(overlap=timedelta(0))
    tasks = [make_task(sandbox, project, f"Task {n}") for n in range(250)]
    poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)
    for task in tasks[:10]:
        sandbox.patch(f"Task({task})", json={"IsDone": True})
    sandbox.clear_requests()

    result = poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)

    assert len(result.accepted) == 10
    reads = [r for r in sandbox.requests() if r["method"] == "GET"]
    assert len(reads) == 2, reads


def _renamed(sandbox, feed):
    """A person's rename of the row's task (between two pages: it moves to the end of a read in change-time order)."""
    return lambda row: sandbox.patch(f"Task({row[feed.column(feed.key)]})",
                                     json={"Name": "Renamed meanwhile"}).raise_for_status()


def test_no_change_is_lost_when_inloox_pages_by_skip_and_a_row_read_already_changes_again_meanwhile(
        sandbox, connection, project, spoiler):
    """A poll reads its changes in change-time order, page after page. An OData server that pages by $skip (an offset)
    lists the rows as they are at each page: a row of a page read already that changes again meanwhile moves to the
    end, the rest slide back by one, and the row that slid into the page read already was never listed. The cursor
    went on past it, so its change was lost. The poller now asks for each next page itself, after the last row it
    read: from its change time (and key, for a run of 100 rows or more with one change time)."""
    _each_change_once_while_a_row_changes_between_pages(sandbox, connection, project, spoiler, tasks=150, at=1,
                                                         bulk=False)


def test_a_baseline_read_while_a_row_changes_on_a_skip_paging_inloox_takes_no_task_for_created_later(
        sandbox, connection, project, spoiler):
    """The baseline reads every row, page after page, in change-time order, and a row without a snapshot is a created
    entity at its next change (`on: created` rules write for it). On a server that pages by $skip, the row that slid
    into a page read already, while a person changed a row of it, had none: an old task, "created"."""
    _no_task_created_after_a_baseline_while_a_row_changes_between_pages(sandbox, connection, project, spoiler,
                                                                         tasks=150, at=1, bulk=False)


def _key_order_read_with_a_delete(sandbox, project):
    """The Task view read for a joined table's fields (two change times a row: key order) on a sandbox paging by
    $skip, 150 tasks, no overlap, and a spoil that deletes the first row's task between two pages."""
    feed, fields = change_feed("DynamicTaskItem"), frozenset({"TaskItem_IsDone", "Planning_EndDateTime"})
    assert len(feed.stamps(sorted(fields))) == 2
    sandbox.paging("skip")
    tasks = [make_task(sandbox, project, f"Task {n}") for n in range(150)]
    deleted = between_pages(lambda row: sandbox.delete(f"Task({row[feed.column(feed.key)]})").raise_for_status())
    return feed, fields, PollSettings(overlap=timedelta(0), flood_limit=10_000), tasks, deleted


def test_a_key_order_baseline_while_a_task_is_deleted_on_a_skip_paging_inloox_takes_no_task_for_created_later(
        sandbox, connection, project, spoiler):
    """Read for fields of a joined table (two change times a row), the view is read in key order: there a task deleted
    from a page read already made the one behind it slide into that page, unseen by the baseline, and "created" at its
    next change. That baseline reads twice now."""
    feed, fields, settings, tasks, (meanwhile, acted) = _key_order_read_with_a_delete(sandbox, project)

    with Client(spoiler.url, sandbox.token) as client:
        spoiler.spoil("DynamicTaskItem", meanwhile)
        assert poll_once(client, connection, feed, fields, settings).baseline
        spoiler.spoils.clear()
        for task in tasks:
            if task != acted[0][feed.column(feed.key)]:
                assert sandbox.patch(f"Task({task})", json={"IsDone": True}).ok
        poll_once(client, connection, feed, fields, settings)
    [gone] = [row[feed.column(feed.key)] for row in acted]
    assert sorted((e["kind"], e["key"]) for e in queued(connection)) == sorted(("updated", t) for t in tasks
                                                                              if t != gone)


def test_a_key_order_poll_of_more_than_a_page_while_a_task_is_deleted_on_a_skip_paging_inloox_loses_no_change(
        sandbox, connection, project, spoiler):
    """In key order (a joined table's fields watched) a change moves no row, but a task deleted from a page read already
    made the one behind it slide into that page, unseen, and the cursor went on past its change. A read of more than
    a page is read again there, and a row either read found counts (the newer of the two)."""
    feed, fields, settings, tasks, (meanwhile, acted) = _key_order_read_with_a_delete(sandbox, project)

    with Client(spoiler.url, sandbox.token) as client:
        assert poll_once(client, connection, feed, fields, settings).baseline
        for task in tasks:
            assert sandbox.patch(f"Task({task})", json={"IsDone": True}).ok
        spoiler.spoil("DynamicTaskItem", meanwhile)
        poll_once(client, connection, feed, fields, settings)
        spoiler.spoils.clear()
        poll_once(client, connection, feed, fields, settings)
    assert acted  # the deleted task's change was read on the first page, before its delete: all 150 are seen
    done = [e["key"] for e in queued(connection) if (e["changes"].get("TaskItem_IsDone") or [None, None])[1] is True]
    assert sorted(done) == sorted(tasks)


def test_a_bulk_update_of_more_rows_than_a_page_with_one_change_time_is_read_whole(sandbox, client, connection,
                                                                                     project):
    """Asked for from the last row's change time, a page of rows that all share it would come again, and again: a bulk
    update that stamps 150 rows alike (one UPDATE statement) is paged after the last row's change time and key."""
    settings = PollSettings(overlap=timedelta(0), flood_limit=10_000)
    tasks = [make_task(sandbox, project, f"Task {n}") for n in range(150)]
    poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)  # the baseline
    sandbox.freeze_clock()
    for task in tasks:
        assert sandbox.patch(f"Task({task})", json={"IsDone": True}).ok
    sandbox.freeze_clock(False)
    sandbox.clear_requests()

    result = poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)

    assert result.rows == 150 and len(result.accepted) == 150
    reads = [r["query"] for r in sandbox.requests() if r["method"] == "GET" and "DynamicTaskItem" in r["path"]]
    assert len(reads) == 2, reads  # the first page, then the rest after its last row: no page twice, no nextLink
    assert "TaskItemId%20gt%20" in reads[1] and "skiptoken" not in reads[1], reads


def test_an_inloox_that_refuses_a_keyset_of_change_time_and_key_has_the_run_read_through_its_own_paging(
        sandbox, connection, project, spoiler):
    """OData 4.0 does not promise `gt` on a GUID, and an InLoox that refuses it (400) must not fail every poll while a
    bulk update is in the poll's window (the cursor would never move past it): the run is read by itself, by its change
    time (counted before and after, so that a row leaving it meanwhile is noticed), and the poll goes on after it."""
    settings = PollSettings(overlap=timedelta(0), flood_limit=10_000)
    tasks = [make_task(sandbox, project, f"Task {n}") for n in range(150)]
    refuse, acted = between_pages(lambda row: sandbox.fault(kind="status", status=400, count=1,
                                                            path="^DynamicTaskItem"))

    with Client(spoiler.url, sandbox.token) as client:
        poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)  # the baseline
        sandbox.freeze_clock()
        for task in tasks:
            assert sandbox.patch(f"Task({task})", json={"IsDone": True}).ok
        sandbox.freeze_clock(False)
        spoiler.spoil("DynamicTaskItem", refuse)
        sandbox.clear_requests()
        result = poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)
    assert acted and result.rows == 150 and len(result.accepted) == 150
    reads = [(r["status"], r["path"], r["query"]) for r in sandbox.requests() if "DynamicTaskItem" in r["path"]]
    # The first page, the keyset, the run counted, read (two pages) and counted again, then the rows after it.
    assert [(status, path) for status, path, _ in reads] == [
        (200, "DynamicTaskItem"), (400, "DynamicTaskItem"), (200, "DynamicTaskItem/$count"),
        (200, "DynamicTaskItem"), (200, "DynamicTaskItem"), (200, "DynamicTaskItem/$count"),
        (200, "DynamicTaskItem")], reads
    assert "TaskItemId%20gt%20" in reads[1][2] and not any("TaskItemId%20gt%20" in q for _, _, q in reads[2:]), reads
    assert "TaskItem_UpdatedAt%20gt%20" in reads[-1][2], reads


def test_a_bulk_update_of_more_rows_than_a_page_loses_no_change_when_inloox_pages_by_skip_and_one_changes_meanwhile(
        sandbox, connection, project, spoiler):
    """A bulk update stamps 250 rows with one change time (one UPDATE statement). Asked for from that change time, the
    first page came again, and the poll went on through the server's own paging: on a server that pages by $skip, a
    person's edit of a row of the page read already (between the second answer and the next) moved it to the end, the
    rest slid back by one, and the row that slid into the page read already was never listed; the cursor went on past
    its change. The run is now paged after its last row read: its change time, then its key."""
    _each_change_once_while_a_row_changes_between_pages(sandbox, connection, project, spoiler, tasks=250, at=2,
                                                         bulk=True)


def _each_change_once_while_a_row_changes_between_pages(sandbox, connection, project, spoiler, *, tasks: int, at: int,
                                                        bulk: bool, refused: bool = False) -> None:
    """`tasks` tasks marked done (by one UPDATE if `bulk`: one change time), polled from a $skip-paging InLoox while a
    person renames a task between the `at`-th answer with rows and the next: each task's change comes once. If
    `refused`, InLoox refuses the first keyset of change time and key (`gt` on a GUID) once."""
    settings = PollSettings(overlap=timedelta(0), flood_limit=10_000)  # no overlap: the next poll reads nothing older
    sandbox.paging("skip")
    made = [make_task(sandbox, project, f"Task {n}") for n in range(tasks)]
    meanwhile, touched = between_pages(_renamed(sandbox, TASKS), at=at)
    meanwhile = _refusing_the_keyset(sandbox, meanwhile) if refused else meanwhile

    with Client(spoiler.url, sandbox.token) as client:
        poll_once(client, connection, TASKS, frozenset({"IsDone", "Name"}), settings)  # the baseline
        sandbox.freeze_clock(bulk)
        for task in made:
            assert sandbox.patch(f"Task({task})", json={"IsDone": True}).ok
        sandbox.freeze_clock(False)
        spoiler.spoil("DynamicTaskItem", meanwhile)
        poll_once(client, connection, TASKS, frozenset({"IsDone", "Name"}), settings)
        spoiler.spoils.clear()
        poll_once(client, connection, TASKS, frozenset({"IsDone", "Name"}), settings)
    assert touched
    assert not refused or _keyset_refused(sandbox)
    done = [e["key"] for e in queued(connection) if (e["changes"].get("IsDone") or [None, None])[1] is True]
    assert sorted(done) == sorted(made)  # each task's change once: none lost, none twice


def test_a_baseline_of_an_import_of_more_rows_than_a_page_takes_no_task_for_created_later_on_a_skip_paging_inloox(
        sandbox, connection, project, spoiler):
    """An import stamps 250 new rows with one change time. The baseline read them through the server's own paging
    after the first page came again, and on a server that pages by $skip the row that slid into a page read already,
    while a person edited a row of it, got no snapshot: an old task, "created" at its next change."""
    _no_task_created_after_a_baseline_while_a_row_changes_between_pages(sandbox, connection, project, spoiler,
                                                                         tasks=250, at=2, bulk=True)


def _no_task_created_after_a_baseline_while_a_row_changes_between_pages(sandbox, connection, project, spoiler, *,
                                                                        tasks: int, at: int, bulk: bool,
                                                                        refused: bool = False) -> None:
    """`tasks` tasks made (by one import if `bulk`: one change time), their baseline read from a $skip-paging InLoox
    while a person renames a task between the `at`-th answer with rows and the next: each task's next change is an
    update, none a created task. If `refused`, InLoox refuses the first keyset of change time and key once."""
    settings = PollSettings(overlap=timedelta(0), flood_limit=10_000)
    sandbox.paging("skip")
    sandbox.freeze_clock(bulk)
    made = [make_task(sandbox, project, f"Task {n}") for n in range(tasks)]
    sandbox.freeze_clock(False)
    meanwhile, touched = between_pages(_renamed(sandbox, TASKS), at=at)
    meanwhile = _refusing_the_keyset(sandbox, meanwhile) if refused else meanwhile

    with Client(spoiler.url, sandbox.token) as client:
        spoiler.spoil("DynamicTaskItem", meanwhile)
        assert poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings).baseline
        spoiler.spoils.clear()
        for task in made:
            assert sandbox.patch(f"Task({task})", json={"IsDone": True}).ok
        poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)
    assert touched
    assert not refused or _keyset_refused(sandbox)
    assert sorted((e["kind"], e["key"]) for e in queued(connection)) == sorted(("updated", t) for t in made)


def test_a_bulk_update_read_while_inloox_refuses_its_keyset_loses_no_change_when_one_changes_meanwhile(
        sandbox, connection, project, spoiler):
    """An InLoox that refuses `gt` on a GUID had a bulk update's run read through its own paging: by $skip, a person's
    edit of a row of the run between two pages made the row behind it slide into the page read already, unseen, and
    the cursor went on past its change. The run is now read by itself, by its change time, until no row left it
    while it was read."""
    _each_change_once_while_a_row_changes_between_pages(sandbox, connection, project, spoiler, tasks=250, at=2,
                                                        bulk=True, refused=True)


def test_a_baseline_of_an_import_read_while_inloox_refuses_its_keyset_takes_no_task_for_created_later(
        sandbox, connection, project, spoiler):
    """The same in a baseline: the row that slid into a page read already got no snapshot, and its next change was a
    created task (`on: created` rules write for an old one)."""
    _no_task_created_after_a_baseline_while_a_row_changes_between_pages(sandbox, connection, project, spoiler,
                                                                         tasks=250, at=2, bulk=True, refused=True)


def _refusing_the_keyset(sandbox, spoil):
    """`spoil`, and after the first answer with rows a 400 for the next request to the view: the keyset that follows
    a page all of one change time, as an InLoox whose OData cannot compare GUIDs answers it."""
    answers = []

    def refusing(answer: dict) -> dict:
        if answer.get("value") and not answers:
            answers.append(sandbox.fault(kind="status", status=400, count=1, path="^DynamicTaskItem$"))
        return spoil(answer)

    return refusing


def _keyset_refused(sandbox) -> bool:
    """Whether the sandbox answered the view 400, as `_refusing_the_keyset` had it do (the case the test is about)."""
    return any(r["status"] == 400 and r["path"] == "DynamicTaskItem" for r in sandbox.requests())


def test_a_second_poller_after_a_restart_fires_nothing_twice(sandbox, client, connection, project):
    task = make_task(sandbox, project, "Write report")
    poll_once(client, connection, TASKS, frozenset({"IsDone"}))
    sandbox.patch(f"Task({task})", json={"IsDone": True})
    poll_once(client, connection, TASKS, frozenset({"IsDone"}))
    with Client(sandbox.base_url, sandbox.token) as restarted:
        assert poll_once(restarted, connection, TASKS, frozenset({"IsDone"})).accepted == []
    assert len(queued(connection)) == 1


def test_changes_by_the_engine_own_user_are_marked_chained(sandbox, client, connection, project):
    task = make_task(sandbox, project, "Write report")
    me = client.me()["ContactId"]
    settings = PollSettings(own_contact_id=me)
    poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)
    sandbox.patch(f"Task({task})", json={"IsDone": True})
    poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)
    [event] = queued(connection)
    assert event["chained"] is True


def test_a_held_flood_is_shown_and_runs_once_a_person_releases_it(sandbox, client, connection, project, redis_url):
    from app import create_app

    tasks = [make_task(sandbox, project, f"Task {n}") for n in range(4)]
    settings = PollSettings(flood_limit=3)
    poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)
    for task in tasks:
        sandbox.patch(f"Task({task})", json={"IsDone": True})
    poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)
    runner = create_app({"REDIS_URL": redis_url}).test_cli_runner()

    assert "held 4" in runner.invoke(args=["poller", "status"]).output
    assert queued(connection) == []
    result = runner.invoke(args=["poller", "release", "Task"])

    assert "4 held change(s) of Task handed over" in result.output
    assert sorted(e["key"] for e in queued(connection)) == sorted(tasks)
    assert "held 0" in runner.invoke(args=["poller", "status"]).output
    assert runner.invoke(args=["poller", "release", "Task"]).output.startswith("0 held")


# --- adaptive polling (issue 21): a real poller, the sandbox's request log, a webhook -----------------

IDLE_TASK_RULE = """
id: watch-done
when:
  - inloox: Task
    on: updated
    changes:
      IsDone: {from: false, to: true}
then:
  - notify: "json://127.0.0.1:9/never"
    body: "{{ task.Name }}"
"""
FAST = {"POLL_INTERVAL": "0.5", "POLL_IDLE_AFTER_SECONDS": "2", "POLL_MAX_INTERVAL": "4",
        "POLL_SWEEP_SECONDS": "3600"}  # quiet after 2 s: 0.5 → 1 → 2 → 4 s by 6 s of quiet
BOUND = 4 + 3  # the ceiling, plus a poll and the machine's other tenants


def _feed_polls(sandbox, since: float) -> int:
    """Task change-feed reads the sandbox logged since `since` (its `at`, epoch seconds)."""
    return sum(1 for r in sandbox.requests() if "DynamicTaskItem" in r["path"] and _at(r) >= since)


def _at(entry: dict) -> float:
    from engine.edm import parse_datetime

    at = entry["at"]
    return at if isinstance(at, (int, float)) else parse_datetime(at).timestamp()


def _task_events(connection, task: str) -> list[dict]:
    return [e.event for e in eventlog.entries(connection, workspace="default") if e.event.get("key") == task]


@pytest.mark.timeout(150)
def test_an_idle_set_backs_off_yet_sees_a_change_and_a_webhook_or_a_visit_brings_it_back(engine, sandbox, rules_dir, redis_url,
                                                                            runner):
    import time

    from tests.support.processes import wait_until
    from tests.support.stack import deliver, ensure_project, make_task

    (rules_dir / "watch-done.yaml").write_text(IDLE_TASK_RULE)
    ensure_project(sandbox)
    task = make_task(sandbox, "Quiet task", work=0)
    engine.env.update(FAST)
    web = engine.web()
    engine.poller()
    connection = redis.Redis.from_url(redis_url)
    wait_until(lambda: connection.exists("ws:default:poll:Task:cursor"), 30, "the Task baseline")

    time.sleep(8)  # nothing happens: the set backs off to its ceiling of 4 s
    window = time.time()
    time.sleep(8)
    idle_polls = _feed_polls(sandbox, window)
    assert idle_polls <= 4, f"{idle_polls} polls of an idle set in 8 s (at 0.5 s there would be 16)"
    status = runner.invoke(args=["poller", "status"])
    assert "Task" in status.output and "feed every 4s" in status.output, status.output

    # A person's change is still seen within the ceiling and a poll.
    assert sandbox.patch(f"Task({task})", json={"IsDone": True}).status_code in (200, 204)
    wait_until(lambda: _task_events(connection, task), BOUND, "the person's change in the event log")

    # Idle again, then a webhook to the workspace: the Task feed is back to 0.5 s at once.
    time.sleep(8)
    assert "feed every 4s" in runner.invoke(args=["poller", "status"]).output
    assert deliver(web, {"title": "Nothing to do"}, "wake_1").status_code == 202
    woke = time.time()
    wait_until(lambda: "feed every 0.5s" in runner.invoke(args=["poller", "status"]).output, 3,
               "the Task feed back at POLL_INTERVAL after the webhook")
    time.sleep(2)
    assert _feed_polls(sandbox, woke) >= 3, "the feed should poll every 0.5 s again after the webhook"

    # Idle again, then a person opens the dashboard: back to 0.5 s too.
    time.sleep(8)
    assert "feed every 4s" in runner.invoke(args=["poller", "status"]).output
    assert requests.get(f"{web}/ui/poller", timeout=10).status_code == 200
    wait_until(lambda: "feed every 0.5s" in runner.invoke(args=["poller", "status"]).output, 3,
               "the Task feed back at POLL_INTERVAL after a dashboard visit")


# --- hostile answers: one set's answer that cannot be handled fails that set alone ----------------------

PROJECT_RENAMED_RULE = """
id: watch-project-names
when:
  - inloox: Project
    on: updated
    changes:
      changed: [Name]
then:
  - notify: "json://127.0.0.1:9/never"
    body: "{{ project.Name }}"
"""


@pytest.fixture
def spoiler(sandbox):
    from tests.support.hostile import Spoiler

    spoiler = Spoiler(sandbox.base_url)
    yield spoiler
    spoiler.stop()


def _first_stamp_without_offset(answer: dict) -> dict:
    """The first project's change time with no time zone, beside the others' with one (InLoox writes UTC `Z`)."""
    rows = answer.get("value") or []
    if rows and rows[0].get("LastChangedDateTime"):
        rows[0]["LastChangedDateTime"] = without_offset(rows[0]["LastChangedDateTime"])
    return answer


@pytest.mark.timeout(120)
def test_a_project_answer_that_cannot_be_read_keeps_the_workspace_s_tasks_polled(engine, sandbox, rules_dir,
                                                                                 redis_url, spoiler):
    from tests.support.processes import wait_until
    from tests.support.stack import ensure_project, make_task

    # Files are read in name order: Project is polled first, before Task.
    (rules_dir / "a-project.yaml").write_text(PROJECT_RENAMED_RULE)
    (rules_dir / "b-task.yaml").write_text(IDLE_TASK_RULE)
    ensure_project(sandbox)
    assert sandbox.post("Project", json={"Name": "Second project"}).status_code == 201
    task = make_task(sandbox, "Quiet task", work=0)
    spoiler.spoil("Project", _first_stamp_without_offset)
    engine.env.update({"INLOOX_URL": spoiler.url, "POLL_INTERVAL": "0.5"})
    poller = engine.poller()
    connection = redis.Redis.from_url(redis_url)

    wait_until(lambda: connection.exists("ws:default:poll:Task:cursor"), 30,
               "the Task baseline, though the Project answers cannot be handled")
    assert sandbox.patch(f"Task({task})", json={"IsDone": True}).status_code in (200, 204)
    wait_until(lambda: _task_events(connection, task), 30, "the person's Task change in the event log")
    # What could not be handled is told, with whose and which set it was.
    wait_until(lambda: "default: poll Project" in poller.output(), 10, "the Project answer's trouble logged")


@pytest.mark.timeout(120)
def test_a_set_whose_polls_fail_says_so_where_its_customer_and_the_operator_look_until_a_poll_works(
        engine, sandbox, rules_dir, redis_url, spoiler):
    """A poll that failed was told in the poller's log alone, which a hosted service's customer never sees: their
    Project rule fired no more, and the Poller page showed a lag that grew, with no why. Now the Poller page, `flask
    poller status`, the operator's Workspaces page and /metrics say which set fails, since when, and why, until a
    poll of it completes; and a workspace none of whose polls can start (InLoox refuses its token) says that."""
    from app import create_app
    from tests.support.processes import wait_until
    from tests.support.stack import ensure_project

    (rules_dir / "a-project.yaml").write_text(PROJECT_RENAMED_RULE)
    (rules_dir / "b-task.yaml").write_text(IDLE_TASK_RULE)
    project = ensure_project(sandbox)
    spoiler.spoil("Project", _spoiled("ProjectId", project, lambda row: [row]))  # no collection: the poll fails
    engine.env.update({"INLOOX_URL": spoiler.url, "POLL_INTERVAL": "0.5"})
    poller = engine.poller()
    app = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": sandbox.token, "RULES_PATH": str(rules_dir)})
    status = lambda: app.test_cli_runner().invoke(args=["poller", "status"]).output  # noqa: E731

    wait_until(lambda: "failing since" in status(), 30, "the Project polls' failure in `flask poller status`")
    assert "expected a collection of entities" in status() and status().count("failing since") == 1
    page = app.test_client().get("/ui/poller").get_data(as_text=True)
    assert 'class="failing" data-set="Project"' in page and "expected a collection of entities" in page
    assert 'class="failing" data-set="Task"' not in page
    assert 'poll_failures_total{entity_set="Project",workspace="default"}' in app.test_client().get(
        "/metrics").get_data(as_text=True)

    spoiler.spoils.clear()  # InLoox answers right again: the next complete poll clears it
    wait_until(lambda: "failing since" not in status(), 20, "the Project polls' failure cleared")
    poller.stop()

    engine.env.update({"INLOOX_API_KEY": "not-a-token-inloox-knows"})
    poller = engine.poller()
    wait_until(lambda: "no poll works" in status(), 30, "the refused token in `flask poller status`")
    assert "401" in status()
    assert "No poll of this workspace works" in app.test_client().get("/ui/poller").get_data(as_text=True)


PROJECTS = change_feed("Project")
# Rows InLoox should never send, each as a spoiled copy of a real one.
SPOILED_ROWS = {
    "a change time without an offset": lambda row: {**row, "LastChangedDateTime": without_offset(row["LastChangedDateTime"])},
    "no change time": lambda row: {**row, "LastChangedDateTime": None},
    "no key": lambda row: {name: value for name, value in row.items() if name != "ProjectId"},
}


def _spoiled(key_column: str, key: str, spoil):
    """An answer's change: the row of entity `key` spoiled, the others as InLoox sent them."""
    def change(answer: dict) -> dict:
        rows = answer.get("value")
        if isinstance(rows, list):
            answer["value"] = [spoil(r) if r.get(key_column) == key else r for r in rows]
        return answer
    return change


@pytest.mark.parametrize("spoiled", SPOILED_ROWS)
def test_a_row_that_cannot_be_read_is_skipped_and_its_change_seen_once_inloox_answers_it_right(
        sandbox, connection, project, spoiler, spoiled, caplog):
    second = sandbox.post("Project", json={"Name": "Second project"}).json()["ProjectId"]
    with Client(spoiler.url, sandbox.token) as client:
        assert poll_once(client, connection, PROJECTS, frozenset({"Name"})).baseline
        spoiler.spoil("Project", _spoiled("ProjectId", project, SPOILED_ROWS[spoiled]))
        assert sandbox.patch(f"Project({project})", json={"Name": "Relaunch, phase 2"}).ok
        assert sandbox.patch(f"Project({second})", json={"Name": "Second project, renamed"}).ok

        poll_once(client, connection, PROJECTS, frozenset({"Name"}))
        assert [e["key"] for e in queued(connection)] == [second]  # the set's other changes go on
        assert "default: poll Project: row 1 of Project skipped" in caplog.text

        # InLoox answers that row right again: the cursor did not pass its change, so it is seen now.
        spoiler.spoils.clear()
        poll_once(client, connection, PROJECTS, frozenset({"Name"}))
    events = queued(connection)
    assert [e["key"] for e in events] == [second, project]
    assert events[1]["changes"] == {"Name": ["Website relaunch", "Relaunch, phase 2"]}


def test_an_answer_whose_rows_are_not_all_objects_fails_the_poll_and_its_changes_are_seen_later(
        sandbox, connection, project, spoiler):
    # No OData collection at all (inloox/client.py refuses the page, as one without `value`): the set's poll
    # fails, and the cursor stays where it was.
    with Client(spoiler.url, sandbox.token) as client:
        assert poll_once(client, connection, PROJECTS, frozenset({"Name"})).baseline
        spoiler.spoil("Project", _spoiled("ProjectId", project, lambda row: [row]))
        assert sandbox.patch(f"Project({project})", json={"Name": "Relaunch, phase 2"}).ok
        with pytest.raises(InLooxError, match="expected a collection of entities"):
            poll_once(client, connection, PROJECTS, frozenset({"Name"}))
        assert queued(connection) == []
        spoiler.spoils.clear()
        poll_once(client, connection, PROJECTS, frozenset({"Name"}))
    assert [e["changes"] for e in queued(connection)] == [{"Name": ["Website relaunch", "Relaunch, phase 2"]}]


def test_a_sweep_answer_with_a_row_that_cannot_be_read_deletes_nothing(sandbox, connection, project, spoiler):
    # A sweep takes a key it does not list for a deleted entity: skipping the row would delete its task.
    tasks = [make_task(sandbox, project, "Write report"), make_task(sandbox, project, "Review report")]
    with Client(spoiler.url, sandbox.token) as client:
        assert poll_once(client, connection, TASKS, frozenset({"IsDone"})).baseline
        spoiler.spoil("Task", _spoiled("TaskItemId", tasks[0], lambda row: {}))
        with pytest.raises(InLooxError, match="of Task cannot be read: its key TaskItemId is missing"):
            sweep_deleted(client, connection, TASKS)
    assert queued(connection) == []


@pytest.mark.parametrize("spoiled", SPOILED_ROWS)
def test_a_row_the_baseline_cannot_read_is_not_taken_for_a_created_entity_once_inloox_answers_it_right(
        sandbox, connection, project, spoiler, spoiled):
    # A row the baseline left out had no snapshot: read right later, the project that existed all along looked
    # created, and a rule `on: created` would have written for it.
    with Client(spoiler.url, sandbox.token) as client:
        spoiler.spoil("Project", _spoiled("ProjectId", project, SPOILED_ROWS[spoiled]))
        try:
            poll_once(client, connection, PROJECTS, frozenset({"Name"}))
        except InLooxError as exc:  # which entity the row is cannot be known: the baseline is taken again
            assert spoiled == "no key" and "its key ProjectId is missing" in str(exc)
        spoiler.spoils.clear()
        poll_once(client, connection, PROJECTS, frozenset({"Name"}))
        assert queued(connection) == []

        # A project created once the baseline is taken is still a created one.
        second = sandbox.post("Project", json={"Name": "Second project"}).json()["ProjectId"]
        poll_once(client, connection, PROJECTS, frozenset({"Name"}))
    assert [(e["kind"], e["key"]) for e in queued(connection)] == [("created", second)]


def test_a_field_a_rule_starts_watching_has_its_first_change_seen_on_a_task_that_was_quiet(
        sandbox, client, connection, project):
    # No overlap: the first task's change is long past the cursor, as in an account where rules are edited.
    settings = PollSettings(overlap=timedelta(0))
    quiet = make_task(sandbox, project, "Write report")
    later = make_task(sandbox, project, "Review report")
    assert poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings).baseline
    # A rule on the task's name is added: the next poll reads only what changed since, `later`.
    poll_once(client, connection, TASKS, frozenset({"IsDone", "Name"}), settings)
    assert sandbox.patch(f"Task({quiet})", json={"Name": "Write the report"}).ok

    poll_once(client, connection, TASKS, frozenset({"IsDone", "Name"}), settings)

    assert [(e["key"], e["changes"]) for e in queued(connection)] == [
        (quiet, {"Name": ["Write report", "Write the report"]})]
    assert later != quiet


def test_a_field_watched_again_after_a_while_unwatched_has_its_first_change_seen(sandbox, client, connection, project):
    settings = PollSettings(overlap=timedelta(0))
    task = make_task(sandbox, project, "Write report")
    poll_once(client, connection, TASKS, frozenset({"IsDone", "Name"}), settings)
    # The rule on the name is removed; the task's next change is snapshotted without its name.
    assert sandbox.patch(f"Task({task})", json={"IsDone": True}).ok
    poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)
    make_task(sandbox, project, "Review report")  # moves the cursor past the task's change
    poll_once(client, connection, TASKS, frozenset({"IsDone"}), settings)
    # and added again.
    poll_once(client, connection, TASKS, frozenset({"IsDone", "Name"}), settings)
    assert sandbox.patch(f"Task({task})", json={"Name": "Write the report"}).ok

    poll_once(client, connection, TASKS, frozenset({"IsDone", "Name"}), settings)

    assert [e["changes"] for e in queued(connection) if e["key"] == task] == [
        {"IsDone": [False, True]}, {"Name": ["Write report", "Write the report"]}]


def test_a_project_changed_again_while_the_poll_reads_its_pages_is_one_event_to_its_last_value(
        sandbox, connection, project, spoiler):
    # No overlap: the project's second change is behind the cursor once the poll is done, as a second
    # change is in an account when the pages take longer than the overlap to read.
    settings = PollSettings(overlap=timedelta(0))
    others = [sandbox.post("Project", json={"Name": f"Project {n}"}).json()["ProjectId"] for n in range(101)]
    with Client(spoiler.url, sandbox.token) as client:
        assert poll_once(client, connection, PROJECTS, frozenset({"Name"}), settings).baseline
        assert sandbox.patch(f"Project({project})", json={"Name": "Relaunch, phase 1"}).ok
        for other in others[:100]:  # the changes read take more than a page: the project is on the first
            assert sandbox.patch(f"Project({other})", json={"IsArchived": True}).ok

        def meanwhile(answer: dict) -> dict:
            if "@odata.nextLink" in answer and spoiler.spoils.pop("Project", None):  # once, after the first page
                assert sandbox.patch(f"Project({project})", json={"Name": "Relaunch, phase 2"}).ok
                assert sandbox.patch(f"Project({others[100]})", json={"Name": "Project 100, renamed"}).ok
            return answer
        spoiler.spoil("Project", meanwhile)
        poll_once(client, connection, PROJECTS, frozenset({"Name"}), settings)
        poll_once(client, connection, PROJECTS, frozenset({"Name"}), settings)

    assert [e["changes"] for e in queued(connection) if e["key"] == project] == [
        {"Name": ["Website relaunch", "Relaunch, phase 2"]}]


def test_a_task_deleted_again_after_it_was_put_back_under_its_key_is_a_second_deleted_event(
        sandbox, client, connection, project):
    task = make_task(sandbox, project, "Write report")
    poll_once(client, connection, TASKS, frozenset({"IsDone"}))
    assert sandbox.delete(f"Task({task})").status_code == 204
    sweep_deleted(client, connection, TASKS)
    # Put back with its key (a restore, or an import of what was deleted), seen, and deleted again.
    make_task(sandbox, project, "Write report", TaskItemId=task)
    poll_once(client, connection, TASKS, frozenset({"IsDone"}))
    assert sandbox.delete(f"Task({task})").status_code == 204

    sweep_deleted(client, connection, TASKS)
    sweep_deleted(client, connection, TASKS)

    assert [e["kind"] for e in queued(connection) if e["key"] == task] == ["deleted", "created", "deleted"]


def test_a_sweep_whose_listing_misses_a_task_that_is_still_there_deletes_nothing(
        sandbox, connection, project, spoiler):
    # Where pages go by $skip, a delete elsewhere while the sweep reads them moves the next page's first
    # row onto the page already read, and the listing never has it. Here the listing leaves it out.
    tasks = [make_task(sandbox, project, "Write report"), make_task(sandbox, project, "Review report")]

    def missing_the_first(answer: dict) -> dict:
        if spoiler.spoils.pop("Task", None):  # that one listing; looked up by key, the task is there
            answer["value"] = [row for row in answer["value"] if row.get("TaskItemId") != tasks[0]]
        return answer
    with Client(spoiler.url, sandbox.token) as client:
        assert poll_once(client, connection, TASKS, frozenset({"IsDone"})).baseline
        spoiler.spoil("Task", missing_the_first)
        assert sweep_deleted(client, connection, TASKS).accepted == []
        assert sandbox.patch(f"Task({tasks[0]})", json={"IsDone": True}).ok
        poll_once(client, connection, TASKS, frozenset({"IsDone"}))
    assert [(e["kind"], e["key"]) for e in queued(connection)] == [("updated", tasks[0])]


def test_a_change_whose_event_redis_refuses_is_seen_again_once_the_log_is_mended(sandbox, client, connection, project):
    # Redis runs every command of a MULTI even when one fails: the snapshot stored with a refused event (the log's
    # key of another type) made the change look seen, and it was never delivered once the log was mended.
    task = make_task(sandbox, project, "Write report")
    poll_once(client, connection, TASKS, frozenset({"IsDone"}))
    assert sandbox.patch(f"Task({task})", json={"IsDone": True}).status_code in (200, 204)
    log = eventlog.stream_key("default")
    connection.set(log, "not a stream")

    with pytest.raises(redis.ResponseError):
        poll_once(client, connection, TASKS, frozenset({"IsDone"}))
    connection.delete(log)
    result = poll_once(client, connection, TASKS, frozenset({"IsDone"}))

    [event] = queued(connection)
    assert result.accepted == [event["id"]]
    assert (event["kind"], event["key"], event["changes"]) == ("updated", task, {"IsDone": [False, True]})


def test_a_delete_whose_event_redis_refuses_is_found_again_once_the_log_is_mended(sandbox, client, connection, project):
    # As above for the sweep: the snapshot forgotten with a refused event left no trace of the task to find gone.
    gone = make_task(sandbox, project, "Gone")
    poll_once(client, connection, TASKS, frozenset({"IsDone"}))
    assert sandbox.delete(f"Task({gone})").status_code == 204
    log = eventlog.stream_key("default")
    connection.set(log, "not a stream")

    with pytest.raises(redis.ResponseError):
        sweep_deleted(client, connection, TASKS)
    connection.delete(log)

    assert len(sweep_deleted(client, connection, TASKS).accepted) == 1
    [event] = queued(connection)
    assert (event["kind"], event["key"]) == ("deleted", gone)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("fault", ["hangs", "trickles"])
def test_a_poll_whose_inloox_never_answers_ends_says_so_and_the_next_poll_sees_the_change(
        engine, sandbox, rules_dir, redis_url, spoiler, fault):
    """InLoox takes the poll's connection and never answers, or answers a byte at a time for good (each byte well
    within the read timeout). The poll must end at the client's timeout, say which set fails and why where the
    customer looks, the set's polls go on, and once InLoox answers again the change made meanwhile is seen."""
    from app import create_app
    from tests.support.processes import wait_until
    from tests.support.stack import ensure_project, make_task
    from workers.poller.status import troubles
    from workers.workspaces import Workspace, using

    (rules_dir / "watch-done.yaml").write_text(IDLE_TASK_RULE)
    ensure_project(sandbox)
    task = make_task(sandbox, "Quiet task", work=0)
    engine.env.update({"INLOOX_URL": spoiler.url, "POLL_INTERVAL": "0.5", "INLOOX_TIMEOUT": "2"})
    engine.poller()
    app = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": sandbox.token, "RULES_PATH": str(rules_dir)})
    status = lambda: app.test_cli_runner().invoke(args=["poller", "status"]).output  # noqa: E731
    direct = redis.Redis.from_url(redis_url)

    def trouble() -> dict:
        with using(Workspace("default", sandbox.base_url, sandbox.token)):
            return troubles(direct).get("Task") or {}

    wait_until(lambda: direct.exists("ws:default:poll:Task:cursor"), 30, "the Task baseline")
    if fault == "hangs":
        sandbox.fault(kind="latency", latency_ms=600_000, methods=["GET"], path="^DynamicTaskItem")
    else:
        spoiler.drip("DynamicTaskItem")
    assert sandbox.patch(f"Task({task})", json={"IsDone": True}).status_code in (200, 204)

    wait_until(lambda: "failing since" in status(), 30, "the hung Task poll's failure in `flask poller status`")
    assert "no answer to GET" in status(), status()
    first = trouble()["at"]
    wait_until(lambda: trouble().get("at", first) != first, 30, "another poll of the set while InLoox hangs")
    assert not _task_events(direct, task)

    sandbox.clear_faults()
    spoiler.drips.clear()
    wait_until(lambda: _task_events(direct, task), 30, "the change made while InLoox hung, in the event log")
    wait_until(lambda: "failing since" not in status(), 20, "the Task polls' failure cleared")
    assert len(_task_events(direct, task)) == 1
