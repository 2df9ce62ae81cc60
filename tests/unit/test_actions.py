"""Actions: each kind compiles to one primitive verb with the params the worker executes."""
import json
from datetime import datetime, timezone

import pytest

from engine import Event, evaluate, load_texts
from engine.actions import ACTIONS, VERBS

NOW = datetime(2025, 4, 1, 10, 0, tzinfo=timezone.utc)
G = "3fa85f64-5717-4562-b3fc-2c963f66afa6"

CASES = [
    ({"create": {"entity": "Task", "values": {"Name": "n", "WorkAmount": 2}}},
     "create", {"entity_set": "Task", "values": {"Name": "n", "WorkAmount": 2}}),
    ({"update": {"values": {"IsDone": True}}}, "update", {"entity_set": "Task", "key": G, "values": {"IsDone": True}}),
    ({"delete": {}}, "delete", {"entity_set": "Task", "key": G}),
    ({"delete": {"entity": "TimeEntry", "key": "{{ task.ProjectId }}"}}, "delete", {"entity_set": "TimeEntry", "key": "p"}),
    ({"get": {"entity": "Project", "key": "{{ task.ProjectId }}"}}, "get", {"entity_set": "Project", "key": "p"}),
    ({"query": {"entity": "TimeEntry", "filter": "TaskItemId eq {{ event.key }}", "select": ["DurationMinutes"], "top": 5}},
     "query", {"entity_set": "TimeEntry", "filter": f"TaskItemId eq {G}", "select": ["DurationMinutes"], "top": 5}),
    ({"invoke": {"operation": "StopStopwatch"}}, "invoke",
     {"entity_set": "Task", "key": G, "operation": "StopStopwatch", "method": "POST", "parameters": {}}),
    ({"invoke": {"operation": "Default.GetStopwatch"}}, "invoke",
     {"entity_set": "Task", "key": G, "operation": "GetStopwatch", "method": "GET", "parameters": {}}),
    ({"notify": {"url": "https://hooks.test", "text": "{{ task.Name }} done"}}, "notify",
     {"url": "https://hooks.test", "text": "T done"}),
    ({"http": {"method": "POST", "url": "https://x.test", "body": {"n": "{{ task.Name }}"}}}, "http",
     {"method": "POST", "url": "https://x.test", "headers": {}, "body": {"n": "T"}}),
    ({"set_field": {"field": "WorkAmount", "value": "{{ task.WorkAmount + 1 }}"}}, "update",
     {"entity_set": "Task", "key": G, "values": {"WorkAmount": 3}}),
    ({"log_time_entry": {"project": "p", "task": "{{ event.key }}", "start": "2025-04-01T08:00:00Z", "minutes": 45,
                         "billable": True, "description": "d"}}, "create",
     {"entity_set": "TimeEntry", "values": {"ProjectId": "p", "StartDateTime": "2025-04-01T08:00:00Z",
                                            "EndDateTime": "2025-04-01T08:45:00Z", "TaskItemId": G,
                                            "DescriptionText": "d", "IsBillable": True}}),
    ({"add_note": {"html": "<p>x</p>", "notify": ["c1"]}}, "invoke",
     {"entity_set": "Task", "key": G, "operation": "AddNote", "method": "POST",
      "parameters": {"htmlText": "<p>x</p>", "notificationContactIds": ["c1"]}}),
]


@pytest.mark.parametrize("step,verb,params", CASES, ids=[next(iter(c[0])) + str(i) for i, c in enumerate(CASES)])
def test_action_compiles_to_operation(step, verb, params):
    rule = {"id": "r", "trigger": {"inloox": "Task"}, "do": [step]}
    ruleset = load_texts([("r.yaml", json.dumps(rule))])
    assert not ruleset.errors, ruleset.errors[0].format()
    event = Event("inloox", "updated", NOW, entity_set="Task", key=G,
                  entity={"ProjectId": "p", "Name": "T", "WorkAmount": 2})
    (op,) = evaluate(event, ruleset, now=NOW, env={})[0].operations
    assert (op.verb, op.params) == (verb, params)


def test_every_action_maps_to_a_known_verb_and_is_described():
    assert {a.verb for a in ACTIONS.values()} == set(VERBS)
    assert all(a.explanation and a.schema["description"] for a in ACTIONS.values())


def test_bad_rendered_start_is_reported_with_the_step():
    rule = {"id": "r", "trigger": {"manual": True},
            "do": [{"log_time_entry": {"project": "p", "start": "{{ input.when }}", "minutes": 5}}]}
    ruleset = load_texts([("r.yaml", json.dumps(rule))])
    (plan,) = evaluate(Event("manual", "r", NOW, payload={"when": "yesterday"}), ruleset, now=NOW, env={})
    assert plan.error == "rule r step 0 (step0): log_time_entry: start 'yesterday' is not an ISO date-time"
