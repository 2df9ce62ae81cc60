"""A rule's own limits, enforced by the pipeline: `concurrency` (runs at once) and `rate_limit`."""
from __future__ import annotations

from datetime import datetime

from tests.support.processes import wait_until
from tests.support.stack import PROJECT, deliver, ensure_project, runs_in, write_form_rule


def test_runs_sharing_a_concurrency_key_never_overlap(stack, sandbox, rules_dir, redis_url):
    write_form_rule(rules_dir, 'concurrency: {key: "{{ webhook.body.project }}", limit: 1}')
    ensure_project(sandbox)
    stack.worker("worker-1")
    stack.worker("worker-2")
    web = stack.web()
    sandbox.fault(kind="latency", latency_ms=1500, methods=["POST"], path="^Task$")

    for n in range(3):
        assert deliver(web, {"title": f"Task {n}", "project": PROJECT}, f"msg_{n}").status_code == 202

    wait_until(lambda: len(runs_in(redis_url, "succeeded")) == 3, 40, "three runs")
    arrivals = sorted(datetime.fromisoformat(r["at"].replace("Z", "+00:00"))
                      for r in sandbox.requests() if r["method"] == "POST" and r["path"] == "Task")
    gaps = [(b - a).total_seconds() for a, b in zip(arrivals, arrivals[1:])]
    assert len(arrivals) == 3 and min(gaps) >= 1.4, gaps  # each create began after the previous ended


def test_runs_over_the_rate_limit_wait_for_the_next_window(stack, sandbox, rules_dir, redis_url):
    write_form_rule(rules_dir, "rate_limit: {max: 2, per: 1h}")
    ensure_project(sandbox)
    stack.worker()
    web = stack.web()

    for n in range(3):
        deliver(web, {"title": f"Task {n}", "project": PROJECT}, f"msg_{n}")

    [waiting] = wait_until(lambda: [r for r in runs_in(redis_url, "queued") if "rate limit" in r["reason"]], 20,
                           "the third run to wait")
    wait_until(lambda: len(runs_in(redis_url, "succeeded")) == 2, 20, "two runs")
    assert "rate limit of form-to-task reached" in waiting["reason"]
    assert sandbox.count("Task") == 2
