"""What the poller keeps of each entity in Redis (workers/poller/snapshots.py): small, and readable across an upgrade."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from engine import load_rules
from tests.support.polling import client, connection  # noqa: F401  (fixtures)
from inloox.changes import change_feed, observation
from workers import eventlog, workspaces
from workers.poller.poll import poll_once, sweep_deleted
from workers.poller.loop import watched_sets
from workers.poller.scan import scan_once
from workers.poller.snapshots import SnapshotStore

TASKS = change_feed("Task")
CONTACTS = observation("Contact")
EXAMPLES = Path(__file__).resolve().parents[2] / "rules"
PROJECT = {"ProjectId": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "Name": "Website relaunch"}


@pytest.fixture
def task(sandbox) -> str:
    """A task as people write them: a name, a description, dates, planned effort."""
    assert sandbox.post("Project", json=PROJECT).status_code == 201
    response = sandbox.post("Task", json={
        "Name": "Write the relaunch report", "ProjectId": PROJECT["ProjectId"], "WorkAmount": 2.0,
        "StartDateTime": "2026-12-01T08:00:00Z", "EndDateTime": "2026-12-05T17:00:00Z",
        "DescriptionHTML": "<p>Numbers from the analytics board, one page.</p>"})
    assert response.status_code == 201, response.text
    return response.json()["TaskItemId"]


def queued(connection) -> list[dict]:
    return [entry.event for entry in eventlog.waiting(connection, workspace="default")]


def stored(connection, entity_set: str, key: str) -> bytes:
    return connection.hget(f"{workspaces.current().prefix}poll:{entity_set}:snap", key)


def as_before_layouts(connection, entity_set: str, key: str, **store) -> bytes:
    """An entity's snapshot as the version before layouts stored it: a JSON object, keys sorted."""
    snapshot = SnapshotStore(connection, entity_set, workspaces.current().prefix, **store).load([key])[key]
    return json.dumps(snapshot, sort_keys=True, default=str).encode()


def store_as_before_layouts(connection, entity_set: str, key: str, **store) -> None:
    """Rewrite an entity's snapshot as the version before layouts stored it."""
    connection.hset(f"{workspaces.current().prefix}poll:{entity_set}:snap", key,
                    as_before_layouts(connection, entity_set, key, **store))


def scan_contacts(client, connection):
    return scan_once(client, connection, CONTACTS, frozenset({"Email"}), now=datetime.now(timezone.utc))


def test_a_task_snapshot_with_every_field_watched_takes_under_40_percent_of_its_json(client, connection, task):
    poll_once(client, connection, TASKS, None)  # every field: an `updated` trigger without `changes`

    before = as_before_layouts(connection, "Task", task)
    assert len(before) > 600 and b'"Name": "Write the relaunch report"' in before
    assert len(stored(connection, "Task", task)) < 0.4 * len(before)


def test_a_contact_snapshot_stores_its_email_and_not_its_key_again(sandbox, client, connection):
    contact = sandbox.post("Contact", json={"DisplayName": "Brigitte Koch", "Email": "brigitte@example.com"})
    scan_contacts(client, connection)

    assert len(stored(connection, "Contact", contact.json()["ContactId"])) < 40  # 90 with names and key


def test_a_task_snapshot_stored_before_layouts_still_gives_from_and_to(sandbox, client, connection, task):
    poll_once(client, connection, TASKS, None)
    store_as_before_layouts(connection, "Task", task)
    assert stored(connection, "Task", task).startswith(b"{")
    assert poll_once(client, connection, TASKS, None).accepted == []  # read as it was: nothing is new

    sandbox.patch(f"Task({task})", json={"IsDone": True, "WorkAmount": 3.0})
    poll_once(client, connection, TASKS, None)

    [event] = queued(connection)
    assert event["kind"] == "updated" and event["key"] == task
    assert event["changes"]["IsDone"] == [False, True] and event["changes"]["WorkAmount"] == [2.0, 3.0]
    assert not stored(connection, "Task", task).startswith(b"{")  # written anew, compactly


def test_a_task_deleted_while_its_snapshot_is_from_before_layouts_is_one_deleted_event(sandbox, client, connection,
                                                                                        task):
    poll_once(client, connection, TASKS, None)
    store_as_before_layouts(connection, "Task", task)
    assert sandbox.delete(f"Task({task})").status_code in (200, 204)

    sweep_deleted(client, connection, TASKS)

    [event] = queued(connection)
    assert (event["kind"], event["key"]) == ("deleted", task)
    assert event["entity"]["Name"] == "Write the relaunch report"


