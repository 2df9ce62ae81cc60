"""Loading and validating rule files: every error class with its exact line and column."""
import textwrap
from pathlib import Path

import pytest

from engine import RuleError, RulesetError, load_rules, load_texts

RULES = Path(__file__).parents[2] / "rules"

VALID = """\
id: ok
trigger:
  inloox: Task
  changes:
    IsDone: {to: true}
do:
  - set_field: {field: Name, value: done}
"""


def load_one(text: str):
    """Load one file's text; return the single error it produced."""
    ruleset = load_texts([("r.yaml", textwrap.dedent(text))])
    assert len(ruleset.errors) >= 1, "expected an error"
    return ruleset.errors[0]


CASES = [
    ("yaml_syntax", "id: a\ntrigger: [1\ndo: 2\n", 3, 3, "expected ',' or ']'", ""),
    ("duplicate_key", "id: a\ntrigger:\n  inloox: Task\n  inloox: Project\ndo: []\n", 4, 3, "duplicate key", "once"),
    ("missing_required", "id: a\ntrigger: {manual: true}\n", 1, 1, "'do' is a required property", ""),
    ("unknown_top_key", "id: a\ntriger: {manual: true}\ndo: [{notify: {url: x, text: y}}]\n", 2, 1,
     "unknown key 'triger'", "did you mean 'trigger'?"),
    ("unknown_trigger_option", "id: a\ntrigger:\n  inloox: Task\n  chnages: {IsDone: {to: true}}\ndo: [{delete: {}}]\n",
     4, 3, "unknown key 'chnages'", "did you mean 'changes'?"),
    ("bad_rule_id", "id: Bad Id\ntrigger: {manual: true}\ndo: [{notify: {url: x, text: y}}]\n", 1, 5,
     "does not match", ""),
    ("unknown_entity_set", "id: a\ntrigger:\n  inloox: Tsk\ndo: [{delete: {}}]\n", 3, 11,
     "unknown entity set 'Tsk'", "did you mean 'Task'"),
    ("unknown_changes_field", "id: a\ntrigger:\n  inloox: Task\n  changes:\n    Statuss: {changed: true}\ndo: [{delete: {}}]\n",
     5, 5, "Task has no field 'Statuss'", "did you mean 'TaskItemStatusId'?"),
    ("changes_value_type", "id: a\ntrigger:\n  inloox: Task\n  changes:\n    IsDone: {to: \"yes\"}\ndo: [{delete: {}}]\n",
     5, 18, "'yes' is not a valid Edm.Boolean", ""),
    ("unknown_operator", "id: a\ntrigger: {inloox: Task}\nif:\n  task.WorkAmount: {gte: 1}\ndo: [{delete: {}}]\n",
     4, 21, "unknown key 'gte'", "'ge'"),
    ("unknown_condition_field", "id: a\ntrigger: {inloox: Task}\nif:\n  - task.Statuss: Open\ndo: [{delete: {}}]\n",
     4, 5, "Task has no field 'Statuss'", "did you mean 'TaskItemStatusId'?"),
    ("condition_literal_type", "id: a\ntrigger: {inloox: Task}\nif:\n  task.WorkAmount: {gt: lots}\ndo: [{delete: {}}]\n",
     4, 25, "'lots' is not a valid Edm.Double", ""),
    ("unknown_condition_root", "id: a\ntrigger: {webhook: x}\nif:\n  - alll: []\ndo: [{notify: {url: x, text: y}}]\n",
     4, 5, "unknown name 'alll'", "did you mean 'all'?"),
    ("template_syntax", "id: a\ntrigger: {manual: true}\ndo:\n  - notify: {url: x, text: \"{{ input.a }\"}\n",
     4, 28, "template syntax error", ""),
    ("undefined_step", "id: a\ntrigger: {manual: true}\ndo:\n  - id: first\n    get: {entity: Task, key: x}\n"
     "  - notify: {url: x, text: \"{{ steps.frist.Name }}\"}\n", 6, 28,
     "step 'frist' is not an earlier step (earlier steps: first)", "did you mean 'first'?"),
    ("unknown_template_root", "id: a\ntrigger: {inloox: Task}\ndo:\n  - notify: {url: x, text: \"{{ tsk.Name }}\"}\n",
     4, 28, "tsk.Name: unknown name 'tsk'", "did you mean 'task'?"),
    ("template_field", "id: a\ntrigger: {inloox: Task}\ndo:\n  - notify: {url: x, text: \"{{ task.Nme }}\"}\n",
     4, 28, "task.Nme: Task has no field 'Nme'", "did you mean 'Name'?"),
    ("bad_cron", "id: a\ntrigger:\n  schedule: \"0 25 * * *\"\ndo: [{notify: {url: x, text: y}}]\n", 3, 13,
     "is not a valid five-field cron expression", ""),
    ("bad_timezone", "id: a\ntrigger:\n  schedule: \"0 9 * * *\"\n  timezone: Mars/Base\ndo: [{notify: {url: x, text: y}}]\n",
     4, 13, "unknown time zone 'Mars/Base'", ""),
    ("bad_hold", "id: a\ntrigger:\n  inloox: Task\n  for: ten minutes\ndo: [{delete: {}}]\n", 4, 8, "does not match", ""),
    ("unknown_action", "id: a\ntrigger: {manual: true}\ndo:\n  - log_time: {}\n", 4, 5,
     "unknown key 'log_time'", "did you mean 'log_time_entry'?"),
    ("two_actions", "id: a\ntrigger: {manual: true}\ndo:\n  - notify: {url: x, text: y}\n    delete: {entity: Task, key: x}\n",
     4, 5, "a step needs exactly one action (found notify, delete)", ""),
    ("unknown_operation", "id: a\ntrigger: {inloox: Task}\ndo:\n  - invoke: {operation: AddNot}\n", 4, 25,
     "Task has no operation 'AddNot'", "did you mean 'AddNote'"),
    ("unknown_value_field", "id: a\ntrigger: {manual: true}\ndo:\n  - create:\n      entity: TimeEntry\n"
     "      values: {Duration: 5}\n", 6, 16, "TimeEntry has no field 'Duration'", "did you mean 'DurationMinutes'?"),
    ("entity_required", "id: a\ntrigger: {webhook: x}\ndo:\n  - set_field: {field: Name, value: x}\n", 4, 16,
     "entity is required", "only an inloox trigger"),
    ("value_type", "id: a\ntrigger: {manual: true}\ndo:\n  - create:\n      entity: Task\n"
     "      values: {IsDone: maybe}\n", 6, 24, "'maybe' is not a valid Edm.Boolean", ""),
    ("bad_regex", "id: a\ntrigger: {webhook: x}\nif:\n  webhook.body.t: {regex: \"(\"}\ndo: [{notify: {url: x, text: y}}]\n",
     4, 27, "invalid regular expression", ""),
    ("two_trigger_kinds", "id: a\ntrigger: {webhook: x, chat: y}\ndo: [{notify: {url: x, text: y}}]\n", 2, 11,
     "unknown key 'webhook'", "give only one"),
    ("duplicate_step_id", "id: a\ntrigger: {manual: true}\ndo:\n  - {id: s, notify: {url: x, text: y}}\n"
     "  - {id: s, notify: {url: x, text: y}}\n", 5, 10, "duplicate step id 's'", ""),
    ("older_than_needs_datetime", "id: a\ntrigger: {inloox: Task}\nif:\n  task.Name: {older_than: 2d}\ndo: [{delete: {}}]\n",
     4, 27, "older_than needs a date-time field", ""),
    ("minutes_or_hours", "id: a\ntrigger: {manual: true}\ndo:\n  - log_time_entry: {project: x, start: y}\n", 4, 21,
     "exactly one of minutes or hours", ""),
]


