"""`flask rules check|test|explain|schema` through Flask's CLI runner, as a user runs them."""
import json
from pathlib import Path

import pytest
from flask import Flask

from web.rules_cli import rules_cli

RULES = Path(__file__).parents[2] / "rules"
EVENT = """\
source: inloox
kind: updated
occurred_at: 2025-04-01T10:00:00Z
entity_set: Task
key: 3fa85f64-5717-4562-b3fc-2c963f66afa6
changes: {IsDone: [false, true]}
entity: {ProjectId: 0b4f2a9e-8c1d-4e6f-9a2b-3c4d5e6f7a8b, WorkAmount: 0}
"""


@pytest.fixture
def runner():
    app = Flask("rules-cli-test")
    app.cli.add_command(rules_cli)
    return app.test_cli_runner()


def test_check_passes_on_the_example_rules(runner):
    result = runner.invoke(args=["rules", "check", str(RULES)])
    assert result.exit_code == 0, result.output
    # Each example file holds one rule.
    assert result.output.startswith(f"ok: {len(list(RULES.glob('*.yaml')))} rule(s)")


def test_check_reports_errors_with_positions_and_exit_1(runner, tmp_path):
    (tmp_path / "good.yaml").write_text((RULES / "archive-project.yaml").read_text())
    (tmp_path / "bad.yaml").write_text("id: bad\nwhen: {inloox: Task}\nif:\n  - {path: task.Statuss, op: eq, value: x}\n"
                                       "then: [{inloox.delete: Task}]\n")
    result = runner.invoke(args=["rules", "check", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path}/bad.yaml:4:12: if[0].path: Task has no field 'Statuss'" in result.output
    assert f"skipped rule bad in {tmp_path}/bad.yaml" in result.output
    assert "Error: 1 error(s); 1 rule(s) loaded" in result.output


def test_check_json(runner, tmp_path):
    (tmp_path / "bad.yaml").write_text("id: a\nwhen: {manual: true}\n")
    result = runner.invoke(args=["rules", "check", "--json", str(tmp_path)])
    report = json.loads(result.output.splitlines()[0])
    assert report["errors"][0]["message"] == "'then' is a required property" and result.exit_code == 1


def test_check_refuses_event_text_pasted_into_a_filter(runner, tmp_path):
    (tmp_path / "r.yaml").write_text(
        "id: find\nwhen: {webhook: forms}\nthen:\n"
        "  - inloox.query: Project\n"
        "    filter: \"Number eq '{{ webhook.body.number }}'\"\n")
    result = runner.invoke(args=["rules", "check", str(tmp_path)])
    assert result.exit_code == 1
    assert (f"{tmp_path}/r.yaml:5:13: then[0].filter: {{{{ webhook.body.number }}}} in a filter is not written as an "
            "OData literal (end the expression in | odata, e.g. {{ webhook.body.number | odata }})") in result.output


def test_test_runs_the_example_fixtures(runner):
    result = runner.invoke(args=["rules", "test", str(RULES)])
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output and result.output.rstrip().endswith("case(s) passed")


def test_test_reports_a_failing_case(runner, tmp_path):
    (tmp_path / "r.yaml").write_text((RULES / "archive-project.yaml").read_text())
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "cases.yaml").write_text(
        "- name: wrong field\n"
        "  event: {source: manual, kind: archive-project, occurred_at: 2025-04-01T00:00:00Z,\n"
        "          payload: {project_id: p}}\n"
        "  expect:\n"
        "    archive-project: {operations: [{params: {values: {IsArchived: false}}}, {}]}\n")
    result = runner.invoke(args=["rules", "test", str(tmp_path)])
    assert result.exit_code == 1
    assert f"FAIL {tmp_path}/tests/cases.yaml:1 wrong field" in result.output
    assert "archive-project: plan.operations[0].params.values.IsArchived was True, expected False" in result.output


def test_explain_prints_reasons(runner, tmp_path):
    (tmp_path / "event.yaml").write_text(EVENT)
    result = runner.invoke(args=["rules", "explain", "--event", str(tmp_path / "event.yaml"), "--rules", str(RULES)])
    assert result.exit_code == 0, result.output
    assert "✗ log-time-when-task-done [Task updated changing IsDone]: if.all[0]: task.WorkAmount was 0, wanted gt 0" \
        in result.output


def test_explain_json_with_now_and_env(runner, tmp_path):
    (tmp_path / "event.yaml").write_text(EVENT.replace("WorkAmount: 0", "WorkAmount: 1, Name: N, TaskItemId: t"))
    result = runner.invoke(args=["rules", "explain", "--event", str(tmp_path / "event.yaml"), "--rules", str(RULES),
                                 "--now", "2025-04-01T12:00:00Z", "--env", "TEAM_CHANNEL_URL=json://x", "--json"])
    report = json.loads(result.output)
    (rule,) = report["rules"]
    assert rule["matched"] and rule["plan"]["planned_at"] == "2025-04-01T12:00:00Z"


@pytest.mark.parametrize("args,message", [
    (["--now", "yesterday"], "is not an ISO date-time"),
    (["--env", "NOEQUALS"], "is not NAME=VALUE"),
])
def test_explain_bad_options_exit_2(runner, tmp_path, args, message):
    (tmp_path / "event.yaml").write_text(EVENT)
    result = runner.invoke(args=["rules", "explain", "--event", str(tmp_path / "event.yaml"), "--rules", str(RULES), *args])
    assert result.exit_code == 2 and message in result.output


def test_explain_refuses_a_non_event(runner, tmp_path):
    (tmp_path / "event.yaml").write_text("source: email\nkind: x\noccurred_at: 2025-04-01T00:00:00Z\n")
    result = runner.invoke(args=["rules", "explain", "--event", str(tmp_path / "event.yaml"), "--rules", str(RULES)])
    assert result.exit_code == 1 and "not an event: unknown event source 'email'" in result.output


