"""How the event log names an event's entity (workers/event_history.py `event_name`)."""
from __future__ import annotations

import pytest

from workers.event_history import NAME_MAX, event_name

GUID = "21af397a-96a6-4dfe-9118-6d65291aca77"


@pytest.mark.parametrize(("event", "name"), [
    ({"entity": {"TaskItemId": GUID, "Name": "Write report"}}, "Write report"),
    ({"entity": {"TimeEntryId": GUID, "DisplayName": "Review"}}, "Review"),
    ({"entity": {"TaskItem_Name": "Call Bo", "Project_Name": "Relaunch"}}, "Call Bo"),  # a Dynamic view's row
    ({"entity": {}, "changes": {"Name": ["Old name", None]}}, "Old name"),  # deleted: its name before
    ({"entity": {"Name": "  "}, "changes": {"Name": ["Old", "New"]}}, "New"),
    ({"payload": {"body": {"title": "Call Ann", "project": GUID}}}, "Call Ann"),
    ({"payload": {"body": {"Subject": "Line one\nline two"}}}, "Line one line two"),
    ({"payload": {"body": ["not", "an", "object"]}}, None),
    ({"payload": {"body": {"title": 42}}}, None),
    ({"entity": {"TaskItemId": GUID}}, None),
    ({}, None),
])
def test_an_event_is_named_by_its_entity_its_changes_or_its_webhook_body(event, name):
    assert event_name(event) == name


def test_a_long_name_is_cut_with_an_ellipsis():
    named = event_name({"entity": {"Name": "x" * 500}})
    assert len(named) == NAME_MAX and named.endswith("…")
