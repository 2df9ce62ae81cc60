"""Changes of sets without a change time, found by scanning the sandbox, with snapshots in a real Redis;
custom fields and a task's planning through the Dynamic views' change feeds; and, with real worker and
poller processes, one set of each of the 14 groups of InLoox's product page firing rules, and the lag
of an idle stack."""
from __future__ import annotations

import re
import shlex
import time
from datetime import datetime, timezone

import pytest
import redis

from app import create_app
from inloox import load_metadata
from tests.support.polling import client, connection  # noqa: F401  (fixtures)
from inloox.changes import change_feed, observation
from tests.support.processes import wait_until
from tests.support.stack import PREFIX, PROJECT as PARENT, all_runs, ensure_project, start, write_rule
from workers import eventlog, guards, workspaces
from workers.poller.poll import PollSettings, poll_once
from workers.poller.status import poll_status
from workers.poller.scan import LeaseLost, scan_once

CONTACTS = observation("Contact")
PROJECT = {"ProjectId": "0b4f2a9e-8c1d-4e6f-9a2b-3c4d5e6f7a8b", "Name": "Website relaunch"}


@pytest.fixture
def scans(client, connection):
    """Scan a set as the poller would: each call one scan, starting now."""
    def scan(how, fields=None, settings=PollSettings(), **options):
        return scan_once(client, connection, how, fields, settings, now=datetime.now(timezone.utc), **options)
    return scan


def make(sandbox, entity_set: str, **values) -> dict:
    response = sandbox.post(entity_set, json=values)
    assert response.status_code == 201, response.text
    return response.json()


def queued(connection) -> list[dict]:
    """The accepted events no worker has handled yet (the default workspace's event log)."""
    return [entry.event for entry in eventlog.waiting(connection, workspace="default")]


def test_the_first_scan_remembers_every_row_and_fires_nothing(sandbox, scans, connection):
    make(sandbox, "Contact", DisplayName="Brigitte Koch", Email="brigitte@example.com")
    result = scans(CONTACTS, frozenset({"Email"}))
    assert result.baseline and result.rows == 2  # Brigitte and the sandbox's own user
    assert queued(connection) == []


def test_a_row_deleted_during_the_first_scan_of_a_skip_paging_inloox_leaves_no_other_taken_for_created_later(
        sandbox, connection):
    """The first scan reads the set in key order, page after page. On a server that pages by $skip, a row deleted from a
    page read already makes the rest slide back by one, and the row that slid into that page was never listed: it had
    no snapshot, and the next scan took the old contact for a created one (`on: created` rules wrote for it). The
    first scan now reads the set twice, and keeps every row either read found."""
    from inloox import Client
    from tests.support.hostile import Spoiler, between_pages

    sandbox.paging("skip")
    for n in range(150):
        make(sandbox, "Contact", DisplayName=f"Person {n}", Email=f"p{n}@example.com")
    # Between the first page and the second, a person deletes a contact of the first.
    meanwhile, acted = between_pages(lambda row: sandbox.delete(f"Contact({row['ContactId']})").raise_for_status())

    spoiler = Spoiler(sandbox.base_url)
    try:
        with Client(spoiler.url, sandbox.token) as client:
            spoiler.spoil("Contact", meanwhile)
            first = scan_once(client, connection, CONTACTS, frozenset({"Email"}), now=datetime.now(timezone.utc))
            assert first.baseline
            spoiler.spoils.clear()
            scan_once(client, connection, CONTACTS, frozenset({"Email"}), now=datetime.now(timezone.utc))
    finally:
        spoiler.stop()
    [gone] = [row["ContactId"] for row in acted]
    assert [(e["kind"], e["key"]) for e in queued(connection)] == [("deleted", gone)]


def test_a_changed_field_becomes_one_updated_event_with_from_and_to(sandbox, scans, connection):
    contact = make(sandbox, "Contact", DisplayName="Brigitte Koch", Email="brigitte@example.com")["ContactId"]
    scans(CONTACTS, frozenset({"Email"}))
    sandbox.patch(f"Contact({contact})", json={"Email": "b.koch@example.com"})

    result = scans(CONTACTS, frozenset({"Email"}))

    [event] = queued(connection)
    assert result.accepted == [event["id"]]
    assert (event["kind"], event["entity_set"], event["key"]) == ("updated", "Contact", contact)
    assert event["changes"] == {"Email": ["brigitte@example.com", "b.koch@example.com"]}
    # Only Email was scanned, but the rules get the whole contact.
    assert event["entity"]["DisplayName"] == "Brigitte Koch" and event["chained"] is False
    assert scans(CONTACTS, frozenset({"Email"})).accepted == []


