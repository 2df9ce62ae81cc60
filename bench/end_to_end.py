"""End to end: InLoox writes/s completed by 1, 2 and 4 rq workers, lost and duplicate writes, RSS.

    .venv/bin/python bench/end_to_end.py [--events 2000] [--workers 1,2,4] [--targets sink,sandbox]
    INLOOX_URL=https://... INLOOX_API_KEY=... .venv/bin/python bench/end_to_end.py --targets url

One webhook rule creates one Task per event (`Name` = the event's title, unique). Per target and
worker count: a fresh durable Valkey database, a backlog of `--events` events accepted with
workers.intake.submit_event (what POST /hooks/<source> calls, without the HTTP; ingest.py
measures that part), then N `rq worker`s as in the Procfile drain it. Writes/s = writes landed
/ (last write - first write), read from the target itself (the sink's stats, the sandbox's
request log), so worker start-up is not counted. lost = events without their Task, duplicates
= Tasks posted more than once. Peak RSS sums Valkey, web (gunicorn 2x8, idle), the workers and
the target, sampled every 0.25 s while the backlog drains. Targets:
  sink     bench/sink.py: answers 201 at once, isolates our own cost
  sandbox  python -m sandbox (SQLite, waitress): closer to InLoox's behaviour, slower
  url      whatever INLOOX_URL names (counts come from runs only: lost = runs not succeeded)
RQ overhead per job: a burst worker running N no-op jobs (`time.sleep(0)`), minus its start-up.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402
from rq import Queue  # noqa: E402

from engine.events import Event  # noqa: E402
from workers import workspaces  # noqa: E402
from workers.intake import submit_event  # noqa: E402
from workers.runs import decode_record  # noqa: E402

# The default workspace, as the engine processes see it (only its name and key prefix matter here).
BENCH_WORKSPACE = workspaces.Workspace(workspaces.DEFAULT, "http://unused/", "unused")

PROJECT = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
SANDBOX_TOKEN, ENGINE_TOKEN = "bench-person", "bench-engine"
RULE = f"""id: bench-form-to-task
description: Each bench delivery becomes one task.
when:
  - webhook: {harness.WEBHOOK_SOURCE}
then:
  - inloox.create: Task
    values:
      Name: "{{{{ webhook.body.title }}}}"
      ProjectId: "{PROJECT}"
      WorkAmount: 1
