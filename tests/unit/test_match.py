"""The rule index: an event only reaches rules whose trigger could match it."""
import json
from datetime import datetime, timezone

from engine import Event, load_texts, match_event

NOW = datetime(2025, 4, 1, tzinfo=timezone.utc)
THEN = [{"notify": "u", "body": "t"}]
RULES = {
    "done": {"inloox": "Task", "on": "updated", "changes": {"IsDone": {"to": True}}},
    "any-task": {"inloox": "Task"},
    "project-created": {"inloox": "Project", "on": ["created"]},
    "hook": {"webhook": "orders"},
    "cmd": {"chat": "log"},
    "daily": {"schedule": "0 9 * * *"},
    "by-hand": {"manual": True},
    "either": [{"inloox": "Project", "on": "deleted"}, {"webhook": "orders"}],
}


def ruleset():
    text = "\n---\n".join(json.dumps({"id": rid, "when": t, "then": THEN}) for rid, t in RULES.items())
    return load_texts([("r.yaml", text)])


def candidates(event):
    return [r.id for r in ruleset().index.candidates(event)]


def test_task_update_reaches_only_task_rules_with_that_field():
    event = Event("inloox", "updated", NOW, entity_set="Task", key="k", changes={"IsDone": (False, True)})
    assert candidates(event) == ["done", "any-task"]
    other = Event("inloox", "updated", NOW, entity_set="Task", key="k", changes={"Name": ("a", "b")})
    assert candidates(other) == ["any-task"]


def test_entity_set_and_kind_narrow_the_candidates():
    assert candidates(Event("inloox", "created", NOW, entity_set="Project", key="k")) == ["project-created"]
    assert candidates(Event("inloox", "updated", NOW, entity_set="Project", key="k")) == []
    assert candidates(Event("inloox", "created", NOW, entity_set="TimeEntry", key="k")) == []


def test_named_sources_match_by_name_or_rule_id():
    assert candidates(Event("webhook", "orders", NOW)) == ["hook", "either"]
    assert candidates(Event("inloox", "deleted", NOW, entity_set="Project", key="k")) == ["either"]
    assert candidates(Event("webhook", "other", NOW)) == []
    assert candidates(Event("chat", "log", NOW)) == ["cmd"]
    assert candidates(Event("schedule", "daily", NOW)) == ["daily"]
    assert candidates(Event("manual", "by-hand", NOW)) == ["by-hand"]
    assert candidates(Event("manual", "daily", NOW)) == []


def test_match_event_reports_each_candidate():
    event = Event("inloox", "updated", NOW, entity_set="Task", key="k", changes={"IsDone": (True, False)})
    matches = match_event(event, ruleset(), now=NOW, env={})
    assert [(m.rule.id, m.matched) for m in matches] == [("done", False), ("any-task", True)]
