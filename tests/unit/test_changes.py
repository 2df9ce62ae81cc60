"""Which entity sets the poller can watch and how (inloox/changes.py), what `rules check` refuses,
and how often sets are scanned (workers/poller/settings.py)."""
from __future__ import annotations

import pytest
from flask import Flask

from engine import load_rules
from inloox.changes import ChangeFeed, Scan, change_feed, observation, scan_requests, unobservable
from inloox.metadata import load_metadata
from web.rules_cli import rules_cli
from workers.poller.loop import watched_sets
from workers.poller.poll import row_problem
from workers.poller.settings import PollerSettings, parse_scan_seconds

RULE = """
id: watch-it
when:
  - inloox: {entity_set}
{options}
then:
  - notify: "json://hooks.example.test/team"
    title: changed
    body: "{{{{ event.key }}}}"
"""


def test_every_entity_set_is_polled_scanned_or_refused_with_a_reason():
    for name in load_metadata().entity_sets:
        how = observation(name)
        assert isinstance(how, (ChangeFeed, Scan)) or unobservable(name) is not None, name


@pytest.mark.parametrize("entity_set", ["Contact", "CheckList", "Portfolio", "Planning", "MindMap", "Calendar",
                                        "CustomField", "Client", "ValidLoginDomain", "UserInfo"])
def test_sets_without_a_change_time_are_scanned(entity_set):
    assert isinstance(observation(entity_set), Scan) and unobservable(entity_set) is None


@pytest.mark.parametrize("entity_set", ["Task", "TimeEntry", "Project", "Budget", "LineItem", "Document",
                                        "DynamicProject", "DynamicTaskItem", "DynamicTimeEntry"])
def test_sets_with_a_change_time_have_a_feed(entity_set):
    assert isinstance(observation(entity_set), ChangeFeed) and observation(entity_set) is change_feed(entity_set)


@pytest.mark.parametrize("rows, requests", [(0, 1), (1, 1), (100, 1), (101, 2), (250, 3), (100_000, 1000)])
def test_a_scan_costs_one_request_per_100_rows(rows, requests):
    assert scan_requests(rows) == requests


def test_a_dynamic_view_reads_the_change_times_of_the_tables_whose_columns_are_watched():
    feed = change_feed("DynamicTaskItem")
    assert [s.column for s in feed.stamps(["TaskItem_IsDone"])] == ["TaskItem_UpdatedAt"]
    assert [s.column for s in feed.stamps(["TaskItem_IsDone", "Planning_EndDateTime"])] == \
        ["TaskItem_UpdatedAt", "Planning_UpdatedAt"]
    assert [s.column for s in feed.stamps(None)] == \
        ["TaskItem_UpdatedAt", "Project_LastChangedDateTime", "Planning_UpdatedAt"]


@pytest.mark.parametrize("entity_set, options, line, words", [
    ("LicenseInfo", "", 4, ["not a collection", "watch UserLicense"]),
    ("Connection", "", 4, ["connection strings"]),
    ("UserInfo/Me()", "", 4, ["is an operation", "function Me of UserInfo", "inloox: UserInfo"]),
    ("Task/StartStopwatch", "", 4, ["is an operation", "inloox: Task", "inloox.action: StartStopwatch"]),
    ("DynamicProject", "    changes:\n      ProjectPermission_ProjectRead: {to: true}", 6,
     ["changes.ProjectPermission_ProjectRead", "no poll sees it", "start with Project_"]),
])
def test_rules_check_refuses_a_trigger_that_could_never_fire(tmp_path, entity_set, options, line, words):
    (tmp_path / "rule.yaml").write_text(RULE.format(entity_set=entity_set, options=options))
    app = Flask("changes-test")
    app.cli.add_command(rules_cli)

    result = app.test_cli_runner().invoke(args=["rules", "check", str(tmp_path)])

    assert result.exit_code == 1
    assert f"rule.yaml:{line}:" in result.output
    for word in words:
        assert word in result.output


@pytest.mark.parametrize("entity_set, options", [
    ("Contact", "    on: updated\n    changes:\n      Email: {changed: true}"),
    ("CheckList", "    on: created"),
    ("DynamicProject", "    changes:\n      Project_cf_2283e9e4_Budget: {changed: true}"),
    ("DynamicTaskItem", "    changes:\n      Planning_EndDateTime: {changed: true}"),
])
def test_rules_on_scanned_sets_and_dynamic_view_columns_load_and_are_watched(tmp_path, entity_set, options):
    (tmp_path / "rule.yaml").write_text(RULE.format(entity_set=entity_set, options=options))
    ruleset = load_rules(tmp_path)
    assert ruleset.errors == []
    assert entity_set in watched_sets(ruleset)


def test_scan_intervals_per_set_never_go_below_the_floor():
    default, per_set = parse_scan_seconds("120 Contact=30, Portfolio=5")
    settings = PollerSettings(scan_every=default, scan_every_set=per_set, scan_floor=10)
    assert [settings.scan_interval(s) for s in ("Client", "Contact", "Portfolio")] == [120, 30, 10]
    assert PollerSettings().scan_interval("Contact") == 60


@pytest.mark.parametrize("text, words", [("soon", "'soon' is not seconds"),
                                         ("Contactt=30", "'Contactt' is not an entity set"),
                                         ("LicenseInfo=30", "'LicenseInfo' is not an entity set")])
def test_unreadable_scan_intervals_are_refused(text, words):
    with pytest.raises(ValueError, match=words):
        parse_scan_seconds(text)


@pytest.mark.parametrize("options, fields", [
    ("    changes:\n      IsDone: {to: true}\n      Name: {changed: true}", frozenset({"IsDone", "Name"})),
    ("    changes:\n      changed: [Name, EndDateTime]", frozenset({"Name", "EndDateTime"})),
    # "Name did not change" holds for an update of any other field: every field is watched.
    ("    changes:\n      Name: {changed: false}", None),
    # A new entity is one without a snapshot: no field needs keeping for it (its event reads it whole).
    ("    on: created", frozenset()),
    ("    on: [created, deleted]", None),
])
def test_the_poller_watches_every_field_a_trigger_reads(tmp_path, options, fields):
    (tmp_path / "rule.yaml").write_text(RULE.format(entity_set="Task", options=options))
    assert watched_sets(load_rules(tmp_path)) == {"Task": fields}


@pytest.mark.parametrize("row, problem", [
    ({"Key": "new-timeline"}, ""),  # FeatureFlagInfo's key is text, not a GUID: its scan reads every row
    ({"Key": "3fa85f64-5717-4562-b3fc-2c963f66afa6"}, ""),
    ({"Key": None}, "its key Key is missing"),
    ({"Key": True}, "its key Key is True, not text or a number"),
    ({"Key": {"id": 1}}, "its key Key is {'id': 1}, not text or a number"),
    (["Key"], "it is not an object but ['Key']"),
])
def test_a_row_of_a_set_keyed_by_text_is_read_and_a_key_that_is_not_a_value_is_refused(row, problem):
    assert observation("FeatureFlagInfo") == Scan("FeatureFlagInfo", ("Key",))
    assert load_metadata().entity_set("FeatureFlagInfo").property("Key").type == "Edm.String"
    assert row_problem(row, ("Key",)) == problem