def test_a_row_that_cannot_be_read_fails_the_scan_and_deletes_nothing(sandbox, scans, connection):
    from inloox import Client, InLooxError
    from tests.support.hostile import Spoiler

    contact = make(sandbox, "Contact", DisplayName="Brigitte Koch", Email="brigitte@example.com")["ContactId"]
    scans(CONTACTS, frozenset({"Email"}))
    spoiler = Spoiler(sandbox.base_url)
    # Brigitte's row without its key: skipped, she would be missing from the scan, and taken for deleted.
    spoiler.spoil("Contact", lambda answer: {**answer, "value": [
        {"Email": r["Email"]} if r.get("ContactId") == contact else r for r in answer.get("value", [])]})
    try:
        with Client(spoiler.url, sandbox.token) as hostile, \
                pytest.raises(InLooxError, match="scan Contact: row .* cannot be read: its key ContactId is missing"):
            scan_once(hostile, connection, CONTACTS, frozenset({"Email"}), now=datetime.now(timezone.utc))
    finally:
        spoiler.stop()
    assert queued(connection) == []


def test_unwatched_fields_are_not_read_and_fire_nothing(sandbox, scans, connection):
    contact = make(sandbox, "Contact", DisplayName="Brigitte Koch", Email="brigitte@example.com")["ContactId"]
    scans(CONTACTS, frozenset({"Email"}))
    sandbox.clear_requests()
    sandbox.patch(f"Contact({contact})", json={"Phone": "+49 30 1234"})

    assert scans(CONTACTS, frozenset({"Email"})).accepted == []
    [read] = [r for r in sandbox.requests() if r["method"] == "GET"]
    assert "%24select=ContactId%2CEmail" in read["query"] or "$select=ContactId,Email" in read["query"]


def test_a_new_row_is_created_and_a_deleted_row_is_deleted_once(sandbox, scans, connection):
    scans(observation("Portfolio"))
    portfolio = make(sandbox, "Portfolio", Name="Digital 2026")["PortfolioId"]
    scans(observation("Portfolio"))
    assert sandbox.delete(f"Portfolio({portfolio})").status_code == 204
    scans(observation("Portfolio"))
    scans(observation("Portfolio"))

    created, deleted = queued(connection)
    assert (created["kind"], created["key"], created["entity"]["Name"]) == ("created", portfolio, "Digital 2026")
    assert (deleted["kind"], deleted["key"], deleted["entity"]["Name"]) == ("deleted", portfolio, "Digital 2026")


def test_a_scan_costs_a_request_per_100_rows_and_one_more_for_the_changed_ones(sandbox, scans, client):
    categories = [make(sandbox, "Category", Name=f"Category {n}")["CategoryId"] for n in range(250)]
    scans(observation("Category"), frozenset({"Name"}))
    sandbox.clear_requests()
    assert scans(observation("Category"), frozenset({"Name"})).rows == 250
    assert len([r for r in sandbox.requests() if r["method"] == "GET"]) == 3

    for category in categories[:10]:
        sandbox.patch(f"Category({category})", json={"Name": "renamed"})
    sandbox.clear_requests()
    assert len(scans(observation("Category"), frozenset({"Name"})).accepted) == 10
    assert len([r for r in sandbox.requests() if r["method"] == "GET"]) == 3 + 1


def test_our_own_write_is_chained_once_and_the_next_change_is_a_person_s(sandbox, scans, connection):
    contact = make(sandbox, "Contact", DisplayName="Brigitte Koch", Email="brigitte@example.com")["ContactId"]
    scans(CONTACTS, frozenset({"Email"}))
    # What the worker does after a rule's PATCH (workers/jobs.py): note the write and its chain depth.
    sandbox.patch(f"Contact({contact})", json={"Email": "ours@example.com"})
    guards.note_write(connection, "Contact", contact, 1)
    scans(CONTACTS, frozenset({"Email"}))
    sandbox.patch(f"Contact({contact})", json={"Email": "theirs@example.com"})
    scans(CONTACTS, frozenset({"Email"}))

    ours, theirs = queued(connection)
    assert (ours["chained"], ours["payload"], ours["changes"]["Email"][1]) == (True, {"hops": 1}, "ours@example.com")
    assert (theirs["chained"], theirs["changes"]["Email"][1]) == (False, "theirs@example.com")


