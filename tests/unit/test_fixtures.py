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
    assert result.problems == ["archive-project matched but was not expected"]


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
