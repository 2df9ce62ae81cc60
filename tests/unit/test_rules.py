"""Loading and validating rule files: every error class with its exact line and column."""
import textwrap
from pathlib import Path

import pytest

from engine import RuleError, RulesetError, load_rules, load_texts

RULES = Path(__file__).parents[2] / "rules"

VALID = """\
id: ok
when:
  - inloox: Task
    changes:
      IsDone: {to: true}
then:
  - inloox.update: Task
    values: {Name: done}
"""


def load_one(text: str):
    """Load one file's text; return the first error it produced."""
    ruleset = load_texts([("r.yaml", textwrap.dedent(text))])
    assert len(ruleset.errors) >= 1, "expected an error"
    return ruleset.errors[0]


T = "id: a\nwhen:\n  - inloox: Task\n"  # a rule with an inloox trigger, three lines
M = "id: a\nwhen: {manual: true}\n"
N = "then: [{notify: x, body: y}]\n"
CASES = [
    ("yaml_syntax", 2, 7, "id: a\nwhen: [1\nthen: 2\n", "unclosed '[' started at line 2", "close it with ']'"),
    ("duplicate_key", 4, 5, "id: a\nwhen:\n  - inloox: Task\n    inloox: Project\nthen: []\n", "duplicate key", "once"),
    ("missing_required", 1, 1, M, "'then' is a required property", ""),
    ("unknown_top_key", 2, 1, "id: a\nwhne: {manual: true}\n" + N, "unknown key 'whne'", "did you mean 'when'?"),
    ("old_trigger_key", 2, 1, "id: a\ntrigger: {manual: true}\n" + N, "unknown key 'trigger'", "did you mean 'when'?"),
    ("zapier_actions_key", 3, 1, M + "actions: [{notify: x, body: y}]\n", "unknown key 'actions'",
     "did you mean 'then'?"),
    ("n8n_filter_key", 3, 1, M + "filter: {path: input.a, op: exists}\n" + N, "unknown key 'filter'",
     "did you mean 'if'?"),
    ("unknown_trigger_option", 4, 5, T + "    chnages: {IsDone: {to: true}}\nthen: [{inloox.delete: Task}]\n",
     "unknown key 'chnages'", "did you mean 'changes'?"),
    ("bad_entity_event", 4, 9, T + "    on: updatd\nthen: [{inloox.delete: Task}]\n", "'updatd' is not an entity event",
     "did you mean 'updated'?"),
    ("bad_rule_id", 1, 5, "id: Bad Id\nwhen: {manual: true}\n" + N,
     "'Bad Id' is not an id: lowercase letters, digits, '-' and '_'", "did you mean 'bad-id'?"),
    ("unknown_entity_set", 3, 13, "id: a\nwhen:\n  - inloox: Tsk\nthen: [{inloox.delete: Task}]\n",
     "unknown entity set 'Tsk'", "did you mean 'Task'"),
    ("unknown_changes_field", 5, 7, T + "    changes:\n      Statuss: {changed: true}\nthen: [{inloox.delete: Task}]\n",
     "Task has no field 'Statuss'", "did you mean 'TaskItemStatusId'?"),
    ("changes_value_type", 5, 20, T + "    changes:\n      IsDone: {to: \"yes\"}\nthen: [{inloox.delete: Task}]\n",
     "'yes' is not a valid Edm.Boolean", ""),
    ("unknown_operator", 5, 33, T + "if:\n  - {path: task.WorkAmount, op: gte, value: 1}\nthen: [{inloox.delete: Task}]\n",
     "'gte' is not one of eq, ne", "'ge'"),
    ("unknown_condition_field", 5, 12, T + "if:\n  - {path: task.Statuss, op: eq, value: Open}\nthen: [{inloox.delete: Task}]\n",
     "Task has no field 'Statuss'", "did you mean 'TaskItemStatusId'?"),
    ("condition_literal_type", 5, 44, T + "if:\n  - {path: task.WorkAmount, op: gt, value: lots}\nthen: [{inloox.delete: Task}]\n",
     "'lots' is not a valid Edm.Double", ""),
    ("condition_date_time_without_offset", 5, 47,
     T + "if:\n  - {path: task.StartDateTime, op: gt, value: \"2026-03-02T09:00:00\"}\nthen: [{inloox.delete: Task}]\n",
     "'2026-03-02T09:00:00' is not a valid Edm.DateTimeOffset, wanted an ISO date-time with its offset", ""),
    ("write_date_time_without_offset", 6, 22, M + "then:\n  - inloox.create: TimeEntry\n    values:\n"
     "      StartDateTime: 2026-03-02 09:00:00\n",
     "'2026-03-02T09:00:00' is not a valid Edm.DateTimeOffset, wanted an ISO date-time with its offset", ""),
    ("condition_list_item_type", 5, 47, T + "if:\n  - {path: task.IsDone, op: in, value: [true, maybe]}\nthen: [{inloox.delete: Task}]\n",
     "'maybe' is not a valid Edm.Boolean", ""),
    ("operator_needs_value", 5, 5, T + "if:\n  - {path: task.WorkAmount, op: gt}\nthen: [{inloox.delete: Task}]\n",
     "gt needs a value", ""),
    ("unknown_condition_kind", 4, 5, "id: a\nwhen: {webhook: x}\nif:\n  - alll: []\n" + N,
     "a condition needs exactly one of all, any, not, expr, path", "did you mean 'all'?"),
    ("old_condition_shape", 4, 5, "id: a\nwhen: {webhook: x}\nif:\n  - webhook.body.a: {gt: 0}\n" + N,
     "a condition needs exactly one of", "{path: webhook.body.a, op: …, value: …}"),
    ("unknown_condition_key", 4, 36, "id: a\nwhen: {webhook: x}\nif:\n  - {path: webhook.body.a, op: eq, vaule: 1}\n" + N,
     "unknown key 'vaule'", "did you mean 'value'?"),
    ("template_syntax", 5, 11, M + "then:\n  - notify: x\n    body: \"{{ input.a }\"\n", "template syntax error", ""),
    ("undefined_step", 8, 11, M + "then:\n  - id: first\n    inloox.get: Task\n    key: 3fa85f64-5717-4562-b3fc-2c963f66afa6\n"
     "  - notify: x\n    body: \"{{ steps.frist.Name }}\"\n",
     "step 'frist' is not an earlier step (earlier steps: first)", "did you mean 'first'?"),
    ("unknown_template_root", 6, 11, T + "then:\n  - notify: x\n    body: \"{{ tsk.Name }}\"\n",
     "tsk.Name: unknown name 'tsk'", "did you mean 'task'?"),
    ("template_field", 6, 11, T + "then:\n  - notify: x\n    body: \"{{ task.Nme }}\"\n",
     "task.Nme: Task has no field 'Nme'", "did you mean 'Name'?"),
    ("bad_cron", 3, 15, "id: a\nwhen:\n  - schedule: \"0 25 * * *\"\n" + N, "is not a valid five-field cron expression", ""),
    ("cron_on_no_date", 3, 15, "id: a\nwhen:\n  - schedule: \"0 9 31 2 *\"\n" + N,
     "'0 9 31 2 *' never fires: its day and month name no date that exists", "February has no 30th or 31st"),
    ("random_cron", 3, 15, "id: a\nwhen:\n  - schedule: \"R 9 * * 1-5\"\n" + N,
     "'R 9 * * 1-5' has a random field (R)", "write the minute and hour"),
    # croniter reads a range whose ends are equal as the whole field: "9-9" every hour, "tue-tue" every day.
    ("equal_range_cron", 3, 15, "id: a\nwhen:\n  - schedule: \"0 9-9 * * *\"\n" + N,
     "'9-9' in the hour field is read as '*' (the whole field), not as 9", "write '9'"),
    ("equal_range_cron_with_step", 3, 15, "id: a\nwhen:\n  - schedule: \"0 9 * * 1,Tue-tue/2\"\n" + N,
     "'Tue-tue/2' in the day-of-week field is read as '*/2' (the whole field), not as Tue", "write 'Tue'"),
    ("bad_timezone", 4, 15, "id: a\nwhen:\n  - schedule: \"0 9 * * *\"\n    timezone: Mars/Base\n" + N,
     "unknown time zone 'Mars/Base'", ""),
    ("host_timezone", 4, 15, "id: a\nwhen:\n  - schedule: \"0 9 * * *\"\n    timezone: localtime\n" + N,
     "time zone 'localtime' is each host's own", "use an IANA name like Europe/Berlin"),
    ("bad_catch_up", 4, 15, "id: a\nwhen:\n  - schedule: \"0 9 * * *\"\n    catch_up: lates\n" + N,
     "'lates' is not one of skip, latest", "did you mean 'latest'?"),
    ("bad_hold", 4, 10, T + "    for: ten minutes\nthen: [{inloox.delete: Task}]\n",
     "'ten minutes' is not a duration: a number and one of the units s, m, h, d, w", ""),
    ("spelt_out_hold", 4, 10, T + "    for: 10 minutes\nthen: [{inloox.delete: Task}]\n", "is not a duration",
     "did you mean '10m'?"),
    ("bad_step_id", 4, 9, M + "then:\n  - id: Book Time\n    notify: x\n    body: y\n", "'Book Time' is not an id",
     "did you mean 'book-time'?"),
    ("bad_chat_argument", 3, 11, "id: a\nwhen:\n  - chat: \"done <task\"\n" + N, "'<task' is not an argument", "<name>"),
    ("unknown_action", 4, 5, M + "then:\n  - inloox.craete: Task\n    values: {}\n",
     "'inloox.craete' is not an action", "did you mean 'inloox.create'"),
    ("unknown_action_after_its_arguments", 5, 5, M + "then:\n  - title: x\n    notfy: y\n",
     "'notfy' is not an action", "did you mean 'notify'?"),
    ("zapier_email_action", 4, 5, M + "then:\n  - email: ann@example.com\n    body: y\n",
     "'email' is not an action", "did you mean 'notify'?"),
    ("no_action", 4, 5, M + "then:\n  - values: {Name: x}\n",
     "a step needs exactly one action (found none among values)", "actions: inloox.create"),
    ("two_actions", 4, 5, M + "then:\n  - notify: x\n    body: y\n    inloox.delete: Task\n",
     "unknown key 'notify'", "give only one"),
    ("unknown_action_argument", 5, 5, M + "then:\n  - notify: x\n    bdy: y\n", "unknown key 'bdy'", "did you mean 'body'?"),
    ("unknown_action_argument_far_off", 5, 5, M + "then:\n  - notify: x\n    subject: y\n", "unknown key 'subject'",
     "the keys here: body, id, if, notify, title"),
    ("unknown_operation", 5, 20, T + "then:\n  - inloox.action: AddNot\n", "Task has no operation 'AddNot'",
     "did you mean 'AddNote'"),
    ("unknown_operation_parameter", 6, 18, T + "then:\n  - inloox.action: AddNote\n    parameters: {html: x}\n",
     "AddNote has no parameter 'html'", "did you mean 'htmlText'"),
    ("unknown_value_field", 5, 14, M + "then:\n  - inloox.create: TimeEntry\n    values: {Duration: 5}\n",
     "TimeEntry has no field 'Duration'", "did you mean 'DurationMinutes'?"),
    ("key_required", 4, 5, "id: a\nwhen: {webhook: x}\nthen:\n  - inloox.update: Task\n    values: {Name: x}\n",
     "key is required", "only an `inloox: Task` trigger"),
    ("key_not_a_guid", 5, 10, M + "then:\n  - inloox.delete: Task\n    key: 42-x\n", "'42-x' is not a valid Edm.Guid", ""),
    ("value_type", 5, 22, M + "then:\n  - inloox.create: Task\n    values: {IsDone: maybe}\n",
     "'maybe' is not a valid Edm.Boolean", ""),
    ("empty_rate_window", 4, 27, M + N + "rate_limit: {max: 1, per: 0s}\n",
     "'0s' is no time: a rate limit's window must be longer than 0s", "1m"),
    ("bad_regex", 4, 46, "id: a\nwhen: {webhook: x}\nif:\n  - {path: webhook.body.t, op: regex, value: \"(\"}\n" + N,
     "invalid regular expression", ""),
    ("regex_lookahead", 4, 46, "id: a\nwhen: {webhook: x}\nif:\n  - {path: webhook.body.t, op: regex, value: \"(?=a)\"}\n"
     + N, "invalid regular expression: invalid perl operator: (?=", "RE2 syntax: no backreferences"),
    ("two_trigger_kinds", 3, 6, "id: a\nwhen:\n  - {webhook: x, chat: y}\n" + N, "unknown key 'webhook'", "give only one"),
    ("duplicate_step_id", 5, 10, M + "then:\n  - {id: s, notify: x, body: y}\n  - {id: s, notify: x, body: y}\n",
     "duplicate step id 's'", ""),
    ("older_than_needs_datetime", 5, 46, T + "if:\n  - {path: task.Name, op: older_than, value: 2d}\nthen: [{inloox.delete: Task}]\n",
     "older_than needs a date-time field", ""),
    ("unescaped_filter_value", 5, 13, "id: a\nwhen: {webhook: x}\nthen:\n  - inloox.query: Task\n"
     "    filter: \"Name eq '{{ webhook.body.name }}'\"\n",
     "{{ webhook.body.name }} in a filter is not written as an OData literal",
     "end the expression in | odata, e.g. {{ webhook.body.name | odata }}"),
    ("filter_value_rewritten_after_odata", 5, 13, "id: a\nwhen: {webhook: x}\nthen:\n  - inloox.query: Task\n"
     "    filter: \"Name eq {{ webhook.body.name | odata | replace('x', 'y') }}\"\n",
     "is not written as an OData literal", ""),
    ("step_if_reads_a_later_step", 4, 16, M + "then:\n  - if: {path: steps.later.Name, op: exists}\n    notify: x\n    body: y\n"
     "  - {id: later, inloox.get: Task, key: 3fa85f64-5717-4562-b3fc-2c963f66afa6}\n",
     "step 'later' is not an earlier step", ""),
    ("rule_if_reads_steps", 3, 12, "id: a\nwhen: {webhook: x}\nif: {path: steps.a.b, op: exists}\n" + N,
     "unknown name 'steps'", ""),
]


