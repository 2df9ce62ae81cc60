"""Triggers: entity events and field changes, named hooks and commands, schedules, manual runs."""
import json
from datetime import datetime, timezone

import pytest

from engine import Event, load_texts
from engine.match import match_rule
from engine.triggers import next_fire

NOW = datetime(2025, 4, 1, 12, 0, tzinfo=timezone.utc)
THEN = [{"notify": "u", "body": "t"}]


def rule_with(trigger, **extra):
    """A rule with one trigger (a mapping) or several (a list)."""
    ruleset = load_texts([("r.yaml", json.dumps({"id": "r", "when": trigger, "then": THEN, **extra}))])
    assert not ruleset.errors, ruleset.errors[0].format()
    return ruleset.rules["r"]


def task_event(kind="updated", changes=None, **kw):
    return Event("inloox", kind, NOW, entity_set="Task", key="k", changes=changes or {}, **kw)


CHANGE_CASES = [
    ({"IsDone": {"to": True}}, {"IsDone": (False, True)}, True),
    ({"IsDone": {"to": True}}, {"IsDone": (True, False)}, False),
    ({"IsDone": {"from": False, "to": True}}, {"IsDone": (None, True)}, False),
    ({"IsDone": {"not_to": True}}, {"IsDone": (True, False)}, True),
    ({"IsDone": {"not_from": None}}, {"IsDone": (None, True)}, False),
    ({"Name": {"changed": True}}, {"Name": ("a", "b")}, True),
    ({"Name": {}}, {"WorkAmount": (1, 2)}, False),
    ({"Name": {"changed": False}, "WorkAmount": {}}, {"WorkAmount": (1, 2)}, True),
    ({"Name": {"changed": False}, "WorkAmount": {}}, {"WorkAmount": (1, 2), "Name": ("a", "b")}, False),
    ({"WorkAmount": {"to": 2}}, {"WorkAmount": (1, 2.0)}, True),
    ({"ProjectId": {"to": "3fa85f64-5717-4562-b3fc-2c963f66afa6"}},
     {"ProjectId": (None, "3FA85F64-5717-4562-B3FC-2C963F66AFA6")}, True),
    ({"WorkAmount": {"to": [2, 3]}}, {"WorkAmount": (1, 3)}, True),
    ({"WorkAmount": {"not_to": [2, 3]}}, {"WorkAmount": (1, 3)}, False),
]


@pytest.mark.parametrize("changes,event_changes,holds", CHANGE_CASES)
def test_changes(changes, event_changes, holds):
    rule = rule_with({"inloox": "Task", "changes": changes})
    event = task_event(changes=event_changes)
    assert (match_rule(event, rule, now=NOW, env={}).reason is None) == holds


@pytest.mark.parametrize("spec,change,holds", [
    ({"from": 1}, (True, False), False), ({"to": 0}, (True, False), False), ({"to": [0, 1]}, (False, True), False),
    ({"not_to": 1}, (False, True), True), ({"not_from": 0}, (False, True), True), ({"to": True}, (0, 1), False),
    ({"to": True}, (False, True), True), ({"to": 1}, (0, 1.0), True),
])
def test_true_and_false_are_not_numbers_in_changes(spec, change, holds):
    """A custom field's type is not in `$metadata` (DynamicProject is an open type), so no check at load
    refuses `from: 1`: Python's `True == 1` made it meet a checkbox going true → false, where
    conditions (and JSON) hold a boolean and a number unlike."""
    rule = rule_with({"inloox": "DynamicProject", "changes": {"Project_cf_2283e9e4_Approved": spec}})
    event = Event("inloox", "updated", NOW, entity_set="DynamicProject", key="k",
                  changes={"Project_cf_2283e9e4_Approved": change})
    assert (match_rule(event, rule, now=NOW, env={}).reason is None) == holds


def test_change_reason_says_what_happened():
    rule = rule_with({"inloox": "Task", "changes": {"IsDone": {"to": True}}})
    assert match_rule(task_event(changes={"IsDone": (True, False)}), rule, now=NOW, env={}).reason == \
        "when.changes.IsDone: went True → False, wanted to True"


def test_on_limits_entity_events():
    rule = rule_with([{"inloox": "Task", "on": "created"}])
    assert match_rule(task_event("created"), rule, now=NOW, env={}).matched
    assert match_rule(task_event("deleted"), rule, now=NOW, env={}).reason == \
        "when[0]: deleted is not one of created"
    both = rule_with({"inloox": "Task", "on": ["created", "deleted"]})
    assert match_rule(task_event("deleted"), both, now=NOW, env={}).matched


def test_any_of_several_triggers_starts_the_rule():
    rule = rule_with([{"inloox": "Task", "on": "created"}, {"manual": True}])
    assert match_rule(task_event("created"), rule, now=NOW, env={}).matched
    assert match_rule(Event("manual", "r", NOW), rule, now=NOW, env={}).matched
    assert match_rule(task_event("deleted"), rule, now=NOW, env={}).reason == (
        "when: no trigger matched (when[0]: deleted is not one of created; "
        "when[1]: wanted a manual run of this rule)")
    assert rule.summary == "Task created | manual run"


