"""Conditions: every operator, nesting, expr, and the reasons a failing check gives."""
import json
import time
from datetime import datetime, timezone

import pytest

from engine import Event, load_texts
from engine.match import match_rule

NOW = datetime(2025, 4, 1, 12, 0, tzinfo=timezone.utc)


def compile_rule(condition, trigger=None):
    trigger = trigger or {"webhook": "hook"}
    rule = {"id": "r", "when": [trigger], "if": condition, "then": [{"notify": "u", "body": "t"}]}
    ruleset = load_texts([("r.yaml", json.dumps(rule))])
    assert not ruleset.errors, ruleset.errors[0].format()
    return ruleset.rules["r"]


def reason(condition, body, trigger=None):
    """None when the condition holds for a webhook body, else the reason."""
    event = Event("webhook", "hook", NOW, payload={"body": body})
    return match_rule(event, compile_rule(condition, trigger), now=NOW, env={}).reason


def clause(path, op, *value, **options):
    """A field-test clause as a rule writes it: {path, op, value, ignore_case}."""
    return {"path": path, "op": op, **({"value": value[0]} if value else {}), **options}


def v(op, *value, **options):
    return clause("webhook.body.v", op, *value, **options)


OPERATOR_CASES = [
    (v("eq", 3), 3, True), (v("eq", 3), 4, False), (v("ne", "a"), "b", True), (v("ne", "a"), "a", False),
    (v("lt", 5), 4, True), (v("lt", 5), 5, False), (v("le", 5), 5, True), (v("le", 5), 6, False),
    (v("gt", 0), 0.5, True), (v("gt", 0), 0, False), (v("ge", 1), 1, True), (v("ge", 1), 0, False),
    (v("gt", 1), "text", False),  # unlike types never hold, never raise
    (v("in", ["a", "b"]), "b", True), (v("in", ["a", "b"]), "c", False),
    (v("not_in", ["a"]), "b", True), (v("not_in", ["a"]), "a", False),
    (v("contains", "ell"), "hello", True), (v("contains", "x"), "hello", False),
    (v("contains", 2), [1, 2], True), (v("contains", 3), [1, 2], False),
    (v("prefix", "he"), "hello", True), (v("prefix", "lo"), "hello", False),
    (v("suffix", "lo"), "hello", True), (v("suffix", "he"), "hello", False),
    (v("regex", r"^T-\d+$"), "T-12", True), (v("regex", r"^T-\d+$"), "T-x", False),
    (v("exists"), "x", True), (v("exists"), None, False), (v("exists", True), "x", True),
    (v("exists", False), None, True), (v("exists", False), "x", False),
    (v("between", [1, 3]), 3, True), (v("between", [1, 3]), 4, False),
    (v("older_than", "2d"), "2025-03-29T12:00:00Z", True), (v("older_than", "2d"), "2025-03-31T12:00:00Z", False),
    (v("newer_than", "1h"), "2025-04-01T11:30:00Z", True), (v("newer_than", "1h"), "2025-04-01T10:00:00Z", False),
    (v("eq", "ABC", ignore_case=True), "abc", True), (v("eq", "ABC"), "abc", False),
    (v("in", ["Open"], ignore_case=True), "OPEN", True),
    (v("prefix", "URG", ignore_case=True), "urgent", True),
    (v("regex", "^urg", ignore_case=True), "URGENT", True),
]


@pytest.mark.parametrize("clause,value,holds", OPERATOR_CASES,
                         ids=[f"{c['op']}-{c.get('value')}-{v}" for c, v, _ in OPERATOR_CASES])
def test_operator(clause, value, holds):
    assert (reason(clause, {"v": value}) is None) == holds


@pytest.mark.parametrize("clause,value,holds", [
    (v("eq", 1), True, False), (v("eq", 0), False, False), (v("eq", True), 1, False), (v("ne", 1), True, True),
    (v("in", [0, 1]), True, False), (v("not_in", [0, 1]), False, True), (v("contains", 1), [True], False),
    (v("gt", 0), True, False), (v("le", 0), False, False), (v("between", [0, 2]), True, False),
    (v("eq", True), True, True), (v("eq", 1), 1.0, True), (v("in", [True]), True, True), (v("gt", 0), 1, True),
])
def test_true_and_false_are_not_numbers(clause, value, holds):
    """A webhook's `"approved": true` is no count of 1: in JSON, and in what a rule means by `gt 0`,
    booleans and numbers are unlike types, which never compare equal or in order. Python's
    `True == 1` made `{path: webhook.body.count, op: gt, value: 0}` hold for `"count": true`."""
    assert (reason(clause, {"v": value}) is None) == holds


@pytest.mark.timeout(120)
def test_a_pattern_that_backtracks_in_python_matches_in_linear_time():
    """A rule's pattern meets the event's text in a process that serves every workspace: with Python's
    `re`, `(a+)+$` against 28 a's and a "!" took about 17 s of CPU in C, holding the GIL (twice that
    for each further a). RE2 answers at once."""
    started = time.monotonic()
    assert reason(v("regex", "(a+)+$"), {"v": "a" * 28 + "!"}) is not None
    assert reason(v("regex", "(a+)+$"), {"v": "a" * 100_000}) is None
    assert time.monotonic() - started < 2


def test_failing_clause_says_what_was_found_and_wanted():
    assert reason(v("eq", "x"), {"v": "x"}) is None
    assert reason(v("eq", "x"), {"v": "y"}) == "if: webhook.body.v was 'y', wanted eq 'x'"