@pytest.mark.parametrize("name,text,line,col,message,hint", CASES, ids=[c[0] for c in CASES])
def test_error_is_located_exactly(name, text, line, col, message, hint):
    error = load_one(text)
    assert (error.file, error.line, error.col) == ("r.yaml", line, col), error.format()
    assert message in error.message
    assert hint in error.hint


def test_error_formats_as_file_line_col_path_message_hint():
    error = load_one("id: a\ntrigger: {inloox: Task}\nif:\n  - task.Statuss: Open\ndo: [{delete: {}}]\n")
    assert error.format() == ("r.yaml:4:5: if[0].task.Statuss: Task has no field 'Statuss' "
                              "(did you mean 'TaskItemStatusId'?)")


def test_duplicate_rule_ids_across_files_keep_the_first():
    ruleset = load_texts([("a.yaml", VALID), ("b.yaml", "# same id\n" + VALID)])
    assert list(ruleset.rules) == ["ok"] and ruleset.rules["ok"].file == "a.yaml"
    (error,) = ruleset.errors
    assert (error.file, error.line, error.col) == ("b.yaml", 2, 5)
    assert "duplicate rule id 'ok'" in error.message and "a.yaml:1" in error.hint


def test_broken_file_does_not_stop_valid_rules():
    ruleset = load_texts([("bad.yaml", "id: [\n"), ("good.yaml", VALID),
                          ("mixed.yaml", VALID.replace("ok", "ok2") + "---\nid: broken\ntrigger: {manual: true}\n")])
    assert sorted(ruleset.rules) == ["ok", "ok2"]
    assert [(s.file, s.rule_id) for s in ruleset.skipped] == [("bad.yaml", ""), ("mixed.yaml", "broken")]


def test_strict_mode_refuses_the_set():
    with pytest.raises(RulesetError) as info:
        load_texts([("good.yaml", VALID), ("bad.yaml", "id: [\n")], strict=True)
    assert len(info.value.errors) == 1 and "bad.yaml:" in str(info.value)


def test_version_ignores_formatting_but_not_content():
    reformatted = VALID.replace("{to: true}", "\n      to: true").replace("  - set", "  -   set")
    versions = [load_texts([("r.yaml", t)]).rules["ok"].version
                for t in (VALID, reformatted, VALID.replace("done", "finished"))]
    assert versions[0] == versions[1] != versions[2]


def test_load_rules_reads_a_folder(tmp_path):
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "notes.txt").write_text("not a rule")
    ruleset = load_rules(tmp_path)
    assert list(ruleset.rules) == ["ok"] and ruleset.rules["ok"].line == 1


def test_example_rules_load_without_errors():
    ruleset = load_rules(RULES)
    assert ruleset.errors == [] and len(ruleset.rules) >= 5


def test_rule_error_is_an_engine_error_with_fields():
    error = RuleError("bad", file="f.yaml", line=3, col=7, path="do[0]", hint="try this")
    assert str(error) == "f.yaml:3:7: do[0]: bad (try this)"
