"""`flask rules explain` in a second shell reads the settings every other `flask` command reads: the
values rules use as `env.NAME` come from `var/stack.env` (where `make run` wrote them) with no flags."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.support.processes import ROOT

EVENT = """\
source: inloox
kind: updated
occurred_at: 2025-04-01T10:00:00Z
entity_set: Task
key: 3fa85f64-5717-4562-b3fc-2c963f66afa6
changes: {IsDone: [false, true]}
entity: {ProjectId: 0b4f2a9e-8c1d-4e6f-9a2b-3c4d5e6f7a8b, WorkAmount: 1, Name: N, TaskItemId: t}
"""


def explain(tmp_path, **environ) -> subprocess.CompletedProcess:
    (tmp_path / "event.yaml").write_text(EVENT)
    env = {"PATH": os.environ["PATH"], **environ}
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", "rules", "explain",
                           "--event", str(tmp_path / "event.yaml"), "--rules", "rules"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_explain_plans_an_env_template_from_the_stack_file_with_no_flags(tmp_path):
    (tmp_path / "stack.env").write_text("TEAM_CHANNEL_URL=json://127.0.0.1:8000/dev/inbox\n")
    done = explain(tmp_path, STACK_ENV=str(tmp_path / "stack.env"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "✓ log-time-when-task-done" in done.stdout and "json://127.0.0.1:8000/dev/inbox" in done.stdout


def test_explain_still_names_an_env_value_no_setting_gives(tmp_path):
    done = explain(tmp_path, STACK_ENV="")
    assert done.returncode == 1
    assert "env.TEAM_CHANNEL_URL is undefined" in done.stdout
    assert "1 matched rule(s) cannot be planned: log-time-when-task-done" in done.stderr