def test_a_note_of_our_write_the_previous_scan_had_read_does_not_make_a_person_s_change_ours(
        sandbox, scans, connection):
    contact = make(sandbox, "Contact", DisplayName="Brigitte Koch", Email="brigitte@example.com")["ContactId"]
    scans(CONTACTS, frozenset({"Email"}))
    # Our write touched a field no rule watches: no scan sees it, and its note stays.
    sandbox.patch(f"Contact({contact})", json={"Phone": "+49 30 1234"})
    guards.note_write(connection, "Contact", contact, 1)
    # Written two seconds before the next scan (a note's age is its expiry's: Redis keeps milliseconds).
    connection.pexpire(f"ws:default:wrote:Contact:{contact}", guards.WROTE_TTL * 1000 - 2000)
    scans(CONTACTS, frozenset({"Email"}))
    sandbox.patch(f"Contact({contact})", json={"Email": "theirs@example.com"})

    scans(CONTACTS, frozenset({"Email"}))

    [theirs] = queued(connection)
    assert (theirs["chained"], theirs["changes"]["Email"][1]) == (False, "theirs@example.com")


def test_a_flood_of_changes_is_held_not_run(sandbox, scans, connection):
    contacts = [make(sandbox, "Contact", DisplayName=f"Person {n}")["ContactId"] for n in range(5)]
    settings = PollSettings(flood_limit=3)
    scans(CONTACTS, frozenset({"DisplayName"}), settings)
    for contact in contacts:
        sandbox.patch(f"Contact({contact})", json={"DisplayName": "Renamed"})

    assert scans(CONTACTS, frozenset({"DisplayName"}), settings).held == 5
    assert queued(connection) == [] and connection.llen("ws:default:poll:Contact:held") == 5
    assert scans(CONTACTS, frozenset({"DisplayName"}), settings).held == 0


def test_a_scan_that_loses_its_lease_keeps_nothing(sandbox, scans, connection):
    categories = [make(sandbox, "Category", Name=f"Category {n}")["CategoryId"] for n in range(150)]
    scans(observation("Category"), frozenset({"Name"}))
    sandbox.patch(f"Category({categories[0]})", json={"Name": "renamed"})
    asked = []

    def lost_after_the_first_page():
        asked.append(1)
        return len(asked) < 2

    with pytest.raises(LeaseLost):
        scans(observation("Category"), frozenset({"Name"}), keep_lease=lost_after_the_first_page)
    assert queued(connection) == []
    # The next holder of the lease sees the change as if nothing had happened.
    [event] = scans(observation("Category"), frozenset({"Name"})).accepted
    assert event.startswith(f"inloox:Category:{categories[0]}:")


def test_custom_field_values_are_scanned_by_their_composite_key(sandbox, scans, connection):
    project = make(sandbox, "Project", **PROJECT)["ProjectId"]
    make(sandbox, "CustomField", Name="cf_2283e9e4_Budget", ObjectId=project, Value="25000")
    scans(observation("CustomField"), frozenset({"Value"}))
    sandbox.patch(f"CustomField(Name='cf_2283e9e4_Budget',ObjectId={project})", json={"Value": "30000"})
    scans(observation("CustomField"), frozenset({"Value"}))

    [event] = queued(connection)
    assert event["key"] == f"Name='cf_2283e9e4_Budget',ObjectId={project}"
    assert event["changes"] == {"Value": ["25000", "30000"]}
    # Pasted unquoted into a shell (`flask events show ID`), the id stays one word, quotes and all.
    assert shlex.quote(event["id"]) == event["id"] and shlex.split(event["id"]) == [event["id"]]


def test_a_scanned_change_has_one_id_that_is_one_shell_word(sandbox, client, connection):
    contact = make(sandbox, "Contact", DisplayName="Brigitte Koch", Email="brigitte@example.com")["ContactId"]
    at = datetime(2026, 12, 4, 13, 21, 29, 925891, tzinfo=timezone.utc)
    scan_once(client, connection, CONTACTS, frozenset({"Email"}), PollSettings(), now=at)
    sandbox.patch(f"Contact({contact})", json={"Email": "b.koch@example.com"})
    [event_id] = scan_once(client, connection, CONTACTS, frozenset({"Email"}), PollSettings(), now=at).accepted

    # After the scan of `at`: the change's own digest follows.
    assert re.fullmatch(rf"inloox:Contact:{contact}:scan@2026-12-04T13:21:29\.925891\+00:00:[0-9a-f]{{12}}:updated:Email",
                        event_id), event_id
    assert shlex.split(event_id) == [event_id]


