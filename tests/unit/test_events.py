"""Events: validation, JSON round trip, content ids and entity names."""
from datetime import datetime, timezone

import pytest

from engine import Event
from engine.events import entity_name

NOW = datetime(2025, 4, 1, tzinfo=timezone.utc)


def test_round_trip_through_dict():
    event = Event("inloox", "updated", NOW, id="e1", entity_set="Task", key="k",
                  changes={"IsDone": (False, True)}, entity={"Name": "x"}, actor={"ContactId": "c"})
    assert Event.from_dict(event.to_dict()) == event


def test_changes_accept_from_to_mappings():
    event = Event.from_dict({"source": "inloox", "kind": "updated", "occurred_at": "2025-04-01T00:00:00Z",
                             "changes": {"IsDone": {"from": False, "to": True}}})
    assert event.changes == {"IsDone": (False, True)}


def test_id_is_derived_from_content_when_missing():
    a = Event("webhook", "h", NOW, payload={"body": {"n": 1}})
    assert a.id.startswith("ev_") and a.id == Event("webhook", "h", NOW, payload={"body": {"n": 1}}).id
    assert a.id != Event("webhook", "h", NOW, payload={"body": {"n": 2}}).id


@pytest.mark.parametrize("kwargs,message", [
    ({"source": "email"}, "unknown event source"),
    ({"occurred_at": datetime(2025, 4, 1)}, "timezone-aware"),
])
def test_invalid_events_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Event(**{"source": "webhook", "kind": "h", "occurred_at": NOW, **kwargs})


@pytest.mark.parametrize("entity_set,name", [
    ("Task", "task"), ("TimeEntry", "time_entry"), ("Project", "project"), ("DynamicTaskItem", "dynamic_task_item"),
    ("UserInfo", "user_info"),
])
def test_entity_name(entity_set, name):
    assert entity_name(entity_set) == name
