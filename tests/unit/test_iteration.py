"""for_each: the query is described in the plan, and each item gets its own plan and idempotency keys."""
import json
from datetime import datetime, timezone

import pytest

from engine import Event, load_texts, plan_rule, render_deferred
from engine.iteration import items, iterate, unkeyed

NOW = datetime(2025, 4, 1, 7, 0, tzinfo=timezone.utc)
ANN, BEN = "5e1f7c2a-aaaa-4c1e-9a57-7d0a3e2b9c11", "5e1f7c2a-bbbb-4c1e-9a57-7d0a3e2b9c12"
ROWS = [{"TaskItemId": "t1", "Name": "Spec", "ContactId": ANN}, {"TaskItemId": "t2", "Name": "Budget", "ContactId": BEN},
        {"TaskItemId": "t3", "Name": "Review", "ContactId": ANN}, {"TaskItemId": "t4", "Name": "Nobody's", "ContactId": None}]
EVENT = Event("manual", "r", NOW, id="manual:r:1")


def load(for_each: dict, then=None):
    rule = {"id": "r", "when": [{"manual": True}], "for_each": for_each,
            "then": then or [{"notify": "json://x", "body": "{{ item.Name }}"}]}
    return load_texts([("r.yaml", json.dumps(rule))])


def plan(for_each: dict, then=None):
    ruleset = load(for_each, then)
    assert not ruleset.errors, ruleset.errors[0].format()
    return plan_rule(EVENT, ruleset.rules["r"], now=NOW, env={})


def test_the_plan_describes_the_query_and_adds_the_key_and_group_fields_to_select():
    p = plan({"inloox.query": "Task", "filter": "EndDateTime lt {{ now | odata }}", "select": ["Name"],
              "group_by": "ContactId"}, then=[{"notify": "json://x", "body": "{{ item.entities | length }}"}])
    assert p.for_each == {"query": {"entity_set": "Task", "filter": "EndDateTime lt 2025-04-01T07:00:00Z",
                                    "select": ["Name", "TaskItemId", "ContactId"]},
                          "group_by": "ContactId", "key": "TaskItemId"}
    assert p.operations[0].params is None  # it reads `item`: rendered per item by the worker


def test_each_entity_is_an_item_with_its_own_idempotency_keys():
    p = plan({"inloox.query": "Task"})
    per_item = iterate(p, ROWS[:2])
    assert [i.item_key for i in per_item] == ["t1", "t2"]
    assert [render_deferred(i, i.operations[0], {}, env={}).params["text"] for i in per_item] == ["Spec", "Budget"]
    keys = [i.operations[0].idempotency_key for i in per_item]
    assert len(set(keys + [p.operations[0].idempotency_key])) == 3
    assert keys == [i.operations[0].idempotency_key for i in iterate(p, ROWS[:2])]  # deterministic
    assert all(i.for_each is None and i.rate_limit is None for i in per_item)


def test_group_by_gives_one_item_per_value_in_order_of_first_appearance():
    grouped = items(ROWS, {"group_by": "ContactId", "key": "TaskItemId"})
    assert [(key, [e["Name"] for e in item["entities"]]) for key, item in grouped] == \
        [(ANN, ["Spec", "Review"]), (BEN, ["Budget"]), ("null", ["Nobody's"])]
    assert grouped[0][1]["key"] == ANN and grouped[2][1]["key"] is None


@pytest.mark.parametrize("for_each, then, message", [
    ({"inloox.query": "Task", "group_by": "Assignee"}, None, "Task has no field 'Assignee'"),
    ({"inloox.query": "Task", "filter": "Name eq '{{ now }}'"}, None, "is not written as an OData literal"),
    ({"inloox.query": "Tsk"}, None, "unknown entity set 'Tsk'"),
    ({"inloox.query": "Task"}, [{"notify": "x", "body": "{{ item.Nme }}"}], "Task has no field 'Nme'"),
    ({"inloox.query": "Task", "filter": "Name eq {{ item.Name | odata }}"}, None, "unknown name 'item'"),
])
def test_for_each_is_checked_when_the_rule_loads(for_each, then, message):
    [error] = load(for_each, then).errors
    assert message in error.message


def test_the_rules_if_cannot_read_item():
    rule = {"id": "r", "when": [{"manual": True}], "for_each": {"inloox.query": "Task"},
            "if": {"path": "item.Name", "op": "exists"}, "then": [{"notify": "x", "body": "y"}]}
    [error] = load_texts([("r.yaml", json.dumps(rule))]).errors
    assert "unknown name 'item'" in error.message


@pytest.mark.parametrize("row, problem", [
    ({"Name": "Spec"}, "row 2 of the answer has no key TaskItemId: {'Name': 'Spec'}"),
    ({"TaskItemId": None, "Name": "Spec"}, "row 2 of the answer has no key TaskItemId"),
    ({"TaskItemId": {"id": 1}}, "row 2 of the answer has TaskItemId {'id': 1}, not text or a number"),
])
def test_a_row_without_its_key_can_be_no_item_unless_grouped(row, problem):
    spec = {"key": "TaskItemId", "group_by": None}
    assert unkeyed(ROWS[:1], spec) == ""
    assert unkeyed([ROWS[0], row], spec).startswith(problem)
    assert unkeyed([ROWS[0], row], {**spec, "group_by": "ContactId"}) == ""  # a group needs no key
