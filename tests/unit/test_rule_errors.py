"""What a person sees when a rule file is wrong: every mistake at once, YAML slips in plain words at
the line to fix, and aliases that would blow a small upload up into a large one refused."""
import json
import textwrap
import tracemalloc

import pytest
from flask import Flask

from engine import load_texts
from engine.documents import MAX_EXPANDED_CHARS, expansion_limit
from web.rules_cli import rules_cli


def errors_of(text: str) -> list[str]:
    """Every error of one file's text, formatted as `flask rules check` prints it."""
    return [e.format() for e in load_texts([("r.yaml", textwrap.dedent(text))]).errors]


def only_error(text: str):
    [error] = load_texts([("r.yaml", textwrap.dedent(text))]).errors
    return error


@pytest.fixture
def runner():
    app = Flask("rule-errors-test")
    app.cli.add_command(rules_cli)
    return app.test_cli_runner()


# --- every error of a rule ------------------------------------------------------------------------

TWO_MISTAKES = """\
id: two-mistakes
description: an unknown key on line 5 and a condition on a field Task lacks on line 12
when:
  - inloox: Task
    chnages:
      IsDone: {to: true}
if:
  - {path: task.WorkAmount, op: gt, value: 0}
  - {path: task.ProjectId, op: exists}
  - {path: task.Name, op: exists}
  - {path: task.IsDone, op: eq, value: true}
  - {path: task.Statuss, op: eq, value: Open}
then:
  - inloox.update: Task
    values: {IsDone: true}
"""


def test_an_unknown_key_and_a_bad_condition_are_both_reported():
    assert errors_of(TWO_MISTAKES) == [
        "r.yaml:5:5: when[0].chnages: unknown key 'chnages' (did you mean 'changes'?)",
        "r.yaml:12:12: if[4].path: Task has no field 'Statuss' (did you mean 'TaskItemStatusId'?)",
    ]