def test_a_project_custom_field_is_read_from_dynamic_project_s_change_feed(sandbox, client, connection):
    project = make(sandbox, "Project", **PROJECT)["ProjectId"]
    make(sandbox, "CustomField", Name="cf_2283e9e4_Budget", ObjectId=project, Value="25000")
    watched = frozenset({"Project_cf_2283e9e4_Budget"})
    poll_once(client, connection, change_feed("DynamicProject"), watched)
    sandbox.patch(f"CustomField(Name='cf_2283e9e4_Budget',ObjectId={project})", json={"Value": "30000"})
    me = client.me()["ContactId"]
    sandbox.clear_requests()

    poll_once(client, connection, change_feed("DynamicProject"), watched)

    [event] = queued(connection)
    assert (event["entity_set"], event["key"]) == ("DynamicProject", project)
    assert event["changes"] == {"Project_cf_2283e9e4_Budget": ["25000", "30000"]}
    assert event["actor"] == {"ContactId": me}
    # A feed, not a scan: what changed, then those rows in full.
    assert [r["path"] for r in sandbox.requests() if r["method"] == "GET"] == ["DynamicProject"] * 2


def test_a_task_s_planning_is_read_from_its_own_change_time_in_dynamic_task_item(sandbox, client, connection):
    project = make(sandbox, "Project", **PROJECT)["ProjectId"]
    phase = make(sandbox, "Planning", ProjectId=project, DisplayName="Design",
                 EndDateTime="2026-04-01T00:00:00Z")["PlanningId"]
    task = make(sandbox, "Task", Name="Mockups", ProjectId=project, PlanningId=phase)["TaskItemId"]
    watched = frozenset({"Planning_EndDateTime"})
    poll_once(client, connection, change_feed("DynamicTaskItem"), watched)
    sandbox.patch(f"Planning({phase})", json={"EndDateTime": "2026-04-15T00:00:00Z"})

    poll_once(client, connection, change_feed("DynamicTaskItem"), watched)

    [event] = queued(connection)
    assert (event["entity_set"], event["key"]) == ("DynamicTaskItem", task)
    assert event["changes"] == {"Planning_EndDateTime": ["2026-04-01T00:00:00.000Z", "2026-04-15T00:00:00.000Z"]}


# One entity set of each group of InLoox's product page (sandbox serves them all), the string field a
# person changes, and the row to create (children go under the project the stack tests share).
GROUPS = {
    "Projects": ("Project", "Name", {"Name": "Intranet"}),
    "Tasks": ("TaskStatus", "Name", {"Name": "Review", "ProjectId": PARENT}),
    "Time entries": ("TimeEntry", "DisplayName", {"DisplayName": "Workshop", "ProjectId": PARENT,
                                                  "StartDateTime": "2026-03-02T09:00:00Z",
                                                  "EndDateTime": "2026-03-02T10:00:00Z"}),
    "Budget and line items": ("BudgetGroup", "Name", {"Name": "Hardware"}),
    "Documents": ("DocumentFolder", "FolderName", {"FolderName": "Contracts", "ProjectId": PARENT}),
    "Planning": ("Planning", "DisplayName", {"DisplayName": "Design phase", "ProjectId": PARENT}),
    "Mind maps": ("MindMap", "Name", {"Name": "Ideas", "ProjectId": PARENT}),
    "Lists": ("CheckList", "Name", {"Name": "Launch checklist", "ProjectId": PARENT}),
    "Portfolios": ("Portfolio", "Name", {"Name": "Digital 2026"}),
    "Contacts and users": ("Contact", "Position", {"DisplayName": "Brigitte Koch", "Position": "Buyer"}),
    "Calendars and working times": ("Calendar", "Name", {"Name": "Berlin office"}),
    "Custom fields": ("CustomFieldDefinition", "DisplayName", {"DisplayName": "Budget", "TableName": "Project"}),
    "Organization and master data": ("Client", "Name", {"Name": "Acme GmbH"}),
    "Permissions": ("ValidLoginDomain", "DomainName", {"DomainName": "example.com"}),
}
RULES = """
id: watch-{rule}
description: A person's change to {set}.{field} gets a tick appended (our own write must not fire it again).
when:
  - inloox: {set}
    on: updated
    changes:
      {field}: {{changed: true}}
then:
  - inloox.update: {set}
    values:
      {field}: "{{{{ entity.{field} }}}} ✓"
---
id: gone-{rule}
description: Tell the team a {set} was deleted.
when:
  - inloox: {set}
    on: deleted
then:
  - notify: "{{{{ env.TEAM_CHANNEL_URL }}}}"
    title: "gone {set}"
    body: "{{{{ event.key }}}}"
"""
SCAN_SECONDS = 1.0


