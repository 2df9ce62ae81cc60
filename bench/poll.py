"""Polling: requests, bytes and CPU for one poll of 100,000 tasks of which 10 changed.

    .venv/bin/python bench/poll.py [--tasks 100000] [--changed 10] [--data FILE]

Builds a sandbox SQLite file with `--tasks` tasks (through the sandbox's own write code, so the
change stamps are real; kept in /tmp and reused by the next run with the same size), serves it
with `python -m sandbox --data`, takes the poller's baseline (the first poll, which reads every
row: timed and counted too), renames `--changed` tasks as a person would (PATCH with the
person's token), then measures one `workers.poller.poll.poll_once` for Task watching Name, IsDone and
WorkAmount: requests (the sandbox's request log), response bytes (each answer's body size, from the
client's `on_received`), CPU of this process (the poller's side) and of the sandbox, wall time.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402

from inloox import Client  # noqa: E402
from inloox.changes import change_feed  # noqa: E402
from workers import workspaces  # noqa: E402
from workers.poller.poll import PollSettings, poll_once  # noqa: E402

PERSON_TOKEN, ENGINE_TOKEN = "bench-person", "bench-engine"
PROJECT = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
WATCHED = frozenset({"Name", "IsDone", "WorkAmount"})


def build_data(path: Path, tasks: int, spacing_ms: int) -> None:
    """A sandbox database with one project and `tasks` tasks, written by the sandbox's own code."""
    from inloox.metadata import load_metadata
    from sandbox import writes
    from sandbox.behaviour import WriteContext
    from sandbox.clock import format_ms
    from sandbox.seed import ME_ID, plant
    from sandbox.store import Store

    store = Store(load_metadata(), str(path))
    plant(store, "empty")
    task_set = store.metadata.entity_sets["Task"]
    # Stamps `spacing_ms` apart, ending a day ago, as if written over months: the sandbox's own
    # clock would give 100,000 quick inserts stamps 1 ms apart, all inside the poll's 5 s overlap
    # (then every poll re-reads thousands of rows, which no real account does).
    day_ago_ms = int((time.time() - 86400) * 1000) - tasks * spacing_ms
    with store.transaction() as conn:
        ctx = WriteContext(conn, store, ME_ID, format_ms(day_ago_ms))
        writes.insert(ctx, store.metadata.entity_sets["Project"], {"ProjectId": PROJECT, "Name": "Big"})
        for i in range(tasks):
            ctx = WriteContext(conn, store, ME_ID, format_ms(day_ago_ms + (i + 1) * spacing_ms))
            writes.insert(ctx, task_set, writes.check_body(task_set, {
                "TaskItemId": f"00000000-0000-4000-8000-{i:012d}", "Name": f"task {i}", "ProjectId": PROJECT,
                "WorkAmount": float(i % 8), "IsDone": False}))
    store.conn.close()


class CountingClient:
    """An inloox.Client that counts the bytes of the answers' bodies (through its `on_received`)."""

    def __init__(self, url: str, token: str):
        self.client = Client(url, token, timeout=120, on_received=self._count)
        self.bytes = 0

    def _count(self, size: int) -> None:
        self.bytes += size


def measured_poll(counting: CountingClient, connection, sandbox_url: str, sandbox_pid: int) -> dict:
    requests.delete(sandbox_url + "_sandbox/requests", timeout=10)
    counting.bytes = 0
    cpu0, server0, wall0 = time.process_time(), harness.cpu_seconds([sandbox_pid]), time.perf_counter()
    with workspaces.using(workspaces.Workspace(workspaces.DEFAULT, sandbox_url, "unused")):
        result = poll_once(counting.client, connection, change_feed("Task"), WATCHED, PollSettings())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    server = harness.cpu_seconds([sandbox_pid]) - server0
    log = requests.get(sandbox_url + "_sandbox/requests", timeout=60).json()["value"]
    return {"rows": result.rows, "accepted": len(result.accepted), "baseline": result.baseline, "requests": len(log),
            "bytes": counting.bytes, "cpu": cpu, "server_cpu": server, "wall": wall,
            "paths": [f"{e['method']} {e['path']}" for e in log]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--spacing-ms", type=int, default=600, help="time between the seeded tasks' last changes")
    parser.add_argument("--data", help="sandbox SQLite file (default: /tmp/bench-poll-<tasks>-<spacing>.sqlite)")
    args = parser.parse_args()
    print(harness.machine())
    data = Path(args.data or f"/tmp/bench-poll-{args.tasks}-{args.spacing_ms}.sqlite")
    if not data.exists():
        started = time.perf_counter()
        build_data(data, args.tasks, args.spacing_ms)
        print(f"  built {data} with {args.tasks} tasks in {time.perf_counter() - started:.0f}s")
    server = harness.redis_server(durable=False)
    port = harness.free_port()
    sandbox = harness.sandbox(port, PERSON_TOKEN, data=str(data), engine_token=ENGINE_TOKEN)
    base = f"http://127.0.0.1:{port}/"
    try:
        connection = redis.Redis(port=server.port)
        counting = CountingClient(base + "api/odata/", ENGINE_TOKEN)
        first = measured_poll(counting, connection, base, sandbox.popen.pid)
        print(f"  baseline poll: {first['rows']} rows, {first['requests']} requests, {first['bytes'] / 1e6:.1f} MB, "
              f"poller CPU {first['cpu']:.1f}s, sandbox CPU {first['server_cpu']:.1f}s, wall {first['wall']:.1f}s")
        person = requests.Session()
        person.headers["x-api-key"] = PERSON_TOKEN
        run = time.time()  # a new name each run: the data file is reused, so its tasks were changed before
        for i in range(0, args.tasks, max(1, args.tasks // args.changed))[:args.changed]:
            person.patch(f"{base}api/odata/Task(00000000-0000-4000-8000-{i:012d})", json={"Name": f"task {i} renamed {run}"},
                         timeout=30).raise_for_status()
        time.sleep(0.05)
        poll = measured_poll(counting, connection, base, sandbox.popen.pid)
        print(f"  poll with {args.changed} changed: {poll['rows']} rows read, {poll['accepted']} events, "
              f"{poll['requests']} requests ({', '.join(poll['paths'])}), {poll['bytes'] / 1e3:.1f} kB, "
              f"poller CPU {poll['cpu'] * 1000:.0f} ms, sandbox CPU {poll['server_cpu'] * 1000:.0f} ms, "
              f"wall {poll['wall'] * 1000:.0f} ms")
        print(harness.summary("poll", tasks=args.tasks, changed=args.changed, requests=poll["requests"],
                              bytes=poll["bytes"], events=poll["accepted"], cpu=f"{poll['cpu'] * 1000:.0f}ms",
                              sandbox_cpu=f"{poll['server_cpu'] * 1000:.0f}ms", wall=f"{poll['wall'] * 1000:.0f}ms",
                              baseline_requests=first["requests"], baseline_wall=f"{first['wall']:.0f}s"))
    finally:
        sandbox.stop()
        server.stop()


if __name__ == "__main__":
    main()