"""


def fill_backlog(connection: redis.Redis, count: int, tag: str) -> list[str]:
    """`count` accepted webhook events, shaped as web/hooks.py shapes them; returns their titles."""
    titles = []
    for i in range(count):
        msg_id, title = f"msg_{tag}_{i}", f"bench {tag} {i}"
        event = Event(source="webhook", kind=harness.WEBHOOK_SOURCE, id=f"webhook:{harness.WEBHOOK_SOURCE}:{msg_id}",
                      occurred_at=datetime.now(timezone.utc),
                      payload={"id": msg_id, "body": {"title": title}, "headers": {"content-type": "application/json"}})
        with workspaces.using(BENCH_WORKSPACE):
            if not submit_event(connection, event, dedup_key=workspaces.key(f"hooks:seen:bench:{msg_id}"),
                                dedup_ttl=3600):
                raise AssertionError(f"{msg_id} was not accepted")
        titles.append(title)
    return titles


class SinkTarget:
    name = "sink"

    def __init__(self):
        self.port = harness.free_port()
        self.process = harness.Process.python(str(harness.ROOT / "bench" / "sink.py"), "--port", str(self.port), name="sink")
        self.process.wait_for_port(self.port)
        self.url, self.token, self.pid = f"http://127.0.0.1:{self.port}/api/odata/", "none", self.process.popen.pid

    def reset(self):
        requests.post(f"http://127.0.0.1:{self.port}/_sink/reset", timeout=10)

    def writes(self) -> tuple[int, set | int, float | None, float | None]:
        stats = requests.get(f"http://127.0.0.1:{self.port}/_sink/stats", timeout=10).json()
        return stats["posts"].get("Task", 0), stats["distinct"].get("Task", 0), stats["first"], stats["last"]

    def stop(self):
        self.process.stop()


class SandboxTarget:
    name = "sandbox"

    def __init__(self):
        self.port = harness.free_port()
        self.process = harness.sandbox(self.port, SANDBOX_TOKEN, engine_token=ENGINE_TOKEN)
        self.url, self.token, self.pid = f"http://127.0.0.1:{self.port}/api/odata/", ENGINE_TOKEN, self.process.popen.pid
        self.admin = f"http://127.0.0.1:{self.port}/_sandbox/"

    def reset(self):
        requests.post(self.admin + "reset", json={"seed": "empty"}, timeout=30).raise_for_status()
        requests.post(self.url + "Project", json={"ProjectId": PROJECT, "Name": "Bench"},
                      headers={"x-api-key": SANDBOX_TOKEN}, timeout=10).raise_for_status()
        requests.delete(self.admin + "requests", timeout=10)

    def writes(self):
        log = requests.get(self.admin + "requests", timeout=60).json()["value"]
        posts = [e for e in log if e["method"] == "POST" and e["path"] == "Task" and e["status"] == 201]
        names = {json.loads(e["body"])["Name"] if isinstance(e["body"], str) else e["body"]["Name"] for e in posts}
        stamps = [datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp() for e in posts]
        return len(posts), len(names), min(stamps, default=None), max(stamps, default=None)

    def stop(self):
        self.process.stop()


class UrlTarget:
    """INLOOX_URL from the environment: no write log of its own, so counts come from our runs."""
    name = "url"
    pid = None

    def __init__(self):
        self.url, self.token = os.environ["INLOOX_URL"], os.environ["INLOOX_API_KEY"]

    def reset(self):
        pass

    def writes(self):
        return None

    def stop(self):
        pass


def run_statuses(connection: redis.Redis) -> dict:
    ids = [i.decode() for i in connection.zrange(BENCH_WORKSPACE.prefix + "runs", 0, -1)]
    statuses: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        for raw in connection.mget([f"{BENCH_WORKSPACE.prefix}run:{i}" for i in ids[start:start + 500]]):
            status = decode_record(raw)["status"] if raw else "missing"
            statuses[status] = statuses.get(status, 0) + 1
    return statuses


def first_handled(connection: redis.Redis) -> float | None:
    """Epoch seconds of the first run's creation: when the workers began on the backlog."""
    oldest = connection.zrange(BENCH_WORKSPACE.prefix + "runs", 0, 0, withscores=True)
    return oldest[0][1] if oldest else None


def drain(server, target, web_pid: int, env: dict, events: int, workers: int, args) -> dict:
    connection = redis.Redis(port=server.port)
    connection.flushdb()
    target.reset()
    tag = f"{target.name}{workers}w{int(time.time())}"
    started = time.perf_counter()
    titles = fill_backlog(connection, events, tag)
    fill_s = time.perf_counter() - started
    valkey = harness.valkey_pid(server)
    roots = lambda: [p for p in (valkey, web_pid, target.pid, *(w.popen.pid for w in procs)) if p]  # noqa: E731
    procs: list = []
    backlog_rss = harness.rss_mb([p for root in roots() for p in harness.tree_pids(root)])
    with harness.PeakRss(roots) as peak:
        procs.extend(harness.rq_worker(env, f"worker-{n}") for n in range(workers))
        deadline, last_progress, last_count = time.monotonic() + args.timeout, time.monotonic(), -1
        while time.monotonic() < deadline:
            statuses = run_statuses(connection)
            done = sum(n for s, n in statuses.items() if s in ("succeeded", "failed", "skipped"))
            if done >= events:
                break
            if done != last_count:
                last_count, last_progress = done, time.monotonic()
            elif time.monotonic() - last_progress > 20:
                break  # stuck: report what landed
            time.sleep(0.5)
        drain_s = time.perf_counter() - started - fill_s
        for proc in procs:
            proc.stop()
    statuses = run_statuses(connection)
    landed = target.writes()
    result = {"target": target.name, "workers": workers, "events": events, "fill_s": fill_s, "statuses": statuses,
              "backlog_rss": backlog_rss, "peak_rss": peak.peak, "peak_pss": peak.peak_pss, "drain_s": drain_s}
    if landed is None:
        result.update(posts=None, lost=events - statuses.get("succeeded", 0), duplicates="n/a",
                      rate=statuses.get("succeeded", 0) / drain_s)
    else:
        posts, distinct, first, last = landed
        began = first_handled(connection)
        # rate: writes over the span of writes; drain_rate: events over the whole drain, from the
        # first event taken to the last write (the honest one when writes start late: with two
        # jobs per write, every handle_event job ran before the first write job).
        result.update(posts=posts, lost=events - distinct, duplicates=posts - distinct,
                      rate=(posts - 1) / (last - first) if posts > 1 and last > first else 0.0,
                      drain_rate=distinct / (last - began) if began and last and last > began else 0.0)
    if any("Traceback" in p.output() for p in procs):
        result["worker_errors"] = next(p.output()[-1500:] for p in procs if "Traceback" in p.output())
    return result