def rules_for(entity_set: str, field: str) -> str:
    return RULES.format(set=entity_set, field=field, rule=entity_set.lower())


def fast_scans(engine, **more) -> None:
    """Scans every second (below the production floor, which the setting lowers), sweeps as often."""
    engine.env.update(POLL_SCAN_SECONDS=f"{SCAN_SECONDS:g}", POLL_SCAN_FLOOR_SECONDS="0.1",
                      POLL_SWEEP_SECONDS="1", **more)


def test_a_person_s_change_in_every_group_fires_once_our_write_never_and_a_delete_once(
        engine, sandbox, receiver, rules_dir, redis_url):
    ensure_project(sandbox)
    rows = {}
    for entity_set, field, values in GROUPS.values():
        key = load_metadata().entity_set(entity_set).key[0]
        rows[entity_set] = (field, make(sandbox, entity_set, **values)[key])
        write_rule(rules_dir, entity_set, rules_for(entity_set, field))
    fast_scans(engine)
    engine.worker()
    engine.poller()
    connection = redis.Redis.from_url(redis_url)
    wait_until(lambda: all(connection.exists(f"{PREFIX}poll:{s}:cursor") for s in rows), 20, "every baseline")

    for entity_set, (field, key) in rows.items():
        assert sandbox.patch(f"{entity_set}({key})", json={field: "changed by a person"}).ok

    def ticked():
        return [s for s, (field, key) in rows.items()
                if sandbox.get(f"{s}({key})").json()[field] == "changed by a person ✓"]
    wait_until(lambda: len(ticked()) == len(rows), 2 * SCAN_SECONDS + 20, "every set's rule to run")
    # Our own write is seen (a chained event) and refused, in every set, scanned or not.
    wait_until(lambda: {e["entity_set"] for e in events(connection) if e["chained"]} >= set(rows), 20,
               "our own writes to be seen")
    assert sorted(r["rule_id"] for r in all_runs(redis_url)) == sorted(f"watch-{s.lower()}" for s in rows)

    for entity_set, (field, key) in rows.items():
        assert sandbox.delete(f"{entity_set}({key})").status_code == 204
    wait_until(lambda: len(receiver.received) == len(rows), 2 * SCAN_SECONDS + 20, "every deletion told")
    two_more_polls(connection, rows)
    deleted = [e["entity_set"] for e in events(connection) if e["kind"] == "deleted"]
    assert sorted(deleted) == sorted(rows)
    assert len(receiver.received) == len(rows)
    assert {f"gone {s}" for s in rows} == {m["body"]["title"] for m in receiver.received}


def test_an_idle_stack_s_lag_stays_under_three_intervals_and_shows_what_scans_cost(
        engine, sandbox, rules_dir, redis_url):
    write_rule(rules_dir, "Contact", rules_for("Contact", "Email"))
    write_rule(rules_dir, "Task", rules_for("Task", "Name"))
    fast_scans(engine, POLL_INTERVAL="1")
    start(engine, redis_url)
    connection = redis.Redis.from_url(redis_url)
    wait_until(lambda: connection.exists(f"{PREFIX}poll:Contact:cursor"), 20, "the first scan")
    app = create_app({"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url, "INLOOX_API_KEY": sandbox.token})

    lags = []

    def sample():
        with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token)):
            lags.append({e["entity_set"]: e["lag_seconds"] for e in poll_status(connection, now=datetime.now(timezone.utc))})
        return len(lags) >= 15
    wait_until(sample, 30, "15 looks at the lag", interval=0.3)  # about five seconds of an idle stack

    assert max(s["Task"] for s in lags) < 3 * 1 and max(s["Contact"] for s in lags) < 3 * SCAN_SECONDS
    status = app.test_cli_runner().invoke(args=["poller", "status"]).output
    [contact] = [line for line in status.splitlines() if line.startswith("Contact")]
    # Alex and the engine's own user: two contacts, one page.
    assert "scan every 1s" in contact and "1 request per scan" in contact and "known 2" in contact
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'inloox_automation_scan_requests{entity_set="Contact",workspace="default"} 1.0' in metrics
    assert "1 request" in app.test_client().get("/ui/poller").get_data(as_text=True)


