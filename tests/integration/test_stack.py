"""`make run` brings up the whole stack (embedded Valkey, sandbox with demo data, web, and a worker that also polls),
a second shell's `flask` commands find it, Ctrl+C stops it quietly, and a restart invents nothing."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import redis
import requests
from rq import Worker

from tests.support.processes import ROOT, Process, free_port, wait_until
from workers.runs import TERMINAL
from workers.settings import DEFAULTS, PORTS, WEB_PORT

ALEX = {"x-api-key": "stack-token"}  # the sandbox's person (SANDBOX_TOKEN below)


def make_run(tmp_path, ports: dict, **env) -> Process:
    """`make run` on `ports`, keeping its data and settings in `tmp_path` (not the checkout's var/)."""
    given = {name: str(port) for name, port in ports.items()}
    given.update(SANDBOX_TOKEN="stack-token", REDIS_DIR=str(tmp_path / "redis"),
                 SANDBOX_DATA=str(tmp_path / "sandbox.sqlite"), STACK_ENV=str(tmp_path / "stack.env"))
    # Unset, as on a fresh machine: the Makefile must choose the embedded Redis and the sandbox.
    given.update(REDIS_URL=None, INLOOX_URL=None, INLOOX_API_KEY=None, EMBEDDED_REDIS=None)
    # No secrets key either: `make run` generates one (here beside its data) and hands it on.
    given.update(SECRETS_KEY=None, SECRETS_KEY_FILE=str(tmp_path / "secrets.key"))
    # Through the reaper: a test run killed would leave honcho and the stack under it running (make alone dies with it).
    return Process.python("-m", "tests.support.reaper", shutil.which("make") or "make", "run", name="make-run",
                          env={**given, **env})


def free_ports() -> dict:
    return {"PORT": free_port(), "SANDBOX_PORT": free_port(), "REDIS_PORT": free_port()}


@pytest.fixture
def stack(tmp_path):
    """`make run` with free ports and a private data folder, stopped (SIGTERM) afterwards."""
    ports = free_ports()
    process = make_run(tmp_path, ports)
    yield process, ports, tmp_path
    process.stop(timeout=20)


def test_make_run_serves_web_sandbox_worker_and_embedded_redis(stack):
    process, ports, tmp_path = stack
    web = f"http://127.0.0.1:{ports['PORT']}"
    process.wait_for_port(ports["PORT"], timeout=60)

    assert requests.get(f"{web}/healthz", timeout=5).json() == {"status": "ok"}
    ready = wait_until(lambda: _ready(web), timeout=30, message="/readyz to report ready")
    assert ready["checks"]["redis"]["ok"] and ready["checks"]["inloox"]["ok"]

    sandbox = f"http://127.0.0.1:{ports['SANDBOX_PORT']}/api/odata/"
    tasks = requests.get(f"{sandbox}Task/$count", headers=ALEX, timeout=5)
    assert int(tasks.text) >= 20, "the sandbox should start with the demo account's tasks"

    connection = redis.Redis(port=ports["REDIS_PORT"])
    workers = wait_until(lambda: Worker.all(connection=connection), timeout=30, message="an rq worker to register")
    assert workers[0].queue_names() == ["default"]
    wait_until(lambda: "(baseline)" in process.output(), timeout=20, message="the poller's first poll")

    # The demo flow of the README: Alex marks a task done, the example rule books its time.
    task = _mark_a_task_done(sandbox)
    entries = wait_until(lambda: _time_entries(sandbox, task), 20, "the time entry")
    assert entries[0]["TimeEntry_CreatedByDisplayName"] == "Automation Bot"
    inbox = wait_until(lambda: requests.get(f"{web}/dev/inbox", timeout=5).json()["messages"], 20, "the message")
    assert task["TaskItem_Name"] in str(inbox[0])

    process.signal(signal.SIGTERM)
    process.popen.wait(timeout=30)
    assert (tmp_path / "redis" / "appendonlydir").is_dir(), "embedded Redis must persist with AOF"


def test_flask_commands_in_a_second_shell_find_the_stack(stack):
    process, ports, tmp_path = stack
    wait_until(lambda: _ready(f"http://127.0.0.1:{ports['PORT']}"), 60, "/readyz to report ready")
    # A second shell: nothing of the stack in its environment. STACK_ENV only says where this
    # test's `make run` wrote its settings (a person's is var/stack.env, read by default).
    shell = {"PATH": os.environ["PATH"], "STACK_ENV": str(tmp_path / "stack.env")}

    runs = _flask(shell, "runs", "list")
    assert (runs.returncode, runs.stdout.strip()) == (0, "no runs"), runs.stderr
    workspaces = _flask(shell, "workspaces", "list")
    assert workspaces.returncode == 0, workspaces.stderr
    assert f"http://127.0.0.1:{ports['SANDBOX_PORT']}/api/odata/" in workspaces.stdout

    # REDIS_PORT alone names the stack's Valkey, as it did for `make run` (with the key that opens
    # the workspaces' secrets, which only the stack file or the environment hands on).
    alone = _flask({"PATH": os.environ["PATH"], "STACK_ENV": "", "REDIS_PORT": str(ports["REDIS_PORT"]),
                    "SECRETS_KEY": (tmp_path / "secrets.key").read_text().strip()}, "runs", "list")
    assert (alone.returncode, alone.stdout.strip()) == (0, "no runs"), alone.stderr


def test_the_readme_demo_and_commands_run_as_written_in_a_second_shell(stack):
    process, ports, tmp_path = stack
    wait_until(lambda: _ready(f"http://127.0.0.1:{ports['PORT']}"), 60, "/readyz to report ready")
    wait_until(lambda: "(baseline)" in process.output(), timeout=30, message="the poller's first poll")
    shell = {"PATH": os.environ["PATH"], "STACK_ENV": str(tmp_path / "stack.env")}
    readme = (ROOT / "README.md").read_text()

    # The demo block, with this stack's ports and person token for the defaults it names.
    demo = re.search(r"Try it from another shell:\n\n```sh\n(.*?)```", readme, re.S).group(1)
    demo = (demo.replace("127.0.0.1:8000", f"127.0.0.1:{ports['PORT']}")
            .replace("127.0.0.1:8090", f"127.0.0.1:{ports['SANDBOX_PORT']}").replace("sandbox-token", "stack-token"))
    wait_for_entry = "\nfor n in $(seq 40); do curl -s -H 'x-api-key: stack-token' " \
        f"\"http://127.0.0.1:{ports['SANDBOX_PORT']}/api/odata/DynamicTimeEntry/\\$count?\\$filter=TimeEntry_TaskItemId%20eq%20$TASK\"" \
        " | grep -qv '^0$' && break; sleep 0.5; done\n"
    # "within a few seconds": the block's later lines read what the engine wrote, so wait for it there.
    demo = demo.replace("# within a few seconds", wait_for_entry + "# within a few seconds", 1)
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", demo], cwd=ROOT, env=shell, capture_output=True,
                         text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert "Automation Bot" in ran.stdout and "log-time-when-task-done" in ran.stdout, ran.stdout

    # Every command of the README's command list that needs no value of the reader's own.
    commands = re.search(r"## Commands\n\n```sh\n(.*?)```", readme, re.S).group(1).splitlines()
    placeholder = re.compile(r"\b(RULE_ID|RUN_ID|EVENT_ID|EVENT\.yaml|DIR|URL|FILE)\b")
    tried = []
    for line in commands:
        command = re.sub(r"\[[^]]*\]", "", line.split("  #")[0]).strip()
        if not command.startswith(".venv/bin/flask") or placeholder.search(command):
            continue
        done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=shell, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        tried.append(command)
    assert len(tried) >= 8, tried


def test_the_stack_file_leaves_out_what_came_from_the_environment(tmp_path):
    ports = free_ports()
    # A token of the person's own (a real InLoox token, in real use) reaches the stack but no file.
    process = make_run(tmp_path, ports, SANDBOX_ENGINE_TOKEN="engine-3f9c2a", INLOOX_API_KEY="engine-3f9c2a")
    try:
        wait_until(lambda: _ready(f"http://127.0.0.1:{ports['PORT']}"), 60, "/readyz to report ready")
        written = (tmp_path / "stack.env").read_text()
    finally:
        process.stop(timeout=20)
    assert "engine-3f9c2a" not in written
    assert "# INLOOX_API_KEY was given to make run: not copied here" in written
    assert f"REDIS_URL=redis://127.0.0.1:{ports['REDIS_PORT']}/0" in written.splitlines()


def test_ctrl_c_stops_the_stack_without_a_traceback(tmp_path):
    ports = free_ports()
    process = make_run(tmp_path, ports)
    try:
        wait_until(lambda: _ready(f"http://127.0.0.1:{ports['PORT']}"), 60, "/readyz to report ready")
        wait_until(lambda: "(baseline)" in process.output(), 20, "the poller's first poll")
        process.signal(signal.SIGINT)  # what Ctrl+C in a terminal sends: make and everything below it
        process.popen.wait(timeout=20)
    finally:
        process.stop()
    output = process.output()
    assert "Traceback" not in output and "make: ***" not in output, output[-4000:]
    stops = re.findall(r"(\w+)\.1 stopped \(rc=(-?\d+)\)", output)
    assert sorted(stops) == [(name, "0") for name in ("redis", "sandbox", "web", "worker")], output[-4000:]
    # Redis stops last, so nobody on their way out finds it gone and says so.
    stopping = output[output.index("SIGINT received"):]
    assert '"level": "ERROR"' not in stopping and '"level": "WARNING"' not in stopping, stopping
    # GNU make ends by re-raising the Ctrl+C it got (after its recipe ended well), so the shell
    # knows the command was interrupted; it prints nothing.
    assert process.popen.returncode in (0, -signal.SIGINT)


def test_restarting_make_run_invents_no_events(tmp_path):
    ports = free_ports()
    web = f"http://127.0.0.1:{ports['PORT']}"
    sandbox = f"http://127.0.0.1:{ports['SANDBOX_PORT']}/api/odata/"
    fast = {"POLL_INTERVAL": "0.5", "POLL_SWEEP_SECONDS": "1"}  # deletions are found by sweeps
    process = make_run(tmp_path, ports, **fast)
    try:
        wait_until(lambda: _ready(web), 60, "/readyz to report ready")
        wait_until(lambda: "(baseline)" in process.output(), 20, "the poller's first poll")
        task = _mark_a_task_done(sandbox)  # a person's change: one event, one run, one time entry
        wait_until(lambda: _finished_runs(web), 20, "the run")
        events, runs = _events(web), _finished_runs(web)
        process.signal(signal.SIGINT)
        process.popen.wait(timeout=20)
    finally:
        process.stop()

    process = make_run(tmp_path, ports, **fast)
    try:
        wait_until(lambda: _ready(web), 60, "/readyz to report ready after the restart")
        polls = _task_polls(web)
        wait_until(lambda: _task_polls(web) >= polls + 3, 20, "the poller to poll (and sweep) after the restart")
        assert _time_entries(sandbox, task), "the sandbox keeps its data across restarts"
        assert _events(web) == events and _finished_runs(web) == runs
    finally:
        process.stop(timeout=20)


def test_make_run_and_the_settings_module_share_their_defaults():
    # A `flask` command given no settings at all must reach a `make run` given none.
    makes = {"PORT", "SANDBOX_PORT", "SANDBOX_TOKEN", "SANDBOX_ENGINE_TOKEN", "REDIS_PORT", "REDIS_DIR", "REDIS_URL",
             "INLOOX_URL", "INLOOX_API_KEY", "DEV_INBOX", "TEAM_CHANNEL_URL", "OUTBOUND_ALLOW", "SANDBOX_DATA", "STACK_ENV"}
    env = {name: value for name, value in os.environ.items() if name not in makes}
    dry = subprocess.run([shutil.which("make") or "make", "-n", "run"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    given = dict(re.findall(r"\b([A-Z_]+)=(\S+)", next(line for line in dry.stdout.splitlines() if "honcho start" in line)))
    assert {name: given[name] for name in ("REDIS_URL", "INLOOX_URL", "INLOOX_API_KEY")} == \
        {name: DEFAULTS[name] for name in ("REDIS_URL", "INLOOX_URL", "INLOOX_API_KEY")}
    assert (given["REDIS_PORT"], given["SANDBOX_PORT"]) == (PORTS["REDIS_PORT"], PORTS["SANDBOX_PORT"])
    assert given["PORT"] == WEB_PORT  # where `flask webhooks send` looks for the web by default


def _mark_a_task_done(sandbox: str) -> dict:
    """As the README's demo does: an open task without a time entry, marked done by Alex."""
    query = {"$filter": "TaskItem_IsDone eq false and TaskItem_HasTimeEntries eq false", "$top": 1,
             "$select": "TaskItem_TaskItemId,TaskItem_Name"}
    [task] = requests.get(f"{sandbox}DynamicTaskItem", params=query, headers=ALEX, timeout=5).json()["value"]
    done = requests.patch(f"{sandbox}Task({task['TaskItem_TaskItemId']})", json={"IsDone": True}, headers=ALEX, timeout=5)
    assert done.ok, done.text
    return task


def _time_entries(sandbox: str, task: dict) -> list:
    query = {"$filter": f"TimeEntry_TaskItemId eq {task['TaskItem_TaskItemId']}",
             "$select": "TimeEntry_DisplayName,TimeEntry_CreatedByDisplayName"}
    return requests.get(f"{sandbox}DynamicTimeEntry", params=query, headers=ALEX, timeout=5).json()["value"]


def _events(web: str) -> list:
    return [event["id"] for event in requests.get(f"{web}/events", timeout=5).json()["events"]]


def _finished_runs(web: str) -> list:
    runs = requests.get(f"{web}/runs", timeout=5).json()["runs"]
    return sorted((run["id"], run["status"]) for run in runs if run["status"] in TERMINAL)


def _task_polls(web: str) -> float:
    metrics = requests.get(f"{web}/metrics", timeout=5).text
    found = re.search(r'^inloox_automation_polls_total\{[^}]*entity_set="Task"[^}]*\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def _flask(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def _ready(web: str):
    response = requests.get(f"{web}/readyz", timeout=5)
    return response.json() if response.status_code == 200 else None


EXPLAIN_EVENT = """\
source: inloox
kind: updated
occurred_at: 2026-12-04T10:00:00Z
entity_set: Task
key: 3fa85f64-5717-4562-b3fc-2c963f66afa6
changes: {IsDone: [false, true]}
entity: {ProjectId: 0b4f2a9e-8c1d-4e6f-9a2b-3c4d5e6f7a8b, WorkAmount: 1, Name: N, TaskItemId: t}
"""


def test_the_first_hour_in_a_second_shell_says_what_happened(tmp_path):
    """Issue 23: explain reads the stack's settings, a scan's event id is one shell word, replay's counts
    add up, --tick fires a schedule once, and a rule file broken and fixed says so in `make run`'s output."""
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", rules)
    ports = free_ports()
    # Contacts are scanned every second here (60 by default), so a scanned change comes soon.
    process = make_run(tmp_path, ports, RULES_PATH=str(rules), POLL_SCAN_SECONDS="1", POLL_SCAN_FLOOR_SECONDS="1")
    shell = {"PATH": os.environ["PATH"], "STACK_ENV": str(tmp_path / "stack.env"), "RULES_PATH": str(rules)}
    sandbox = f"http://127.0.0.1:{ports['SANDBOX_PORT']}/api/odata/"
    flask = ".venv/bin/flask --app app "
    try:
        wait_until(lambda: _ready(f"http://127.0.0.1:{ports['PORT']}"), 60, "/readyz to report ready")
        wait_until(lambda: "poll Contact" in process.output(), 30, "the first scan of Contact")

        # 3: an env.* rule plans with no flags: the value is the one `make run` wrote to the stack file.
        (tmp_path / "event.yaml").write_text(EXPLAIN_EVENT)
        explained = _bash(shell, flask + f"rules explain --event {tmp_path / 'event.yaml'}")
        assert explained.returncode == 0, explained.stdout + explained.stderr
        assert f"json://127.0.0.1:{ports['PORT']}/dev/inbox" in explained.stdout

        # 4: a scanned change's event id, pasted unquoted, is one word that `events show` finds.
        [contact] = requests.get(f"{sandbox}Contact", params={"$top": 1}, headers=ALEX, timeout=5).json()["value"]
        changed = requests.patch(f"{sandbox}Contact({contact['ContactId']})", json={"Email": "new@example.com"},
                                 headers=ALEX, timeout=5)
        assert changed.ok, changed.text
        event_id = wait_until(lambda: _scanned_event(shell), 30, "the scanned change's event")
        shown = _bash(shell, flask + f"events show {event_id}")
        assert shown.returncode == 0 and shown.stdout.startswith(event_id + " "), shown.stdout + shown.stderr

        # 5: every event replay lists is counted once, in one of its outcomes.
        replayed = _bash(shell, flask + "events replay --since 10m --dry-run")
        assert replayed.returncode == 0, replayed.stderr
        *lines, total = replayed.stdout.splitlines()
        events, outcomes = re.match(r"(\d+) event\(s\): (.*); would start \d+ run\(s\)$", total).groups()
        assert sum(int(n) for n in re.findall(r"(\d+) [a-z]", outcomes)) == int(events) >= 1, total
        assert len({line.split()[0] for line in lines}) == int(events), replayed.stdout

        # 7: a schedule rule's next tick fires now, once.
        first = _bash(shell, flask + "rules run overdue-tasks-digest --tick")
        assert first.returncode == 0 and first.stdout.startswith("fired: the tick of "), first.stdout + first.stderr
        again = _bash(shell, flask + "rules run overdue-tasks-digest --tick")
        assert again.stdout.startswith("already fired before: "), again.stdout + again.stderr
        listed = _bash(shell, flask + "rules list")
        assert re.search(r"overdue-tasks-digest .* next tick \S+T09:00:00\+0[12]:00 \(Europe/Berlin\)", listed.stdout)

        # 1: a file broken and fixed says so, with file:line, where `make run` prints.
        form = rules / "form-to-task.yaml"
        good = form.read_text()
        form.write_text(good.replace("then:", "thne:"))
        wait_until(lambda: f"rule file broken: {form}:" in process.output(), 20, "the broken file's line")
        form.write_text(good)
        wait_until(lambda: f"rule file {form} loads again" in process.output(), 20, "the fixed file's line")
        assert process.output().count(f"rule file broken: {form}:") == 1
    finally:
        process.stop(timeout=20)


def _scanned_event(shell: dict) -> str | None:
    listed = _bash(shell, ".venv/bin/flask --app app events list --source inloox --json")
    ids = [e["id"] for e in json.loads(listed.stdout or "[]") if e["entity_set"] == "Contact"]
    return ids[0] if ids else None


def _bash(env: dict, command: str) -> subprocess.CompletedProcess:
    """A command line as a person types it in a second shell (unquoted words split as bash splits them)."""
    return subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