def test_hold_is_carried_on_the_match():
    rule = rule_with({"inloox": "Task", "for": "10m"})
    match = match_rule(task_event(), rule, now=NOW, env={})
    assert match.matched and match.hold.total_seconds() == 600
    assert "held for 10m" in rule.summary


def test_chained_events_need_allow_chained():
    event = task_event(chained=True)
    assert "allow_chained" in match_rule(event, rule_with({"inloox": "Task"}), now=NOW, env={}).reason
    assert match_rule(event, rule_with({"inloox": "Task"}, allow_chained=True), now=NOW, env={}).matched


def test_disabled_rule_never_matches():
    assert match_rule(task_event(), rule_with({"inloox": "Task"}, enabled=False), now=NOW, env={}).reason == \
        "rule is disabled"


@pytest.mark.parametrize("trigger,root", [
    ({"webhook": "orders"}, "webhook"), ({"chat": "log"}, "chat"), ({"manual": True}, "input"),
    ({"schedule": "*/5 * * * *"}, "schedule"),
])
def test_named_triggers_expose_their_payload(trigger, root):
    rule = rule_with(trigger, **{"if": {"path": f"{root}.x", "op": "eq", "value": 1}})
    source = next(iter(trigger))
    kind = "r" if source in ("manual", "schedule") else trigger[source]
    assert match_rule(Event(source, kind, NOW, payload={"x": 1}), rule, now=NOW, env={}).matched


@pytest.mark.parametrize("pattern,text,args", [
    ("done <task>", "Write the spec", {"task": "Write the spec"}),
    ("done <task>", "", None),
    ("log <hours:number> <task>", "1.5 Write it", {"hours": 1.5, "task": "Write it"}),
    ("log <hours:number> <task>", "lots Write it", None),
    ("log <hours:number> <task>", "1" * 5000 + " Write it", None),        # int() refuses over 4,300 digits
    ("log <hours:number> <task>", "1" * 400 + ".5 Write it", None),       # float() makes it infinity
    ("log <hours:number> <task>", "-" + "9" * 309 + " Write it", None),   # beyond what a float (or JSON) holds
    ("move <task> to <column>", "spec to Review board", {"task": "spec", "column": "Review board"}),
    ("ping", "", {}),
])
def test_chat_patterns_give_arguments(pattern, text, args):
    rule = rule_with({"chat": pattern})
    event = Event("chat", pattern.split()[0], NOW, payload={"text": text})
    match = match_rule(event, rule, now=NOW, env={})
    assert match.matched == (args is not None), match.reason
    if args is not None:
        assert match.trigger.bind(event)["chat"]["args"] == args


def test_schedule_next_fire_reads_cron_in_its_time_zone():
    rule = rule_with({"schedule": "0 9 * * 1-5", "timezone": "Europe/Berlin"})
    fire = next_fire(rule.triggers[0], NOW)  # Tuesday 12:00 UTC = 14:00 in Berlin
    assert fire.isoformat() == "2025-04-02T09:00:00+02:00"


def test_ruleset_lists_enabled_schedules_for_the_scheduler():
    rules = [{"id": "a", "when": [{"manual": True}, {"schedule": "0 9 * * *"}], "then": THEN},
             {"id": "b", "when": [{"schedule": "0 9 * * *"}], "enabled": False, "then": THEN},
             {"id": "c", "when": [{"manual": True}], "then": THEN}]
    ruleset = load_texts([("r.yaml", "\n---\n".join(json.dumps(r) for r in rules))])
    assert [(r.id, [(t.cron, t.timezone) for t in r.triggers if t.cron]) for r in ruleset.schedules()] == \
        [("a", [("0 9 * * *", "UTC")])]


@pytest.mark.parametrize("given, catch_up", [({}, "skip"), ({"catch_up": "latest"}, "latest")])
def test_schedule_catch_up_defaults_to_skip(given, catch_up):
    assert rule_with({"schedule": "0 9 * * *", **given}).triggers[0].catch_up == catch_up


@pytest.mark.parametrize("event_changes,holds", [
    ({"Name": ("a", "b")}, True), ({"WorkAmount": (1, 2)}, True), ({"IsDone": (False, True)}, False),
])
def test_changed_lists_fields_of_which_any_may_change(event_changes, holds):
    rule = rule_with({"inloox": "Task", "changes": {"changed": ["Name", "WorkAmount"]}})
    match = match_rule(task_event(changes=event_changes), rule, now=NOW, env={})
    assert match.matched == holds
    assert holds or match.reason == "when.changes.changed: none of Name, WorkAmount changed"
    assert {k[3] for k in rule.triggers[0].index_keys} == {"Name", "WorkAmount"}
