"""The worker and the poller log JSON lines, with the run id on a run's lines and never the InLoox token."""
from __future__ import annotations

import json

from tests.support.processes import wait_until
from tests.support.stack import ENGINE_TOKEN, PROJECT, deliver, ensure_project, runs_in, write_form_rule


def json_lines(process) -> list[dict]:
    lines = [line for line in process.output().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # fails on any line that is not JSON


def test_worker_and_poller_lines_are_json_with_the_run_id_and_no_token(engine, sandbox, rules_dir, redis_url):
    write_form_rule(rules_dir)
    ensure_project(sandbox)
    worker, poller = engine.worker(), engine.poller()
    web = engine.web()

    deliver(web, {"title": "Call Ann", "project": PROJECT}, "msg_logs")
    [run] = wait_until(lambda: runs_in(redis_url, "succeeded"), 20, "the run")
    wait_until(lambda: any(run["id"] == line.get("run_id") and "succeeded" in line["message"]
                           for line in json_lines(worker)), 10, "the run's last log line")

    assert {"time", "level", "logger", "message"} <= set(json_lines(worker)[0])
    assert json_lines(poller), "the poller logs its start"
    assert ENGINE_TOKEN not in worker.output() + poller.output()
