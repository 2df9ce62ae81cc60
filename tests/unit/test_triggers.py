"""Triggers: entity events and field changes, named hooks and commands, schedules, manual runs."""
import json
from datetime import datetime, timezone

import pytest

from engine import Event, load_texts
from engine.match import match_rule
from engine.triggers import next_fire

NOW = datetime(2025, 4, 1, 12, 0, tzinfo=timezone.utc)
DO = [{"notify": {"url": "u", "text": "t"}}]


def rule_with(trigger, **extra):
    ruleset = load_texts([("r.yaml", json.dumps({"id": "r", "trigger": trigger, "do": DO, **extra}))])
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
]


@pytest.mark.parametrize("changes,event_changes,holds", CHANGE_CASES)
def test_changes(changes, event_changes, holds):
    rule = rule_with({"inloox": "Task", "changes": changes})
    event = task_event(changes=event_changes)
    assert (match_rule(event, rule, now=NOW, env={}).reason is None) == holds


def test_change_reason_says_what_happened():
    rule = rule_with({"inloox": "Task", "changes": {"IsDone": {"to": True}}})
    assert match_rule(task_event(changes={"IsDone": (True, False)}), rule, now=NOW, env={}).reason == \
        "trigger.changes.IsDone: went True → False, wanted to True"


def test_on_limits_entity_events():
    rule = rule_with({"inloox": "Task", "on": ["created"]})
    assert match_rule(task_event("created"), rule, now=NOW, env={}).matched
    assert match_rule(task_event("deleted"), rule, now=NOW, env={}).reason == \
        "trigger: deleted is not one of created"


def test_hold_is_carried_on_the_match():
    rule = rule_with({"inloox": "Task", "for": "10m"})
    match = match_rule(task_event(), rule, now=NOW, env={})
    assert match.matched and match.hold.total_seconds() == 600
    assert "held for 10m" in rule.trigger.summary


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
    rule = rule_with(trigger, **{"if": {f"{root}.x": 1}})
    source = next(iter(trigger))
    kind = "r" if source in ("manual", "schedule") else trigger[source]
    assert match_rule(Event(source, kind, NOW, payload={"x": 1}), rule, now=NOW, env={}).matched


def test_schedule_next_fire_reads_cron_in_its_time_zone():
    rule = rule_with({"schedule": "0 9 * * 1-5", "timezone": "Europe/Berlin"})
    fire = next_fire(rule.trigger, NOW)  # Tuesday 12:00 UTC = 14:00 in Berlin
    assert fire.isoformat() == "2025-04-02T09:00:00+02:00"


def test_ruleset_lists_enabled_schedules_for_the_scheduler():
    rules = [{"id": "a", "trigger": {"schedule": "0 9 * * *"}, "do": DO},
             {"id": "b", "trigger": {"schedule": "0 9 * * *"}, "enabled": False, "do": DO},
             {"id": "c", "trigger": {"manual": True}, "do": DO}]
    ruleset = load_texts([("r.yaml", "\n---\n".join(json.dumps(r) for r in rules))])
    assert [(r.id, r.trigger.cron, r.trigger.timezone) for r in ruleset.schedules()] == [("a", "0 9 * * *", "UTC")]
