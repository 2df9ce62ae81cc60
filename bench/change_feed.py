"""The change feed under load: 100 subscriptions on every Task change, and what that does to rule runs.

    .venv/bin/python bench/change_feed.py [--changes 20] [--subscriptions 100]

One worker and one poller against the sandbox; a rule books a time entry for each task ticked done.
Phase 1 ticks `--changes` tasks with no subscription; phase 2 adds `--subscriptions` subscriptions
to Task.updated (all pointing at one local receiver) and ticks as many other tasks. Reported: how
long each run took from the change in InLoox to its last step (median, p90) in both phases, and how
long until every delivery of phase 2 was received. Run by hand; figures go in bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402
import requests  # noqa: E402

from bench.harness import Process, free_port, machine, redis_server, rq_worker, sandbox, summary, wait_until  # noqa: E402
from tests.support.receiver import Receiver  # noqa: E402
from workers import subscriptions, workspaces  # noqa: E402
from workers.runs import decode_run  # noqa: E402
from workers.secrets import Keyring, generate_key  # noqa: E402

PERSON, ENGINE = "bench-person", "bench-engine"
RULE = """
id: book-done-tasks
when:
  - inloox: Task
    on: updated
    changes:
      IsDone: {from: false, to: true}
then:
  - inloox.create: TimeEntry
    values:
      ProjectId: "{{ task.ProjectId }}"
      TaskItemId: "{{ task.TaskItemId }}"
      DisplayName: "{{ task.Name }}"
      StartDateTime: "{{ (now - hours(1)) | isoformat }}"
      EndDateTime: "{{ now | isoformat }}"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--subscriptions", type=int, default=100)
    args = parser.parse_args()
    print(machine())

    server = redis_server()
    port = free_port()
    inloox = sandbox(port, PERSON, engine_token=ENGINE)
    base = f"http://127.0.0.1:{port}/api/odata/"
    rules = Path(tempfile.mkdtemp(prefix="bench-feed-rules-"))
    (rules / "book.yaml").write_text(RULE)
    url = f"{server.connection_url}/0"
    env = {"REDIS_URL": url, "INLOOX_URL": base, "INLOOX_API_KEY": ENGINE, "RULES_PATH": str(rules),
           "OUTBOUND_ALLOW": "127.0.0.1", "POLL_INTERVAL": "1", "INLOOX_REQUESTS_PER_SECOND": "0",
           "SECRETS_KEY": generate_key()}  # subscription secrets are stored sealed; the worker opens them
    session = requests.Session()
    session.headers["x-api-key"] = PERSON
    project = session.post(base + "Project", json={"Name": "Bench"}).json()["ProjectId"]
    tasks = [session.post(base + "Task", json={"Name": f"Task {n}", "ProjectId": project, "WorkAmount": 1}).json()["TaskItemId"]
             for n in range(2 * args.changes)]
    receiver = Receiver()
    connection = redis.Redis.from_url(url)
    processes = [rq_worker(env), Process.python("-m", "workers.poller", name="poller", env=env)]
    try:
        wait_until(lambda: connection.exists("ws:default:poll:Task:cursor"), 60, "the poller's baseline")
        quiet = _tick(session, base, connection, tasks[:args.changes], done_before=0)
        with workspaces.using(workspaces.Workspace("default", base, ENGINE)):
            for _ in range(args.subscriptions):
                subscriptions.create(connection, {"url": f"{receiver.url}/hook", "events": ["Task.updated"]},
                                     keyring=Keyring.from_config(env))
        started = time.monotonic()
        loaded = _tick(session, base, connection, tasks[args.changes:], done_before=args.changes)
        wanted = args.changes * args.subscriptions
        wait_until(lambda: len(receiver.received) >= wanted, 600, f"{wanted} deliveries", interval=0.2)
        delivered = time.monotonic() - started
        print(summary("change_feed", changes=args.changes, subscriptions=args.subscriptions,
                      run_ms_median_without=quiet[0], run_ms_p90_without=quiet[1],
                      run_ms_median_with=loaded[0], run_ms_p90_with=loaded[1],
                      deliveries=len(receiver.received), all_delivered_s=round(delivered, 1),
                      deliveries_per_s=round(wanted / delivered, 1)))
    finally:
        for process in processes:
            process.stop()
        inloox.stop()
        receiver.close()
        server.stop()


def _tick(session, base: str, connection, tasks: list[str], *, done_before: int) -> tuple[float, float]:
    """Tick the tasks done; wait for their runs; (median, p90) ms from the change to the run's end."""
    for task in tasks:
        assert session.patch(base + f"Task({task})", json={"IsDone": True}).ok
    total = done_before + len(tasks)
    wait_until(lambda: len(_finished(connection)) >= total, 300, f"{total} runs", interval=0.2)
    runs = sorted(_finished(connection), key=lambda r: r["created_at"])[done_before:]
    took = [(_at(r["updated_at"]) - _at(r["plan"]["event"]["occurred_at"])) * 1000 for r in runs]
    return round(statistics.median(took)), round(sorted(took)[int(len(took) * 0.9) - 1])


def _finished(connection) -> list[dict]:
    ids = [i.decode() for i in connection.zrange("ws:default:runs", 0, -1)]
    runs = [decode_run(raw) for raw in connection.mget([f"ws:default:run:{i}" for i in ids]) if raw] if ids else []
    return [r for r in runs if r["status"] == "succeeded"]


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    main()
