"""A rule bundle validated in a child process of the web (web/bundle_check.py): its limits, its answer, its end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bundled import large_bundle
from tests.support.processes import wait_until
from web.bundle_check import TooCostly, check_in_child, compare, whatif_in_child
from workers.bundles import check
from workers.workspaces import Workspace

ROOT = Path(__file__).parents[2]
RULES = ROOT / "rules"
ADMIN = "globex-admin-token"


@pytest.fixture
def api(redis_url):
    """A web app whose uploads may take 1 s of CPU to check (the default is 30): the 1 MB bundle takes ~5 s."""
    from app import create_app

    globex = Workspace("globex", "http://127.0.0.1:9", "unused", admin_token=ADMIN)
    return create_app({"TESTING": True, "REDIS_URL": redis_url, "WORKSPACES": {"globex": globex},
                       "BUNDLE_CHECK_CPU_SECONDS": "1"}).test_client()


def test_a_bundle_that_takes_longer_to_check_than_allowed_is_refused_413_and_nothing_is_stored(api):
    # Checked in the web process, the 1 MB bundle held the process's GIL for ~5 s (every webhook on it slowed down);
    # checked in a child held to its CPU limit, the upload that costs more is refused, saying why.
    headers = {"Authorization": f"Bearer {ADMIN}"}

    refused = api.put("/workspaces/globex/rules", json={"files": large_bundle()}, headers=headers)

    assert refused.status_code == 413, refused.get_data(as_text=True)[:500]
    assert refused.get_json()["error"]["message"] == (
        "the rule bundle is too costly to check: validating it takes more than 1 s of CPU time, the most an upload "
        "may use; upload fewer or simpler rules")
    assert api.get("/workspaces/globex/rules", headers=headers).get_json()["versions"] == []
    small = {"files": {"tasks.yaml": (RULES / "log-time-when-task-done.yaml").read_text()}}
    assert api.put("/workspaces/globex/rules", json=small, headers=headers).status_code == 201


def test_a_bundle_that_needs_more_memory_to_check_than_allowed_is_too_costly():
    # 240,000 list items: ~200 MB of YAML nodes before the values are counted (and refused), from a 1 MB file.
    files = {"list.yaml": "id: x\nwhen: [{manual: true}]\nthen: [{notify: x, body: y}]\nv:\n" + "- a\n" * 240_000}

    with pytest.raises(TooCostly) as refused:
        check_in_child(files, cpu_seconds=30, memory_bytes=64 * 1024 * 1024)

    assert str(refused.value) == ("the rule bundle is too costly to check: validating it takes more than 64 MiB of "
                                  "memory, the most an upload may use; upload fewer or simpler rules")


def test_the_child_finds_the_rules_and_errors_the_web_itself_would():
    log_time = (RULES / "log-time-when-task-done.yaml").read_text()
    files = {
        "good.yaml": log_time,
        "typo.yaml": log_time.replace("id: log-time-when-task-done", "id: typo").replace("  changes:", "  chnages:"),
        "twice.yaml": log_time,  # a duplicate id
        "broken.yml": "id: x\nwhen: [\n",
        "tagged.yaml": "id: y\nv: !custom 3\n",
        "surrogate.yaml": 'id: "\\ud800"\n',
    }

    here, there = check(files), check_in_child(files, cpu_seconds=30)

    assert there.rule_ids == here.rule_ids == ["log-time-when-task-done"]
    assert [str(e) for e in there.errors] == [str(e) for e in here.errors] and len(here.errors) >= 5
    assert [vars(e) for e in there.errors] == [vars(e) for e in here.errors]


def test_the_child_compares_two_versions_as_the_web_itself_would():
    # The what-if page compared in the web (two compiles of ~5.6 s of CPU for the largest bundles, then seconds of
    # planning, in the web's one GIL); the child compiles and plans the same, to the same report.
    log_time = (RULES / "log-time-when-task-done.yaml").read_text()
    active = {"tasks.yaml": log_time, "other.yaml": (RULES / "form-to-task.yaml").read_text()}
    candidate = {"tasks.yaml": log_time.replace("{path: task.WorkAmount, op: gt, value: 0}",
                                                "{path: task.WorkAmount, op: gt, value: 2}")}
    events = [(_task_done(f"done-{hours}h", hours), 1_764_489_600.0 + hours) for hours in (0, 1, 3)]
    # A lone surrogate, as a logged webhook body may hold: the JSON on the pipe carries it as the web holds it.
    events.append(({"id": "form-odd", "source": "webhook", "kind": "forms", "occurred_at": "2026-11-30T08:00:00+00:00",
                    "payload": {"body": {"title": "half \ud83d a pair", "project_number": 7}, "headers": {}}}, 1.5e9))

    here = compare(candidate, active, events, env={"TEAM": "a"}, seconds=600)
    there = whatif_in_child(candidate, active, events, env={"TEAM": "a"}, seconds=600, cpu_seconds=30)

    assert there == here
    assert here["events"] == 4 and here["changed_events"] == ["done-1h", "form-odd"]
    assert [(rule["rule_id"], rule["lost"]) for rule in here["rules"]] == [("form-to-task", 1),
                                                                            ("log-time-when-task-done", 1)]


WHATIF_MEMORY = 96 * 1024 * 1024  # the child's memory limit in these tests (512 MiB on the web)


def _large_forms(count: int):
    """`count` logged webhook events of ~90 KB as JSON each (é is written \\u00e9), made one at a time."""
    for n in range(count):
        body = {"title": f"Form {n}", "project_number": 7, "text": f"{n:06d} é" * 7000}
        yield ({"id": f"form-{n}", "source": "webhook", "kind": "forms", "occurred_at": "2026-11-30T08:00:00+00:00",
                "payload": {"body": body, "headers": {}}}, 1.5e9 + n)


def test_a_comparison_of_more_events_than_the_childs_memory_holds_is_the_same_report_as_in_the_web():
    # Sent as one message, the events were read whole by the child (the message and the events parsed from it) and
    # past its memory limit the page said the comparison was too costly: 10,000 webhook bodies of 64 KiB are over
    # 600 MiB. They go a line at a time now, read as they are planned.
    form = (RULES / "form-to-task.yaml").read_text()
    active = {"forms.yaml": form}
    candidate = {"forms.yaml": form.replace("id: form-to-task", "id: form-to-task-renamed")}
    count = 1200
    assert sum(len(json.dumps([event, at])) for event, at in _large_forms(count)) > WHATIF_MEMORY  # no one message

    here = compare(candidate, active, _large_forms(count), env={}, seconds=600)
    there = whatif_in_child(candidate, active, _large_forms(count), env={}, seconds=600, cpu_seconds=60,
                            memory_bytes=WHATIF_MEMORY)

    assert there == here
    assert here["events"] == count and here["changed_events"] == [f"form-{n}" for n in range(count)]
    assert [(rule["rule_id"], rule["lost"], rule["new"]) for rule in here["rules"]] == [
        ("form-to-task", count, 0), ("form-to-task-renamed", 0, count)]


def test_a_comparison_cut_by_its_planning_time_leaves_the_rest_of_the_events_unsent():
    # The child stops reading once its planning time is up, and answers with what it compared; the web sends no
    # more (on the page: reads no more of the log for it) and shows that report.
    form = (RULES / "form-to-task.yaml").read_text()
    sent = []

    def events():
        for n in range(50_000):  # some hundreds of times what the child plans in its 0.2 s
            sent.append(f"form-{n}")
            yield ({"id": f"form-{n}", "source": "webhook", "kind": "forms", "occurred_at": "2026-11-30T08:00:00+00:00",
                    "payload": {"body": {"title": f"Form {n}", "project_number": 7}, "headers": {}}}, 1.5e9 + n)

    there = whatif_in_child({"forms.yaml": form}, {}, events(), env={}, seconds=0.2, cpu_seconds=60,
                            memory_bytes=WHATIF_MEMORY)

    assert 0 < there["events"] < len(sent) < 50_000
    assert there["changed_events"] == sent[:there["events"]]

def _task_done(event_id: str, work: float) -> dict:
    task = {"TaskItemId": "0f8fad5b-d9cb-469f-a165-70867728950e", "Name": "Write report", "WorkAmount": work,
            "ProjectId": "b3f1e2c4-0000-4000-8000-000000000001", "IsDone": True}
    return {"id": event_id, "source": "inloox", "kind": "updated", "occurred_at": "2026-11-30T08:00:00+00:00",
            "entity_set": "Task", "key": task["TaskItemId"], "changes": {"IsDone": [False, True]},
            "entity": task, "actor": {"ContactId": "someone"}, "payload": {}, "chained": False}


def test_a_check_ends_with_the_process_that_started_it(tmp_path):
    """A web killed outright (SIGKILL) leaves no check running: the kernel kills the child (PR_SET_PDEATHSIG)."""
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(large_bundle()))
    script = ("import json, sys; from web.bundle_check import check_in_child; "
              "check_in_child(json.load(open(sys.argv[1])), cpu_seconds=60)")
    starter = subprocess.Popen([sys.executable, "-c", script, str(bundle)], cwd=ROOT)
    children: list[int] = []
    try:
        # The child is under way once it runs at its lower priority: it asked for its parent's death signal before.
        children.append(wait_until(lambda: _child_of(starter.pid, nice=10), 30, "the check's child process to start"))
        os.kill(children[0], signal.SIGSTOP)  # stopped, it would stay for good were nothing to kill it
        starter.kill()
        starter.wait()
        wait_until(lambda: _state(children[0]) in (None, "Z"), 10, "the check's child to end with its parent")
    finally:
        starter.kill()
        starter.wait()
        for pid in children:  # only should the test fail: the stopped child left behind
            if _state(pid) not in (None, "Z"):
                os.kill(pid, signal.SIGKILL)


def _children_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None and int(stat[1]) == parent:
            found.append(int(entry))
    return found


def _child_of(parent: int, *, nice: int) -> int | None:
    return next((pid for pid in _children_of(parent) if int(_stat(pid)[16]) == nice), None)


def _state(pid: int) -> str | None:
    stat = _stat(pid)
    return stat[0] if stat is not None else None


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command's name: state, ppid, ... (None when the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()