def test_a_contact_snapshot_stored_before_layouts_still_gives_from_and_to(sandbox, client, connection):
    contact = sandbox.post("Contact", json={"DisplayName": "Brigitte Koch", "Email": "brigitte@example.com"})
    key = contact.json()["ContactId"]
    scan_contacts(client, connection)
    store_as_before_layouts(connection, "Contact", key, key_field="ContactId")
    assert json.loads(stored(connection, "Contact", key)) == {"ContactId": key, "Email": "brigitte@example.com"}
    assert scan_contacts(client, connection).accepted == []

    sandbox.patch(f"Contact({key})", json={"Email": "b.koch@example.com"})
    scan_contacts(client, connection)

    [event] = queued(connection)
    assert (event["kind"], event["key"]) == ("updated", key)
    assert event["changes"] == {"Email": ["brigitte@example.com", "b.koch@example.com"]}


def test_a_deleted_contact_whose_key_is_not_stored_twice_is_reported_with_its_key(sandbox, client,
                                                                                          connection):
    contact = sandbox.post("Contact", json={"DisplayName": "Brigitte Koch", "Email": "brigitte@example.com"})
    key = contact.json()["ContactId"]
    scan_contacts(client, connection)
    assert sandbox.delete(f"Contact({key})").status_code in (200, 204)

    scan_contacts(client, connection)

    [event] = queued(connection)
    assert (event["kind"], event["key"]) == ("deleted", key)
    assert event["entity"] == {"ContactId": key, "Email": "brigitte@example.com"}


def watched_by_example(rule: str, entity_set: str) -> frozenset[str] | None:
    """The fields the poller watches of `entity_set` for one example rule of rules/."""
    return watched_sets(load_rules(EXAMPLES / f"{rule}.yaml"))[entity_set]


def test_a_rule_on_new_tasks_keeps_no_field_and_its_event_still_carries_the_task(sandbox, client, connection, task):
    fields = watched_by_example("unassigned-task-alert", "Task")
    poll_once(client, connection, TASKS, fields)
    new = sandbox.post("Task", json={"Name": "Book the venue", "ProjectId": PROJECT["ProjectId"]}).json()

    poll_once(client, connection, TASKS, fields)

    [event] = queued(connection)
    assert (event["kind"], event["key"]) == ("created", new["TaskItemId"])
    assert event["entity"]["Name"] == "Book the venue" and event["entity"]["ProjectId"] == PROJECT["ProjectId"]
    assert len(stored(connection, "Task", task)) < 50  # its change time alone


def test_a_rule_on_new_checklists_keeps_no_field_and_its_event_still_carries_the_list(sandbox, client, connection):
    assert sandbox.post("Project", json=PROJECT).status_code == 201
    fields = watched_by_example("checklist-added", "CheckList")
    lists = observation("CheckList")
    scan_once(client, connection, lists, fields, now=datetime.now(timezone.utc))
    new = sandbox.post("CheckList", json={"Name": "Launch checklist", "ProjectId": PROJECT["ProjectId"]}).json()

    scan_once(client, connection, lists, fields, now=datetime.now(timezone.utc))

    [event] = queued(connection)
    assert (event["kind"], event["key"]) == ("created", new["CheckListId"])
    assert event["entity"]["Name"] == "Launch checklist" and event["entity"]["ProjectId"] == PROJECT["ProjectId"]


def test_a_layout_another_workspace_holds_wrong_never_reads_this_workspaces_snapshots(sandbox, client, connection,
                                                                                       task):
    # A layout's names are cached by the process for good, for every workspace (its id is their digest). Before, the
    # names one workspace's `poll:layouts` held under an id were cached unchecked: names that were not that id's made
    # every other workspace's snapshots of it read with the wrong fields, and their changes fire as other changes.
    # Fields no other test watches together, so that no test before this one has had the process cache their layout.
    fields = frozenset({"Name", "IsDone", "WorkAmount", "DescriptionHTML", "EndDateTime"})
    poll_once(client, connection, TASKS, fields)  # the default workspace's baseline: snapshots of one layout
    [(layout, names)] = connection.hgetall(f"{workspaces.current().prefix}poll:layouts").items()
    other = SnapshotStore(connection, "Task", "ws:other:")
    connection.hset(other.layouts_key, layout, json.dumps(list(reversed(json.loads(names)))))  # not that id's names
    connection.hset(other.snap_key, task, stored(connection, "Task", task))
    with pytest.raises(LookupError):  # the other workspace's poll reads its snapshot first: its own poll fails
        other.load([task])

    sandbox.patch(f"Task({task})", json={"IsDone": True})
    poll_once(client, connection, TASKS, fields)

    [event] = queued(connection)
    assert (event["kind"], event["changes"]) == ("updated", {"IsDone": [False, True]})
