"""Rule fixtures: subset expectations, unexpected matches, reasons, malformed files."""
from pathlib import Path

import pytest

from engine import RuleError, load_rules
from engine.fixtures import fixture_files, run_fixture_file

RULES = Path(__file__).parents[2] / "rules"
EVENT = ("  event: {source: manual, kind: archive-project, occurred_at: 2025-04-01T00:00:00Z,"
         " payload: {project_id: p}}\n")


def run(tmp_path, text):
    path = tmp_path / "cases.yaml"
    path.write_text(text)
    return run_fixture_file(path, load_rules(RULES))


def test_example_fixtures_are_found_in_rules_tests():
    assert [p.name for p in fixture_files(RULES)] == ["other-sources.yaml", "scanned-sets.yaml", "task-events.yaml"]


def test_unexpected_match_fails(tmp_path):
    (result,) = run(tmp_path, "- name: c\n" + EVENT + "  expect: {}\n")
    assert result.problems == ["archive-project matched but was not expected (expect: names every rule that plans "
                               "for this event; add `archive-project: {}` to it if the match is right)"]


def test_expected_match_that_did_not_happen_fails_with_reason(tmp_path):
    (result,) = run(tmp_path, "- name: c\n  event: {source: manual, kind: nope, occurred_at: 2025-04-01T00:00:00Z}\n"
                              "  expect: {archive-project: {}}\n")
    assert result.problems == ["archive-project was expected to match: not a candidate for this event"]


def test_list_lengths_must_agree(tmp_path):
    (result,) = run(tmp_path, "- name: c\n" + EVENT + "  expect: {archive-project: {operations: [{}]}}\n")
    assert result.problems == ["archive-project: plan.operations has 2 item(s), expected 1"]


def test_reason_words_must_appear(tmp_path):
    (result,) = run(tmp_path, "- name: c\n" + EVENT + "  expect: {archive-project: {}}\n"
                              "  reasons: {archive-project: whatever}\n")
    assert result.problems == ["archive-project: reason None does not contain 'whatever'"]


@pytest.mark.parametrize("text,message", [
    ("name: not a list\n", "a fixture file is a list of cases"),
    ("- name: c\n  event: {source: manual}\n", "not an event"),
    ("- name: c\n" + EVENT + "  now: soon\n", "'soon' is not an ISO date-time"),
])
def test_malformed_fixtures_raise_rule_errors(tmp_path, text, message):
    with pytest.raises(RuleError, match=message):
        run(tmp_path, text)


def test_a_rule_that_cannot_be_planned_says_why_and_where_env_comes_from(tmp_path):
    # A rule's env.* in a case is only the case's env:, so a notify to env.TEAM_CHANNEL_URL fails to
    # plan; the case used to report only "plan.operations is missing".
    (result,) = run(tmp_path, "- name: c\n  event: {source: inloox, kind: updated, occurred_at: 2025-04-01T00:00:00Z,"
                              " entity_set: Task, key: 3fa85f64-5717-4562-b3fc-2c963f66afa6,"
                              " changes: {IsDone: [false, true]}, entity: {Name: t, WorkAmount: 2,"
                              " TaskItemId: 3fa85f64-5717-4562-b3fc-2c963f66afa6,"
                              " ProjectId: 3fa85f64-5717-4562-b3fc-2c963f66afa7}}\n"
                              "  expect: {log-time-when-task-done: {operations: [{}, {}]}}\n")
    (problem,) = result.problems
    assert problem.startswith("log-time-when-task-done matched but could not be planned: ")
    assert "env.TEAM_CHANNEL_URL is undefined" in problem
    assert "add e.g. env: {TEAM_CHANNEL_URL: ...} to the case" in problem


def test_an_expected_planning_error_is_still_compared(tmp_path):
    (result,) = run(tmp_path, "- name: c\n  event: {source: inloox, kind: updated, occurred_at: 2025-04-01T00:00:00Z,"
                              " entity_set: Task, key: 3fa85f64-5717-4562-b3fc-2c963f66afa6,"
                              " changes: {IsDone: [false, true]}, entity: {Name: t, WorkAmount: 2,"
                              " TaskItemId: 3fa85f64-5717-4562-b3fc-2c963f66afa6,"
                              " ProjectId: 3fa85f64-5717-4562-b3fc-2c963f66afa7}}\n"
                              "  expect: {log-time-when-task-done: {error: nope}}\n")
    (problem,) = result.problems
    assert problem.startswith("log-time-when-task-done: plan.error was ")