def test_schema_prints_the_checked_in_schema(runner):
    result = runner.invoke(args=["rules", "schema"])
    assert json.loads(result.output) == json.loads((RULES.parent / "schemas" / "rule.schema.json").read_text())


def test_explain_exits_1_when_a_matched_rule_cannot_be_planned(runner, tmp_path, monkeypatch):
    monkeypatch.delenv("TEAM_CHANNEL_URL", raising=False)  # no setting gives it
    (tmp_path / "event.yaml").write_text(EVENT.replace("WorkAmount: 0", "WorkAmount: 1, Name: N, TaskItemId: t"))
    result = runner.invoke(args=["rules", "explain", "--event", str(tmp_path / "event.yaml"), "--rules", str(RULES)])
    assert result.exit_code == 1
    assert "env.TEAM_CHANNEL_URL is undefined" in result.output
    assert "1 matched rule(s) cannot be planned: log-time-when-task-done" in result.output


def test_explain_reads_the_rules_at_rules_path_by_default(tmp_path):
    (tmp_path / "event.yaml").write_text(EVENT)
    app = Flask("rules-cli-test")
    app.config["RULES_PATH"] = str(RULES)
    app.cli.add_command(rules_cli)
    result = app.test_cli_runner().invoke(args=["rules", "explain", "--event", str(tmp_path / "event.yaml")])
    assert result.exit_code == 0, result.output
    assert "log-time-when-task-done" in result.output


def test_test_json_lists_each_case(runner):
    result = runner.invoke(args=["rules", "test", str(RULES), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["failed"] == 0 and report["cases"] and all(c["passed"] for c in report["cases"])
    assert {"file", "line", "name", "problems"} <= set(report["cases"][0])


@pytest.mark.parametrize("text,message", [
    # A webhook's body beside source: instead of under payload: made every webhook.body condition "missing".
    ("source: webhook\nkind: forms\noccurred_at: 2025-04-01T00:00:00Z\nbody: {title: t}\n",
     "not an event: unknown key 'body': an event has source, kind, occurred_at"),
    ("source: webhook\nkind: forms\noccurred_at: 2025-04-01T00:00:00Z\nbody: {title: t}\n",
     "(a webhook's body and headers go under payload: {body: …, headers: …})"),
    ("source: webhook\nkind: forms\npayload: {body: {}}\n",
     "not an event: occurred_at is missing: an ISO date-time with an offset, e.g. 2025-04-01T09:00:00Z"),
    ("kind: forms\noccurred_at: 2025-04-01T00:00:00Z\n", "not an event: source is missing: one of inloox, webhook"),
    ("- source: webhook\n", "not an event: an event is a mapping with source, kind, occurred_at, not list"),
])
def test_explain_says_what_an_event_file_lacks(runner, tmp_path, text, message):
    (tmp_path / "event.yaml").write_text(text)
    result = runner.invoke(args=["rules", "explain", "--event", str(tmp_path / "event.yaml"), "--rules", str(RULES)])
    assert result.exit_code == 1 and message in result.output, result.output


def test_explain_takes_the_output_of_events_show_json(runner, tmp_path):
    shown = {"event": {"id": "webhook:forms:msg_1", "source": "webhook", "kind": "forms",
                       "occurred_at": "2025-04-01T08:00:00+00:00", "entity_set": None, "key": None, "changes": {},
                       "entity": {}, "actor": {}, "payload": {"body": {"title": "t"}}, "chained": False},
             "summary": {"status": "ran"}}
    (tmp_path / "event.json").write_text(json.dumps(shown))
    result = runner.invoke(args=["rules", "explain", "--event", str(tmp_path / "event.json"), "--rules", str(RULES)])
    assert result.exit_code == 0, result.output
    assert "form-to-task [webhook forms]: if[0]: webhook.body.project_number was missing" in result.output


def test_check_says_when_the_stack_has_not_yet_read_a_file_fixed_since(runner, tmp_path, monkeypatch):
    (tmp_path / "fixed.yaml").write_text((RULES / "archive-project.yaml").read_text())
    (tmp_path / "bad.yaml").write_text("id: bad\nwhen: {inloox: Tasks}\nthen: [{inloox.delete: Task}]\n")
    stack = [{"file": "fixed.yaml", "since": 1.0, "running": False}, {"file": "bad.yaml", "since": 1.0, "running": False}]
    monkeypatch.setattr("web.rules_cli._running_state", lambda path: stack)
    result = runner.invoke(args=["rules", "check", str(tmp_path)])
    lines = result.output.splitlines()
    assert ("fixed.yaml: broken since 1970-01-01 00:00 UTC; none of its rules run (it has never loaded) (as the stack "
            "last read it: the file loads now, and the stack takes it up within seconds)") in lines
    assert "bad.yaml: broken since 1970-01-01 00:00 UTC; none of its rules run (it has never loaded)" in lines


def test_check_warns_when_the_folder_holds_no_rule_file(runner, tmp_path):
    # The rules sit one folder down: "ok: 0 rule(s)" alone read as if they had passed.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "r.yaml").write_text((RULES / "archive-project.yaml").read_text())
    result = runner.invoke(args=["rules", "check", str(tmp_path)])
    assert result.exit_code == 0
    assert (f"warning: no rule files in {tmp_path}: rules are the *.yaml and *.yml files directly in the folder, "
            f"not in its subfolders (not read: {tmp_path}/mine/r.yaml)") in result.output
    assert "warning" not in runner.invoke(args=["rules", "check", str(RULES)]).output
