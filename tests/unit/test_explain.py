"""Explain: the report `flask rules explain` prints."""
from datetime import datetime, timezone
from pathlib import Path

from engine import Event, explain, load_rules

RULES = Path(__file__).parents[2] / "rules"

NOW = datetime(2025, 4, 1, 10, 0, tzinfo=timezone.utc)
TASK = {"TaskItemId": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "ProjectId": "11111111-2222-3333-4444-555555555555",
        "WorkAmount": 0, "Name": "Spec"}


def test_explains_why_a_rule_did_not_match():
    event = Event("inloox", "updated", NOW, id="e1", entity_set="Task", key=TASK["TaskItemId"],
                  changes={"IsDone": (False, True)}, entity=TASK)
    report = explain(event, load_rules(RULES), now=NOW, env={})
    lines = report.lines()
    assert lines[0] == f"event e1: inloox updated Task({TASK['TaskItemId']}) at 2025-04-01T10:00:00+00:00"
    assert "✗ log-time-when-task-done [Task updated changing IsDone]: if.all[0]: task.WorkAmount was 0, wanted gt 0" \
        in lines
    assert report.to_dict()["rules"][0]["matched"] is False


def test_explains_operations_of_a_match_including_deferred_ones():
    event = Event("schedule", "overdue-tasks-digest", NOW, id="e2", payload={"time": "2025-04-01T07:00:00Z"})
    lines = explain(event, load_rules(RULES), now=NOW, env={"TEAM_CHANNEL_URL": "https://hooks.test"}).lines()
    assert "✓ overdue-tasks-digest [schedule 0 9 * * 1-5 (Europe/Berlin) | manual run]: matched" in lines
    assert any(line.startswith('    for each: query {"entity_set": "Task"') and line.endswith("grouped by ContactId")
               for line in lines)
    assert any(line.startswith("    0. step0: notify → notify deferred until its item") for line in lines)


def test_explains_holds():
    event = Event("inloox", "created", NOW, id="e3", entity_set="Task", key="k", entity={"Name": "New"})
    lines = explain(event, load_rules(RULES), now=NOW, env={"TEAM_CHANNEL_URL": "https://hooks.test"}).lines()
    assert ("✓ unassigned-task-alert [Task created, held for 1h]: matched; held 1h, then re-checked "
            "before it runs") in lines


def test_lists_rules_that_did_not_load(tmp_path):
    (tmp_path / "ok.yaml").write_text((RULES / "archive-project.yaml").read_text())
    (tmp_path / "bad.yaml").write_text("id: bad\nwhen: {manual: true}\n")
    event = Event("manual", "archive-project", NOW, id="e4", payload={"project_id": "p"})
    lines = explain(event, load_rules(tmp_path), now=NOW, env={}).lines()
    assert lines[-1] == f"skipped (did not load): {tmp_path}/bad.yaml:1:1: 'then' is a required property"


def test_the_report_carries_the_plans_evaluate_makes_including_failed_ones():
    from engine import evaluate

    event = Event("schedule", "overdue-tasks-digest", NOW, id="e4", payload={"time": "2025-04-01T07:00:00Z"})
    ruleset = load_rules(RULES)
    # Without TEAM_CHANNEL_URL the notify template fails: a plan with an error, which runs nothing.
    for env in ({"TEAM_CHANNEL_URL": "https://hooks.test"}, {}):
        report = explain(event, ruleset, now=NOW, env=env)
        assert list(report.plans) == evaluate(event, ruleset, now=NOW, env=env)
        assert len(report.plans) == 1 and bool(report.plans[0].error) == (env == {})