def test_check_prints_every_error_and_counts_them(runner, tmp_path):
    (tmp_path / "r.yaml").write_text(TWO_MISTAKES)
    result = runner.invoke(args=["rules", "check", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path}/r.yaml:5:5: when[0].chnages: unknown key 'chnages'" in result.output
    assert f"{tmp_path}/r.yaml:12:12: if[4].path: Task has no field 'Statuss'" in result.output
    assert f"skipped rule two-mistakes in {tmp_path}/r.yaml: 2 error(s)" in result.output
    assert "Error: 2 error(s); 0 rule(s) loaded" in result.output


def test_check_json_lists_every_error(runner, tmp_path):
    (tmp_path / "r.yaml").write_text(TWO_MISTAKES)
    result = runner.invoke(args=["rules", "check", "--json", str(tmp_path)])
    report = json.loads(result.output.splitlines()[0])
    assert [(e["line"], e["col"], e["path"], e["rule"]) for e in report["errors"]] == [
        (5, 5, "when[0].chnages", "two-mistakes"), (12, 12, "if[4].path", "two-mistakes")]


def test_each_trigger_condition_step_and_option_is_checked_on_its_own():
    assert errors_of("""\
        id: many
        when:
          - inloox: Task
            changes: {Statuss: {changed: true}}
          - schedule: "0 25 * * *"
        if:
          - {path: task.WorkAmount, op: gt, value: lots}
          - {path: task.IsDone, op: eq, value: true}
          - {path: task.Nme, op: exists}
        then:
          - id: first
            notify: x
            body: "{{ task.Nme }}"
          - inloox.update: Task
            values: {IsDone: maybe}
          - notify: x
            body: "{{ steps.first.x }} {{ steps.frist.x }}"
          - inloox.craete: Task
        rate_limit: {max: 1, per: soon}
        """) == [
        "r.yaml:4:15: when[0].changes.Statuss: Task has no field 'Statuss' (did you mean 'TaskItemStatusId'?)",
        "r.yaml:5:15: when[1].schedule: '0 25 * * *' is not a valid five-field cron expression"
        " (minute hour day-of-month month day-of-week, e.g. '0 9 * * 1-5')",
        "r.yaml:7:44: if[0].value: 'lots' is not a valid Edm.Double, wanted a number",
        "r.yaml:9:12: if[2].path: Task has no field 'Nme' (did you mean 'Name'?)",
        "r.yaml:13:11: then[0].body: task.Nme: Task has no field 'Nme' (did you mean 'Name'?)",
        "r.yaml:15:22: then[1].values.IsDone: IsDone: 'maybe' is not a valid Edm.Boolean, wanted true or false",
        "r.yaml:17:11: then[2].body: steps.frist.x: step 'frist' is not an earlier step"
        " (earlier steps: first, step1) (did you mean 'first'?)",
        "r.yaml:18:5: then[3].inloox.craete: 'inloox.craete' is not an action"
        " (did you mean 'inloox.create' or 'inloox.get' or 'inloox.update'?)",
        "r.yaml:19:27: rate_limit.per: 'soon' is not a duration: a number and one of the units s, m, h, d, w"
        " (90s, 10m, 2h, 3d, 1w), or a number of seconds",
    ]


def test_a_broken_step_is_still_an_earlier_step_for_the_next():
    # Step `find` is wrong; the step reading steps.find gets no second error because of it.
    assert errors_of("""\
        id: a
        when: {manual: true}
        then:
          - id: find
            inloox.query: Tsk
          - notify: x
            body: "{{ steps.find.value }}"
        """) == ["r.yaml:5:19: then[0].inloox.query: unknown entity set 'Tsk' (did you mean 'Task'?)"]


def test_a_trigger_that_does_not_compile_still_names_its_entity():
    # `inloox: Task` gives `task` even though its `changes` are wrong: the template is still checked.
    assert errors_of("""\
        id: a
        when:
          - inloox: Task
            changes: {IsDone: {to: maybe}}
        then:
          - notify: x
            body: "{{ task.Nme }} {{ task.Name }}"
        """) == ["r.yaml:4:28: when[0].changes.IsDone.to: IsDone: 'maybe' is not a valid Edm.Boolean, wanted true or false",
                 "r.yaml:7:11: then[0].body: task.Nme: Task has no field 'Nme' (did you mean 'Name'?)"]


def test_every_schema_error_is_reported():
    assert errors_of("""\
        id: a
        when: {manual: true}
        then:
          - notify: x
            bdy: y
          - notify: x
            body: y
            titel: z
        mode: shadw
        """) == ["r.yaml:5:5: then[0].bdy: unknown key 'bdy' (did you mean 'body'?)",
                 "r.yaml:8:5: then[1].titel: unknown key 'titel' (did you mean 'title'?)",
                 "r.yaml:9:7: mode: 'shadw' is not one of live, shadow (did you mean 'shadow'?)"]


def test_a_schema_message_quotes_a_long_value_in_short():
    [error] = errors_of("id: a\nwhen: {manual: true}\nthen: [{notify: x, body: [" + "x" * 5000 + "]}]\n")
    assert error.startswith("r.yaml:3:") and "is not of type 'string'" in error and len(error) < 200


def test_broken_rules_do_not_stop_the_valid_ones_in_the_same_file():
    valid = "id: ok\nwhen: {manual: true}\nthen: [{notify: x, body: y}]\n"
    ruleset = load_texts([("r.yaml", valid + "---\n" + TWO_MISTAKES + "---\n" + valid.replace("ok", "ok2"))])
    assert sorted(ruleset.rules) == ["ok", "ok2"]
    assert [(s.rule_id, len(s.errors)) for s in ruleset.skipped] == [("two-mistakes", 2)]


# --- YAML syntax errors in plain words -------------------------------------------------------------

# The rule log-time-when-task-done with line 20 (StartDateTime) indented two spaces too little.
SLIPPED_LINE_20 = """\
# A task ticked done books its planned effort and tells the team.
id: log-time-when-task-done
description: When a task is marked done, book its planned effort and tell the team.
when:
  - inloox: Task
    on: updated
    changes:
      IsDone: {from: false, to: true}
if:
  all:
    - {path: task.WorkAmount, op: gt, value: 0}
    - {path: task.ProjectId, op: exists}
then:
  - id: book
    inloox.create: TimeEntry
    values:
      ProjectId: "{{ task.ProjectId }}"
      TaskItemId: "{{ task.TaskItemId }}"
      DisplayName: "{{ task.Name }}"
    StartDateTime: "{{ now | isoformat }}"
      EndDateTime: "{{ now | isoformat }}"
"""

SYNTAX = [
    ("key_indented_less_than_its_neighbours", SLIPPED_LINE_20, 20, 5,
     "this line is indented differently from the lines around it: lines 19 and 21 start at column 7",
     "YAML uses indentation to nest keys"),
    ("key_indented_more_than_its_neighbours", "id: a\nthen:\n  - notify: x\n      body: y\n    title: z\n", 4, 7,
     "this line is indented differently from the lines around it: line 3 starts at column 3 (its first key at column 5)",
     "YAML uses indentation"),
    ("key_out_of_its_list_item", "id: a\nthen:\n  - notify: x\n    body: y\n   title: z\n", 5, 4,
     "indented differently from the lines around it: line 4 starts at column 5", ""),
    ("first_key_indented", "# a rule\n  id: a\nwhen: {manual: true}\n", 2, 3,
     "indented differently from the lines around it: line 3 starts at column 1", ""),
    ("tab_indentation", "id: a\nwhen:\n\tmanual: true\n", 3, 1,
     "tab characters are not allowed for indentation", "indent with spaces"),
    ("tab_after_a_key", "id: a\nwhen:\t{manual: true}\n", 2, 6, "a tab character cannot separate", "use spaces"),
    ("colon_in_a_value", "id: a\ndescription: a: b\nwhen: {manual: true}\n", 2, 15,
     "a ':' inside a value must be quoted", 'write description: "a: b"'),
    ("colon_in_a_list_item_value", "id: a\nthen:\n  - notify: x\n    body: Note: this\n", 4, 15,
     "a ':' inside a value must be quoted", 'write body: "Note: this"'),
    ("colon_in_a_flow_value", "id: a\nwhen: {manual: a: b}\n", 2, 17, "a ':' inside a value must be quoted", ""),
    ("unclosed_quote_at_the_end", "id: a\ndescription: \"abc\nwhen: {manual: true}\nthen: []\n", 2, 14,
     "unclosed quote started at line 2", 'end the value with " on that line'),
    ("unclosed_quote_closed_by_another", "id: a\ndescription: 'it is\nwhen: {manual: true}\nthen: [x]\nfoo: 'bar'\n",
     2, 14, "unclosed quote started at line 2", "end the value with ' on that line"),
    ("text_after_a_closing_quote", "id: a\ndescription: \"abc\" def\n", 2, 20,
     "text follows the closing quote of this value", "put the whole value in quotes"),
    ("unclosed_bracket", "id: a\nwhen: [1\nthen: 2\n", 2, 7, "unclosed '[' started at line 2", "close it with ']'"),
    ("unclosed_brace_at_the_end", "id: a\nwhen: {manual: true\n", 2, 7, "unclosed '{' started at line 2", "'}'"),
    ("missing_comma_in_a_flow_mapping", "id: a\nwhen: {manual: true,\n   a: 1\n   b: 2}\n", 4, 5,
     "a ',' is missing between the items of the '{' at line 2", ""),
    ("duplicate_key", "id: a\nname: x\nwhen: {manual: true}\nname: y\n", 4, 1,
     "duplicate key 'name', first given at line 2", "each key may appear only once"),
    ("duplicate_key_in_a_list_item", "id: a\nwhen:\n  - inloox: Task\n    on: updated\n    inloox: Project\n", 5, 5,
     "duplicate key 'inloox', first given at line 3", "once"),
    ("alias_with_no_anchor", "id: a\ndescription: *bold* text\n", 2, 14,
     "*bold* is an alias, but no anchor &bold* comes before it", "must be quoted"),
    ("line_without_a_colon", "id: a\njust some words\nthen: []\n", 2, 1,
     "this line is not a 'key: value' pair", "indent it further to continue the value above"),
    ("value_starting_with_a_reserved_character", "id: a\ndescription: @me\n", 2, 14,
     "a value cannot start with '@' unless it is quoted", "quotes"),
    ("list_item_after_a_key", "id: a\nthen: - notify: x\n", 2, 7, "a list item ('- ') must start a line of its own", ""),
]


@pytest.mark.parametrize("name,text,line,col,message,hint", SYNTAX, ids=[c[0] for c in SYNTAX])
def test_yaml_mistake_is_put_plainly_at_the_line_to_fix(name, text, line, col, message, hint):
    error = only_error(text)
    assert (error.file, error.line, error.col) == ("r.yaml", line, col), error.format()
    assert message in error.message, error.format()
    assert hint in error.hint, error.format()
    assert error.detail  # the parser's own words stay available


def test_check_leads_with_plain_words_and_keeps_the_parser_text(runner, tmp_path):
    (tmp_path / "r.yaml").write_text(SLIPPED_LINE_20)
    human = runner.invoke(args=["rules", "check", str(tmp_path)])
    machine = runner.invoke(args=["rules", "check", "--json", str(tmp_path)])
    assert human.output.startswith(f"{tmp_path}/r.yaml:20:5: this line is indented differently from the lines "
                                   "around it: lines 19 and 21 start at column 7 (YAML uses indentation to nest keys")
    assert "(the YAML parser said: while parsing a block mapping expected <block end>, but found" in human.output
    [error] = json.loads(machine.output.splitlines()[0])["errors"]
    assert (error["line"], error["col"]) == (20, 5)
    assert error["detail"].startswith("while parsing a block mapping expected <block end>")


# --- aliases bounded by what they expand to ---------------------------------------------------------

def _with_peak(load, text: str):
    """`load(text)` and the most memory Python held while it ran (tracemalloc), in bytes."""
    tracemalloc.start()
    try:
        return load(text), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_aliases_of_a_long_string_are_refused_at_the_alias_that_passes_the_limit():
    # 108 KiB of YAML naming one 100 KiB string 2,000 times: 195 MiB once expanded, before this limit.
    text = ("id: bomb\nwhen: {manual: true}\ndescription: &s " + "x" * 100 * 1024 + "\n"
            "then:\n  - notify: x\n    body: y\n    tags: [" + ", ".join(["*s"] * 2000) + "]\n")
    assert 100 * 1024 < len(text) < 110 * 1024
    error, peak = _with_peak(only_error, text)
    limit = expansion_limit(text)
    uses = limit // (100 * 1024)  # copies that fit, the description itself being the first
    assert (error.file, error.line, error.col) == ("r.yaml", 7, 12 + 4 * (uses - 1))  # the `*s` in line 7 that passed it
    assert error.path == f"then[0].tags[{uses - 1}]"
    assert error.message == f"the alias *s takes the file past {limit:,} characters once its YAML aliases are expanded"
    assert "10 times the file's size" in error.hint and f"{MAX_EXPANDED_CHARS:,}" in error.hint
    assert peak < 20 * 1024 * 1024, f"loading took {peak / 2**20:.0f} MiB"


def test_aliases_of_values_without_text_count_across_the_documents_of_a_file():
    # 2.6 KB of YAML: ten documents each aliasing 42,000 numbers (under MAX_NODES per document, no
    # text to spend) were 425,000 values and 150 MiB; a 1 MB upload of them would end the process.
    level = lambda name, item: f"{name}: &{name} [" + ", ".join([item] * 20) + "]\n"
    doc = ("id: r\nwhen: {manual: true}\nthen: [{notify: x, body: y}]\n"
           + level("a", "1") + level("b", "*a") + level("c", "*b") + "d: [*c, *c, *c, *c]\n")
    text = "---\n".join([doc] * 10)
    error, peak = _with_peak(only_error, text)
    assert error.message == (f"the alias *c takes the file past {expansion_limit(text):,} characters "
                             "once its YAML aliases are expanded"), error.format()
    assert peak < 40 * 1024 * 1024, f"loading took {peak / 2**20:.0f} MiB"


def test_the_files_loaded_together_share_one_alias_budget():
    # Each file had a floor of 64 Ki characters to itself: 200 files of ~470 bytes, each aliasing 46,656
    # numbers, were a 94 KB bundle that took 12.8 million values and 19 s of CPU to refuse. The floor is
    # the load's now: of three such files, the second passes it.
    level = lambda name, item: f"{name}: &{name} [" + ", ".join([item] * 34) + "]\n"
    bomb = lambda n: (f"id: r{n}\nwhen: {{manual: true}}\nthen: [{{notify: x, body: y}}]\n"
                      + level("a", "1") + level("b", "*a") + "c: [" + ", ".join(["*b"] * 34) + "]\n")
    files = [(f"r{n}.yaml", bomb(n)) for n in range(3)]
    assert not [e for e in load_texts(files[:1]).errors if "characters" in e.message]  # one alone fits
    assert expansion_limit("".join(text for _, text in files)) == 64 * 1024

    errors = [e.format() for e in load_texts(files).errors if "characters" in e.message]

    assert errors[0].startswith("r1.yaml:6:77: c[18][30][16]: the alias *b takes the rule files loaded with it past "
                                "65,536 characters once their YAML aliases are expanded (the limit is 10 times the "
                                "size of the 3 files loaded together, at least 65,536 and at most 4,194,304 for all "
                                "of them; r0.yaml spent the most of it"), errors
    assert errors[1:] == ["r2.yaml:1:1: not read: the rule files loaded before it passed 65,536 characters once their "
                          "YAML aliases were expanded (the limit is 10 times the size of the 3 files loaded together, "
                          "at least 65,536 and at most 4,194,304 for all of them; r0.yaml spent the most of it "
                          "(41,762); repeat long values less, or write them out)"]


def test_aliases_used_as_intended_load():
    paragraph = "A long paragraph the team wants in several notifications. " * 20
    steps = "".join(f"  - notify: x\n    body: *p\n" for _ in range(20))
    text = f"id: reuse\nwhen: {{manual: true}}\ndescription: &p {paragraph}\nthen:\n{steps}"
    ruleset = load_texts([("r.yaml", text)])
    assert ruleset.errors == [] and ruleset.rules["reuse"].steps[19].args["body"] == paragraph.strip()


def test_the_limit_is_ten_times_the_file_between_a_floor_and_a_ceiling():
    assert expansion_limit("x" * 100) == 64 * 1024
    assert expansion_limit("x" * 100_000) == 1_000_000
    assert expansion_limit("x" * 1_000_000) == MAX_EXPANDED_CHARS


def test_merge_keys_load_with_positions():
    text = "id: merged\nwhen: {manual: true}\nbase: &base {notify: x, body: y}\nthen:\n  - <<: *base\n    title: t\n"
    [error] = load_texts([("r.yaml", text)]).errors  # merged keys once made the loader crash
    assert (error.line, error.message) == (3, "unknown key 'base'")