@pytest.mark.parametrize("name,line,col,text,message,hint", CASES, ids=[c[0] for c in CASES])
def test_error_is_located_exactly(name, line, col, text, message, hint):
    error = load_one(text)
    assert (error.file, error.line, error.col) == ("r.yaml", line, col), error.format()
    assert message in error.message
    assert hint in error.hint


def test_error_formats_as_file_line_col_path_message_hint():
    error = load_one(T + "if:\n  - {path: task.Statuss, op: eq, value: Open}\nthen: [{inloox.delete: Task}]\n")
    assert error.format() == ("r.yaml:5:12: if[0].path: Task has no field 'Statuss' "
                              "(did you mean 'TaskItemStatusId'?)")


def test_duplicate_rule_ids_across_files_keep_the_first():
    ruleset = load_texts([("a.yaml", VALID), ("b.yaml", "# same id\n" + VALID)])
    assert list(ruleset.rules) == ["ok"] and ruleset.rules["ok"].file == "a.yaml"
    (error,) = ruleset.errors
    assert (error.file, error.line, error.col) == ("b.yaml", 2, 5)
    assert "duplicate rule id 'ok'" in error.message and "a.yaml:1" in error.hint


def test_broken_file_does_not_stop_valid_rules():
    ruleset = load_texts([("bad.yaml", "id: [\n"), ("good.yaml", VALID),
                          ("mixed.yaml", VALID.replace("ok", "ok2") + "---\nid: broken\nwhen: {manual: true}\n")])
    assert sorted(ruleset.rules) == ["ok", "ok2"]
    assert [(s.file, s.rule_id) for s in ruleset.skipped] == [("bad.yaml", ""), ("mixed.yaml", "broken")]


def test_strict_mode_refuses_the_set():
    with pytest.raises(RulesetError) as info:
        load_texts([("good.yaml", VALID), ("bad.yaml", "id: [\n")], strict=True)
    assert len(info.value.errors) == 1 and "bad.yaml:" in str(info.value)


def test_version_ignores_formatting_but_not_content():
    reformatted = VALID.replace("{to: true}", "\n        to: true").replace("{Name: done}", "{ Name: 'done' }")
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


def test_nested_yaml_aliases_are_refused_before_they_expand():
    # 6 levels of 10 aliases each would be a million values from a few hundred bytes.
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]" for prev, name in zip("abcde", "bcdef")]
    # A long description lets the file's character budget (engine.documents.expansion_limit) pass the values'.
    text = "\n".join(levels + ["id: bomb", "description: " + "d" * 20_000])
    ruleset = load_texts([("bomb.yaml", text)])
    [error] = ruleset.errors
    assert error.file == "bomb.yaml" and "more than 50000 values" in error.message
