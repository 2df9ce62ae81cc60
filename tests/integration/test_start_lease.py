"""Issue 22: the first live run of an event takes its lease in the script that stores it.

A worker killed right after storing an event's runs (failpoint `runs_stored`) leaves a queued run
whose lease it holds: nobody else may start it until that lease runs out, and then another worker
(the sweeper, workers/recovery.py) finishes it, once. docs/execution.md, "Crash points".
"""
from __future__ import annotations

import signal

import pytest
import redis

from tests.support.crashes import armed_worker, died_at
from tests.support.processes import wait_until
from tests.support.stack import PREFIX, PROJECT, all_runs, deliver, ensure_project, write_form_rule

RECOVERY_LIMIT = 60  # seconds after the second worker starts (issue 11's limit for every crash point)


@pytest.mark.timeout(150)
def test_a_worker_killed_between_storing_a_run_and_executing_it_leaves_it_to_another_once(
        stack, sandbox, rules_dir, redis_url):
    stack.env["INLOOX_TIMEOUT"] = "2"  # a run lease of 3 x 2 + 15 = 21 s (no InLoox request is in flight at the kill)
    write_form_rule(rules_dir)
    ensure_project(sandbox)
    web = stack.web()
    worker = armed_worker(stack, "worker-1", "runs_stored")
    assert deliver(web, {"title": "Stored, not run", "project": PROJECT}, "msg_stored").status_code == 202
    wait_until(lambda: not worker.alive(), 30, "worker-1 to die at runs_stored")
    assert worker.popen.returncode == -signal.SIGKILL and died_at(worker) == "runs_stored"

    [run] = all_runs(redis_url)
    assert run["status"] == "queued" and sandbox.count("Task") == 0
    assert redis.Redis.from_url(redis_url).exists(f"{PREFIX}run-lock:{run['id']}"), "the lease taken with the record"

    stack.worker("worker-2")
    wait_until(lambda: all_runs(redis_url)[0]["status"] == "succeeded", RECOVERY_LIMIT, "worker-2 to finish the run")
    assert sandbox.count("Task", "Name eq 'Stored, not run'") == 1