def rq_overhead(server, env: dict, jobs: int) -> float:
    """ms per no-op job through one burst worker, net of the worker's start-up and shut-down."""
    connection = redis.Redis(port=server.port)

    def burst(n: int) -> float:
        connection.flushdb()
        queue = Queue("default", connection=connection, serializer="json")
        for _ in range(n):
            queue.enqueue("time.sleep", 0, result_ttl=60)
        started = time.perf_counter()
        harness.Process.python("-m", "rq.cli", "worker", "--worker-class", "workers.worker.Worker", "--serializer",
                               "json", "--burst", "--url", env["REDIS_URL"], "default", name="burst", env=env).popen.wait(300)
        return time.perf_counter() - started

    empty = min(burst(0), burst(0))
    return (burst(jobs) - empty) / jobs * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--targets", default="sink,sandbox")
    parser.add_argument("--rq-jobs", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed for one drain")
    args = parser.parse_args()
    print(harness.machine())
    print("busy before:", ", ".join(harness.busy_processes()) or "nothing over 5%")
    server = harness.redis_server()
    rules = Path(tempfile.mkdtemp(prefix="bench-rules-"))
    (rules / "bench.yaml").write_text(RULE)
    base_env = {"REDIS_URL": f"redis://127.0.0.1:{server.port}/0", "RULES_PATH": str(rules), "INLOOX_URL": None,
                "INLOOX_API_KEY": None, "OUTBOUND_ALLOW": "127.0.0.1",
                "INLOOX_REQUESTS_PER_SECOND": "0"}  # measuring our throughput, not InLoox's budget
    try:
        overhead = rq_overhead(server, base_env, args.rq_jobs)
        print(f"  rq: {overhead:.2f} ms per no-op job (one SimpleWorker, {args.rq_jobs} jobs); "
              f"events come from the event log, handled on the worker's thread pool")
        for name in args.targets.split(","):
            target = {"sink": SinkTarget, "sandbox": SandboxTarget, "url": UrlTarget}[name]()
            env = {**base_env, "INLOOX_URL": target.url, "INLOOX_API_KEY": target.token}
            web, _ = harness.gunicorn(env)
            try:
                for workers in (int(n) for n in args.workers.split(",")):
                    r = drain(server, target, web.popen.pid, env, args.events, workers, args)
                    print(f"  {name} {workers}w: {r['rate']:.0f} writes/s over the writes, "
                          f"{r.get('drain_rate', 0):.0f}/s over the drain; {r['events']} events "
                          f"(backlog filled in {r['fill_s']:.1f}s), drained in {r['drain_s']:.1f}s incl. worker start; "
                          f"runs {r['statuses']}; posts {r['posts']} lost {r['lost']} dup {r['duplicates']}; "
                          f"RSS with backlog {r['backlog_rss']:.0f} MB, peak while draining {r['peak_rss']:.0f} MB "
                          f"(PSS {r['peak_pss']:.0f} MB)")
                    if "worker_errors" in r:
                        print("    worker output:", r["worker_errors"])
                    print(harness.summary("end_to_end", target=name, workers=workers, rate=f"{r['rate']:.0f}/s",
                                          drain_rate=f"{r.get('drain_rate', 0):.0f}/s",
                                          lost=r["lost"], dup=r["duplicates"], peak_rss=f"{r['peak_rss']:.0f}MB", peak_pss=f"{r['peak_pss']:.0f}MB",
                                          rq_ms_per_job=f"{overhead:.2f}"), flush=True)
            finally:
                web.stop()
                target.stop()
    finally:
        server.stop()
    print("busy after:", ", ".join(harness.busy_processes()) or "nothing over 5%")


if __name__ == "__main__":
    main()
