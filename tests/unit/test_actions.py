"""Actions: each kind compiles to one primitive verb with the params the worker executes."""
import json
from datetime import datetime, timezone

import pytest

from engine import Event, evaluate, load_texts
from engine.actions import ACTIONS, VERBS

NOW = datetime(2025, 4, 1, 10, 0, tzinfo=timezone.utc)
G = "3fa85f64-5717-4562-b3fc-2c963f66afa6"

CASES = [
    ({"inloox.create": "Task", "values": {"Name": "n", "WorkAmount": 2}},
     "create", {"entity_set": "Task", "values": {"Name": "n", "WorkAmount": 2}}),
    ({"inloox.create": "TimeEntry", "values": {"ProjectId": "{{ task.ProjectId }}",
                                               "StartDateTime": "{{ (now - hours(task.WorkAmount)) | isoformat }}"}},
     "create", {"entity_set": "TimeEntry", "values": {"ProjectId": "p", "StartDateTime": "2025-04-01T08:00:00Z"}}),
    ({"inloox.update": "Task", "values": {"IsDone": True}}, "update",
     {"entity_set": "Task", "key": G, "values": {"IsDone": True}}),
    ({"inloox.update": "Task", "values": {"WorkAmount": "{{ task.WorkAmount + 1 }}"}}, "update",
     {"entity_set": "Task", "key": G, "values": {"WorkAmount": 3}}),
    ({"inloox.delete": "Task"}, "delete", {"entity_set": "Task", "key": G}),
    ({"inloox.delete": "TimeEntry", "key": "{{ task.ProjectId }}"}, "delete", {"entity_set": "TimeEntry", "key": "p"}),
    ({"inloox.get": "Project", "key": "{{ task.ProjectId }}"}, "get", {"entity_set": "Project", "key": "p"}),
    ({"inloox.query": "TimeEntry", "filter": "TaskItemId eq {{ event.key | odata }}", "select": ["DurationMinutes"],
      "top": 5},
     "query", {"entity_set": "TimeEntry", "filter": f"TaskItemId eq {G}", "select": ["DurationMinutes"], "top": 5}),
    ({"inloox.query": "Task", "filter": "Name eq {{ task.Name | odata }}", "orderby": "Name desc"},
     "query", {"entity_set": "Task", "filter": "Name eq 'O''T'", "orderby": "Name desc"}),
    ({"inloox.action": "StopStopwatch"}, "invoke",
     {"entity_set": "Task", "key": G, "operation": "StopStopwatch", "method": "POST", "parameters": {}}),
    ({"inloox.action": "Default.GetStopwatch"}, "invoke",
     {"entity_set": "Task", "key": G, "operation": "GetStopwatch", "method": "GET", "parameters": {}}),
    ({"inloox.action": "AddNote", "parameters": {"htmlText": "<p>x</p>", "notificationContactIds": ["c1"]}}, "invoke",
     {"entity_set": "Task", "key": G, "operation": "AddNote", "method": "POST",
      "parameters": {"htmlText": "<p>x</p>", "notificationContactIds": ["c1"]}}),
    ({"inloox.action": "AddNote", "entity": "Project", "key": "{{ task.ProjectId }}", "parameters": {"htmlText": "n"}},
     "invoke", {"entity_set": "Project", "key": "p", "operation": "AddNote", "method": "POST",
                "parameters": {"htmlText": "n"}}),
    ({"notify": "https://hooks.test", "title": "Done: {{ task.Name }}", "body": "{{ task.Name }} done"}, "notify",
     {"url": "https://hooks.test", "title": "Done: O'T", "text": "O'T done"}),
    ({"notify": "https://hooks.test", "body": "b"}, "notify", {"url": "https://hooks.test", "title": "", "text": "b"}),
    ({"http": "https://x.test", "body": {"n": "{{ task.Name }}"}}, "http",
     {"method": "POST", "url": "https://x.test", "headers": {}, "body": {"n": "O'T"}}),
    ({"http": "https://x.test", "method": "GET", "headers": {"X-A": "1"}}, "http",
     {"method": "GET", "url": "https://x.test", "headers": {"X-A": "1"}, "body": None}),
]


@pytest.mark.parametrize("step,verb,params", CASES, ids=[next(iter(c[0])) + str(i) for i, c in enumerate(CASES)])
def test_action_compiles_to_operation(step, verb, params):
    rule = {"id": "r", "when": [{"inloox": "Task"}], "then": [step]}
    ruleset = load_texts([("r.yaml", json.dumps(rule))])
    assert not ruleset.errors, ruleset.errors[0].format()
    event = Event("inloox", "updated", NOW, entity_set="Task", key=G,
                  entity={"ProjectId": "p", "Name": "O'T", "WorkAmount": 2})
    (op,) = evaluate(event, ruleset, now=NOW, env={})[0].operations
    assert (op.verb, op.params) == (verb, params)


def test_every_action_maps_to_a_known_verb_and_is_described():
    assert {a.verb for a in ACTIONS.values()} == set(VERBS)
    assert all(a.explanation and a.schema["description"] for a in ACTIONS.values())


def test_a_value_that_fails_to_render_is_reported_with_the_step():
    rule = {"id": "r", "when": [{"manual": True}],
            "then": [{"inloox.create": "TimeEntry", "values": {"StartDateTime": "{{ input.when | isoformat }}"}}]}
    ruleset = load_texts([("r.yaml", json.dumps(rule))])
    (plan,) = evaluate(Event("manual", "r", NOW, payload={"when": "yesterday"}), ruleset, now=NOW, env={})
    assert plan.error == ("rule r step 0 (step0): isoformat wants a date-time, got 'yesterday' "
                          "in '{{ input.when | isoformat }}'")
