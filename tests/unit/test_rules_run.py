"""`flask rules run RULE_ID --dry-run`: the plan a manual run would make, and refusals, without Redis."""
from pathlib import Path

import pytest

from app import create_app

RULES = Path(__file__).parents[2] / "rules"


@pytest.fixture
def runner():
    # No Redis (port 1 answers nobody): the default port is `make run`'s, whose registry, sealed with another key,
    # made every test here fail while a developer's stack ran beside the tests ("no workspace 'default'").
    app = create_app({"TESTING": True, "RULES_PATH": str(RULES), "RULES_ENV": "", "INLOOX_REQUESTS_PER_SECOND": "0",
                      "REDIS_URL": "redis://127.0.0.1:1/0"})
    return app.test_cli_runner()


def test_dry_run_prints_the_plan_and_writes_nothing(runner):
    result = runner.invoke(args=["rules", "run", "overdue-tasks-digest", "--dry-run",
                                 "--env", "TEAM_CHANNEL_URL=json://hooks.example.test/team"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("event manual:overdue-tasks-digest:") and " manual overdue-tasks-digest at " in lines[0]
    assert "✓ overdue-tasks-digest [schedule 0 9 * * 1-5 (Europe/Berlin) | manual run]: matched" in lines
    assert any(line.startswith('    for each: query {"entity_set": "Task"') for line in lines)
    assert lines[-1] == "dry run: nothing was written"


def test_dry_run_with_a_given_event(runner, tmp_path):
    event = tmp_path / "event.yaml"
    event.write_text("source: schedule\nkind: overdue-tasks-digest\noccurred_at: 2025-04-01T07:00:00Z\n"
                     "payload: {time: '2025-04-01T07:00:00Z'}\n")
    result = runner.invoke(args=["rules", "run", "overdue-tasks-digest", "--event", str(event), "--dry-run",
                                 "--env", "TEAM_CHANNEL_URL=json://x"])
    assert result.exit_code == 0, result.output
    assert "event ev_" in result.output.splitlines()[0] and "schedule overdue-tasks-digest" in result.output


def test_dry_run_needs_no_env_the_worker_fills_it_in(runner, tmp_path):
    event = tmp_path / "event.yaml"
    event.write_text("source: schedule\nkind: overdue-tasks-digest\noccurred_at: 2025-04-01T07:00:00Z\n"
                     "payload: {time: '2025-04-01T07:00:00Z'}\n")
    result = runner.invoke(args=["rules", "run", "overdue-tasks-digest", "--event", str(event), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "undefined" not in result.output


@pytest.mark.parametrize("rule_id, words", [
    ("log-time-when-task-done", "add `- manual: true` to its when: to run it by hand"),
    ("overdue-task-digest", "no rule 'overdue-task-digest'. did you mean 'overdue-tasks-digest'?"),
])
def test_a_rule_that_would_not_run_is_refused_with_its_reason(runner, rule_id, words):
    # (A rule reading env.* is not refused for want of it: the worker fills env in when the step runs.)
    result = runner.invoke(args=["rules", "run", rule_id, "--dry-run"])
    assert result.exit_code == 1
    assert words in result.output


def test_a_manual_rule_that_reads_input_is_given_it_with_input_pairs(runner):
    """As the dashboard's form asks for a manual rule's input, `--input NAME=VALUE` gives it; without it the
    refusal says how."""
    result = runner.invoke(args=["rules", "run", "archive-project", "--dry-run"])
    assert result.exit_code == 1
    assert "input.project_id is undefined" in result.output and "(give it with --input NAME=VALUE)" in result.output
    result = runner.invoke(args=["rules", "run", "archive-project", "--dry-run",
                                 "--input", "project_id=3fa85f64-5717-4562-b3fc-2c963f66afa6",
                                 "--input", "reason=done by hand"])
    assert result.exit_code == 0, result.output
    assert '"key": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "values": {"IsArchived": true}' in result.output
    assert "<p>Archived by hand: done by hand</p>" in result.output
    # NaN and Infinity are Python's JSON, not JSON: text, as a webhook body's would be refused
    result = runner.invoke(args=["rules", "run", "archive-project", "--dry-run", "--input", "reason=NaN",
                                 "--input", "project_id=3fa85f64-5717-4562-b3fc-2c963f66afa6"])
    assert "<p>Archived by hand: NaN</p>" in result.output and "nan" not in result.output
    assert result.output.splitlines()[-1] == "dry run: nothing was written"


@pytest.mark.parametrize("args, words", [
    (["--input", "project_id"], "'project_id' is not NAME=VALUE"),
    (["--input", "a=1", "--tick"], "--input is the manual event's"),
])
def test_input_pairs_that_cannot_be_used_are_refused(runner, args, words):
    result = runner.invoke(args=["rules", "run", "archive-project", "--dry-run", *args])
    assert result.exit_code == 2 and words in result.output