def test_missing_value_fails_with_reason_except_exists():
    assert reason(v("gt", 0), {}) == "if: webhook.body.v was missing, wanted gt 0"
    assert reason(v("exists"), {}) == "if: webhook.body.v was missing, wanted exists"
    assert reason(v("exists", False), {}) is None


@pytest.mark.parametrize("clause,body,holds", [
    (clause("webhook.body.a", "eq", "{{ webhook.body.b }}"), {"a": 2, "b": 2}, True),
    (clause("webhook.body.a", "eq", "{{ webhook.body.b }}"), {"a": 2, "b": 3}, False),
    (clause("webhook.body.a", "in", ["x", "{{ webhook.body.b }}"]), {"a": "y", "b": "y"}, True),
    (clause("webhook.body.a", "between", "{{ [webhook.body.b, webhook.body.b + 2] }}"), {"a": 3, "b": 1}, True),
    (clause("webhook.body.at", "older_than", "{{ webhook.body.days }}d"), {"at": "2025-03-01T00:00:00Z", "days": 2}, True),
])
def test_values_may_be_templates_rendered_when_checked(clause, body, holds):
    assert (reason(clause, body) is None) == holds


def test_a_template_value_that_fails_to_render_is_the_reason():
    assert reason(clause("webhook.body.a", "eq", "{{ webhook.body.b }}"), {"a": 1}) == \
        "if: value: webhook.body.b is undefined in '{{ webhook.body.b }}'"
    assert reason(clause("webhook.body.a", "between", "{{ webhook.body.b }}"), {"a": 1, "b": 5}) == \
        "if: value: between wants two values, got 5"


def test_reason_names_the_path_to_the_failing_clause():
    condition = {"all": [v("eq", 1), clause("webhook.body.b", "gt", 0)]}
    assert reason(condition, {"v": 1, "b": 0}) == "if.all[1]: webhook.body.b was 0, wanted gt 0"


def test_any_lists_every_reason():
    condition = {"any": [clause("webhook.body.a", "eq", 1), clause("webhook.body.b", "eq", 2)]}
    assert reason(condition, {"a": 1, "b": 0}) is None
    assert reason(condition, {"a": 0, "b": 0}) == (
        "if.any: none held (if.any[0]: webhook.body.a was 0, wanted eq 1; "
        "if.any[1]: webhook.body.b was 0, wanted eq 2)")


def test_not_inverts_and_nests():
    condition = {"not": {"any": [clause("webhook.body.a", "eq", 1), clause("webhook.body.b", "eq", 1)]}}
    assert reason(condition, {"a": 0, "b": 0}) is None
    assert reason(condition, {"a": 1}) == "if.not: held, wanted it not to"


def test_list_means_all():
    assert reason([clause("webhook.body.a", "eq", 1), clause("webhook.body.b", "eq", 1)], {"a": 1, "b": 2}) == \
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
    assert reason(clause("webhook.body.items.1.name", "eq", "b"), {"items": [{"name": "a"}, {"name": "b"}]}) is None


TASK = {"inloox": "Task"}


def task_reason(condition, entity, changes=None):
    event = Event("inloox", "updated", NOW, entity_set="Task", key="k", entity=entity, changes=changes or {})
    return match_rule(event, compile_rule(condition, TASK), now=NOW, env={}).reason


def test_typed_fields_coerce_guids_and_datetimes():
    guid = "3FA85F64-5717-4562-B3FC-2C963F66AFA6"
    assert task_reason(clause("task.ProjectId", "eq", guid.lower()), {"ProjectId": guid}) is None
    assert task_reason(clause("task.EndDateTime", "lt", "2025-04-01T10:00:00+02:00"),
                       {"EndDateTime": "2025-04-01T07:59:00Z"}) is None
    assert task_reason(clause("task.EndDateTime", "older_than", "1d"), {"EndDateTime": "2025-03-30T00:00:00Z"}) is None
    assert task_reason(clause("task.EndDateTime", "lt", "{{ now }}"), {"EndDateTime": "2025-03-30T00:00:00Z"}) is None


@pytest.mark.parametrize("clause,value", [
    (v("older_than", "2d"), "2025-03-01T00:00:00"), (v("newer_than", "2d"), "2025-03-31T23:00:00"),
])
def test_a_date_time_without_an_offset_names_no_instant_and_does_not_hold(clause, value):
    """A webhook's "2025-03-01T00:00:00" is a time on no clock we know: like text that is no date-time,
    the clause does not hold. Compared with `now` it raised TypeError, which failed the event for
    every rule of the workspace instead of being this clause's reason."""
    assert reason(clause, {"v": value}) == f"if: webhook.body.v was {value!r}, wanted {clause['op']} '2d'"
    assert task_reason(clause | {"path": "task.EndDateTime"}, {"EndDateTime": value}) is not None


def test_change_paths_are_readable_in_conditions():
    assert task_reason(clause("change.WorkAmount.from", "lt", 2), {}, {"WorkAmount": (1, 3)}) is None


def test_in_all_the_literal_tests_are_checked_before_rendered_ones():
    # The expression would fail (no such variable); the literal test is checked first and fails.
    condition = {"all": [{"expr": "{{ webhook.body.nope.deeper > 1 }}"}, v("eq", 3)]}
    assert reason(condition, {"v": 4}) == "if.all[1]: webhook.body.v was 4, wanted eq 3"
    # When the literal holds, the expression decides, as written.
    assert reason(condition, {"v": 3}).startswith("if.all[0].expr: webhook.body.nope is undefined")
    assert reason({"all": [{"expr": "{{ webhook.body.v == 3 }}"}, v("eq", 3)]}, {"v": 3}) is None
