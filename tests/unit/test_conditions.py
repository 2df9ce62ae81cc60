"""Conditions: every operator, nesting, expr, and the reasons a failing check gives."""
import json
from datetime import datetime, timezone

import pytest

from engine import Event, load_texts
from engine.match import match_rule

NOW = datetime(2025, 4, 1, 12, 0, tzinfo=timezone.utc)


def compile_rule(condition, trigger=None):
    trigger = trigger or {"webhook": "hook"}
    rule = {"id": "r", "trigger": trigger, "if": condition, "do": [{"notify": {"url": "u", "text": "t"}}]}
    ruleset = load_texts([("r.yaml", json.dumps(rule))])
    assert not ruleset.errors, ruleset.errors[0].format()
    return ruleset.rules["r"]


def reason(condition, body, trigger=None):
    """None when the condition holds for a webhook body, else the reason."""
    event = Event("webhook", "hook", NOW, payload={"body": body})
    return match_rule(event, compile_rule(condition, trigger), now=NOW, env={}).reason


OPERATOR_CASES = [
    ({"eq": 3}, 3, True), ({"eq": 3}, 4, False), ({"ne": "a"}, "b", True), ({"ne": "a"}, "a", False),
    ({"lt": 5}, 4, True), ({"lt": 5}, 5, False), ({"le": 5}, 5, True), ({"le": 5}, 6, False),
    ({"gt": 0}, 0.5, True), ({"gt": 0}, 0, False), ({"ge": 1}, 1, True), ({"ge": 1}, 0, False),
    ({"gt": 1}, "text", False),  # unlike types never hold, never raise
    ({"in": ["a", "b"]}, "b", True), ({"in": ["a", "b"]}, "c", False),
    ({"not_in": ["a"]}, "b", True), ({"not_in": ["a"]}, "a", False),
    ({"contains": "ell"}, "hello", True), ({"contains": "x"}, "hello", False),
    ({"contains": 2}, [1, 2], True), ({"contains": 3}, [1, 2], False),
    ({"prefix": "he"}, "hello", True), ({"prefix": "lo"}, "hello", False),
    ({"suffix": "lo"}, "hello", True), ({"suffix": "he"}, "hello", False),
    ({"regex": r"^T-\d+$"}, "T-12", True), ({"regex": r"^T-\d+$"}, "T-x", False),
    ({"exists": True}, "x", True), ({"exists": True}, None, False), ({"exists": False}, None, True),
    ({"between": [1, 3]}, 3, True), ({"between": [1, 3]}, 4, False),
    ({"older_than": "2d"}, "2025-03-29T12:00:00Z", True), ({"older_than": "2d"}, "2025-03-31T12:00:00Z", False),
    ({"newer_than": "1h"}, "2025-04-01T11:30:00Z", True), ({"newer_than": "1h"}, "2025-04-01T10:00:00Z", False),
    ({"eq": "ABC", "ignore_case": True}, "abc", True), ({"eq": "ABC"}, "abc", False),
    ({"in": ["Open"], "ignore_case": True}, "OPEN", True),
    ({"prefix": "URG", "ignore_case": True}, "urgent", True),
    ({"regex": "^urg", "ignore_case": True}, "URGENT", True),
    ({"gt": 0, "lt": 10}, 5, True), ({"gt": 0, "lt": 10}, 10, False),
]


@pytest.mark.parametrize("test,value,holds", OPERATOR_CASES, ids=[f"{t}-{v}" for t, v, _ in OPERATOR_CASES])
def test_operator(test, value, holds):
    assert (reason({"webhook.body.v": test}, {"v": value}) is None) == holds


def test_bare_value_means_eq():
    assert reason({"webhook.body.v": "x"}, {"v": "x"}) is None
    assert reason({"webhook.body.v": "x"}, {"v": "y"}) == "if: webhook.body.v was 'y', wanted eq 'x'"


def test_missing_value_fails_with_reason_except_exists():
    assert reason({"webhook.body.v": {"gt": 0}}, {}) == "if: webhook.body.v was missing, wanted gt 0"
    assert reason({"webhook.body.v": {"exists": False}}, {}) is None


def test_reason_names_the_path_to_the_failing_clause():
    condition = {"all": [{"webhook.body.a": 1}, {"webhook.body.b": {"gt": 0}}]}
    assert reason(condition, {"a": 1, "b": 0}) == "if.all[1]: webhook.body.b was 0, wanted gt 0"


def test_any_lists_every_reason():
    condition = {"any": [{"webhook.body.a": 1}, {"webhook.body.b": 2}]}
    assert reason(condition, {"a": 1, "b": 0}) is None
    assert reason(condition, {"a": 0, "b": 0}) == (
        "if.any: none held (if.any[0]: webhook.body.a was 0, wanted eq 1; "
        "if.any[1]: webhook.body.b was 0, wanted eq 2)")


def test_not_inverts_and_nests():
    condition = {"not": {"any": [{"webhook.body.a": 1}, {"webhook.body.b": 1}]}}
    assert reason(condition, {"a": 0, "b": 0}) is None
    assert reason(condition, {"a": 1}) == "if.not: held, wanted it not to"


def test_list_means_all():
    assert reason([{"webhook.body.a": 1}, {"webhook.body.b": 1}], {"a": 1, "b": 2}) == \
        "if[1]: webhook.body.b was 2, wanted eq 1"


@pytest.mark.parametrize("expr,holds", [
    ("{{ webhook.body.n > 2 }}", True), ("{{ webhook.body.n > 5 }}", False),
    ("{% if webhook.body.n %}yes{% endif %}", True), ("{{ now.year == 2025 }}", True),
])
def test_expr_uses_the_sandbox(expr, holds):
    assert (reason({"expr": expr}, {"n": 3}) is None) == holds


def test_expr_with_undefined_variable_fails_with_its_name():
    assert reason({"expr": "{{ webhook.body.missing > 1 }}"}, {}) == \
        "if.expr: webhook.body.missing is undefined in '{{ webhook.body.missing > 1 }}'"


def test_list_items_are_reachable_by_index():
    assert reason({"webhook.body.items.1.name": "b"}, {"items": [{"name": "a"}, {"name": "b"}]}) is None


TASK = {"inloox": "Task"}


def task_reason(condition, entity, changes=None):
    event = Event("inloox", "updated", NOW, entity_set="Task", key="k", entity=entity, changes=changes or {})
    return match_rule(event, compile_rule(condition, TASK), now=NOW, env={}).reason


def test_typed_fields_coerce_guids_and_datetimes():
    guid = "3FA85F64-5717-4562-B3FC-2C963F66AFA6"
    assert task_reason({"task.ProjectId": guid.lower()}, {"ProjectId": guid}) is None
    assert task_reason({"task.EndDateTime": {"lt": "2025-04-01T10:00:00+02:00"}},
                       {"EndDateTime": "2025-04-01T07:59:00Z"}) is None
    assert task_reason({"task.EndDateTime": {"older_than": "1d"}}, {"EndDateTime": "2025-03-30T00:00:00Z"}) is None


def test_change_paths_are_readable_in_conditions():
    assert task_reason({"change.WorkAmount.from": {"lt": 2}}, {}, {"WorkAmount": (1, 3)}) is None