def events(connection) -> list[dict]:
    """Every event the poller accepted (the default workspace's event log)."""
    return [entry.event for entry in eventlog.entries(connection, workspace="default")]


def two_more_polls(connection, entity_sets) -> None:
    """Wait until every set was polled completely twice more: a second `deleted` would be in by then."""
    for _ in range(2):
        since = datetime.now(timezone.utc)
        wait_until(lambda: all(_started(connection, s) > since for s in entity_sets), 20, "another poll of each set")


def _started(connection, entity_set: str) -> datetime:
    started = connection.hget(f"{PREFIX}poll:{entity_set}:last", "started")
    return datetime.fromisoformat(started.decode()) if started else datetime.min.replace(tzinfo=timezone.utc)


def test_a_custom_field_the_account_does_not_have_yet_is_watched_from_its_first_value(sandbox, client, connection):
    project = make(sandbox, "Project", **PROJECT)["ProjectId"]
    watched = frozenset({"Project_cf_2283e9e4_Budget"})
    assert poll_once(client, connection, change_feed("DynamicProject"), watched).baseline
    make(sandbox, "CustomField", Name="cf_2283e9e4_Budget", ObjectId=project, Value="25000")

    poll_once(client, connection, change_feed("DynamicProject"), watched)

    [event] = queued(connection)
    assert event["changes"] == {"Project_cf_2283e9e4_Budget": [None, "25000"]}


def test_a_slow_scan_does_not_hold_up_the_change_feeds(engine, sandbox, rules_dir, redis_url):
    """A scan of a big set takes long (1,000 requests for 100,000 rows); feeds are polled meanwhile."""
    write_rule(rules_dir, "Contact", rules_for("Contact", "Email"))
    write_rule(rules_dir, "Task", rules_for("Task", "Name"))
    fast_scans(engine, POLL_INTERVAL="0.5")
    start(engine, redis_url)
    connection = redis.Redis.from_url(redis_url)
    wait_until(lambda: connection.exists(f"{PREFIX}poll:Contact:cursor"), 20, "the first scan")
    task = sandbox.post("Task", json={"Name": "Plan", "ProjectId": ensure_project(sandbox)}).json()["TaskItemId"]
    wait_until(lambda: any(e["kind"] == "created" and e["entity_set"] == "Task" for e in events(connection)), 20,
               "the new task's event")
    # Every page of the Contact scan now takes 8 s.
    sandbox.fault(kind="latency", latency_ms=8000, methods=["GET"], path="^Contact")
    time.sleep(2 * SCAN_SECONDS)  # a scan is under way, waiting on its page
    assert sandbox.patch(f"Task({task})", json={"Name": "Plan it"}).ok
    wait_until(lambda: sandbox.get(f"Task({task})").json()["Name"] == "Plan it ✓", 6,
               "the Task rule to run while the Contact scan still waits")


def test_a_change_two_pollers_scan_at_once_is_one_event(sandbox, scans, connection):
    # Two pollers may both hold a workspace for a while (a lease lost unnoticed until its renewal:
    # docs/polling.md); each scan starts at its own time, and both read the contact before either stored it.
    contact = make(sandbox, "Contact", DisplayName="Brigitte Koch", Email="brigitte@example.com")["ContactId"]
    scans(CONTACTS, frozenset({"Email"}))
    sandbox.patch(f"Contact({contact})", json={"Email": "b.koch@example.com"})

    def other_poller_scans_meanwhile() -> bool:
        scans(CONTACTS, frozenset({"Email"}))
        return True
    scans(CONTACTS, frozenset({"Email"}), keep_lease=other_poller_scans_meanwhile)

    assert [e["changes"] for e in queued(connection)] == [{"Email": ["brigitte@example.com", "b.koch@example.com"]}]
