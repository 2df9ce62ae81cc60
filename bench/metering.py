"""Counting usage: the CPU it adds to one event, measured on its own (issue 21's "≤ 2 % per event").

    .venv/bin/python bench/metering.py [--events 20000] [--pairs 5] [--per-event-ms 4.43]

The whole-stack A/B the issue names (bench/stack.py before and after) cannot resolve 2 % here: two
runs of one commit differed by 20 %. So this measures what counting adds, piece by piece, with the
production code against a real Valkey (durable, as in production), in alternating pairs, medians:

  - intake: the event log's append script as it is, against the same script without its two usage
    counts (the lines are cut from eventlog's own text; the bench stops if they are not there),
    each run on `--events` distinct events: this process's CPU plus Valkey's, per event;
    plus the Python that names the usage keys for the script (`usage.today()`, the keys, the field);
  - a billable run's stop: `usage.bill` and its `billable_runs` counter, the counts written with the run's
    record (`save_run`'s script), against the same save without them, executed: this process plus Valkey;
  - the counters that also feed usage (`runs_started`, a notify step, an InLoox request): what
    `metrics.count` spends on `usage.usage_fields` and the pending usage counts;
  - the limits, without a plan limit (a workspace without limits pays no round trip: checked here).

The sum is divided by the stack's CPU per event (`--per-event-ms`, from bench/stack.py in the same
session) to give the share.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import redis  # noqa: E402

from workers import eventlog, metrics, scripts, workspaces  # noqa: E402
from workers.metering import limits, usage  # noqa: E402
from workers.outbound import OutboundPolicy  # noqa: E402
from workers.runs import save_run  # noqa: E402
from workers.workspaces import Workspace  # noqa: E402

COUNTING_LINES = (
    "  if redis.call('HINCRBY', KEYS[4], ARGV[6], 1) == 1 then redis.call('EXPIRE', KEYS[4], ARGV[7]) end\n",
    "  if redis.call('HINCRBY', KEYS[5], ARGV[6], 1) == 1 then redis.call('EXPIRE', KEYS[5], ARGV[8]) end\n",
)


def uncounted_append():
    """The append script without its usage counts (the counterfactual)."""
    text = eventlog._APPEND
    for line in COUNTING_LINES:
        if line not in text:
            raise SystemExit("bench/metering.py: the append script changed; update COUNTING_LINES")
        text = text.replace(line, "")
    return scripts.script(text)


def cpu(valkey: int) -> tuple[float, float]:
    return time.process_time(), harness.cpu_seconds([valkey])


def spent(before: tuple[float, float], valkey: int, n: int) -> float:
    """Microseconds per item of this process's and Valkey's CPU since `before`."""
    after = cpu(valkey)
    return ((after[0] - before[0]) + (after[1] - before[1])) * 1e6 / n


def intake(connection, valkey: int, n: int, round_: int, counted: bool) -> float:
    event = {"id": "", "source": "webhook", "kind": "order", "payload": {"order": 1, "total": 12.5}}
    script = eventlog._APPEND_SCRIPT if counted else uncounted_append()
    name, day = workspaces.current().name, usage.today()
    # The keys and arguments eventlog.append hands the script: no backlog limit, pace, daily limit or latest time.
    keys = ["", eventlog.stream_key(), metrics.COUNTERS, usage.day_key(name, day),
            usage.month_key(name, usage.month_of(day)), "ws:bench:active", "ws:bench:runs:active",
            "ws:bench:events:backlog", "ws:bench:events:pace"]
    before = cpu(valkey)
    for i in range(n):
        event["id"] = f"bench:{round_}:{counted}:{i}"
        keys[0] = f"ws:bench:hooks:seen:{event['id']}"
        scripts.call(connection, script, keys=keys, args=[
            event["id"], 3600, eventlog.encode(event), "a", "d", usage.event_field("webhook"), 100, 100, 0,
            eventlog.GROUP, eventlog.BACKLOG_LOOK_MS, eventlog.BACKLOG_HEADROOM, 0, 1, 0, 0,
            *map(usage.event_field, usage.SOURCES)])
    return spent(before, valkey, n)


def naming(n: int) -> float:
    """The Python `append` spends on the usage keys and field it hands the script."""
    started = time.process_time()
    for _ in range(n):
        name, day = workspaces.current().name, usage.today()
        (usage.day_key(name, day), usage.month_key(name, usage.month_of(day)), usage.event_field("webhook"))
    return (time.process_time() - started) * 1e6 / n


def stop(connection, valkey: int, n: int, round_: int, counted: bool) -> float:
    """A run's stop pipeline (its record, its status count) with or without its billing (the counts written with
    the record in one script, `save_run`'s `counts`, instead of the record's SET alone)."""
    steps = [{"verb": "create", "status": "done", "pad": "x" * 600}]
    now = datetime.now(timezone.utc)
    before = cpu(valkey)
    for i in range(n):
        run = {"id": f"r{round_}:{i}", "rule_id": "log-time", "status": "succeeded", "steps": steps,
               "plan": {"operations": []}, "outputs": {}, "created_at": now.isoformat()}
        with connection.pipeline(transaction=False) as pipe:
            counts = usage.bill("bench", run, day=usage.today()) if counted else None
            if counted:
                metrics.count(pipe, "billable_runs", rule=run["rule_id"])
            save_run(pipe, run, now=now, counts=counts)
            pipe.execute()
    return spent(before, valkey, n)


def counters(n: int) -> float:
    """What `metrics.count` spends on usage for the counters of one event (runs_started, a notify, a request)."""
    started = time.process_time()
    for _ in range(n):
        usage.usage_fields("runs_started", {"rule": "log-time"})
        usage.usage_fields("steps", {"verb": "notify", "status": "done"})
        usage.request_field("POST")
    return (time.process_time() - started) * 1e6 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--per-event-ms", type=float, default=4.43,
                        help="the whole stack's CPU per event from bench/stack.py (RESULTS section 12: 4.43)")
    args = parser.parse_args()
    print(harness.machine())
    print("busy before:", ", ".join(harness.busy_processes()) or "nothing over 5%", flush=True)
    server = harness.redis_server(durable=True)
    valkey = harness.valkey_pid(server)
    connection = redis.Redis(port=server.port)
    metrics.batch(1.0)  # as the worker does
    workspace = Workspace(name="bench", inloox_url="http://127.0.0.1:1/api/odata/", inloox_api_key="k")
    figures: dict[str, list[float]] = {k: [] for k in ("intake", "intake_uncounted", "stop", "stop_uncounted")}
    with workspaces.using(workspace):
        assert limits.admit(connection, workspace, OutboundPolicy(), {"id": "r"}), "no limit: always admitted"
        for round_ in range(args.pairs):
            for counted in (round_ % 2 == 0, round_ % 2 == 1):  # alternate which goes first
                figures["intake" if counted else "intake_uncounted"].append(
                    intake(connection, valkey, args.events, round_, counted))
                figures["stop" if counted else "stop_uncounted"].append(
                    stop(connection, valkey, args.events, round_, counted))
            connection.flushall()
        names, fields = naming(args.events * 5), counters(args.events * 5)
    med = {k: statistics.median(v) for k, v in figures.items()}
    intake_cost = med["intake"] - med["intake_uncounted"] + names
    stop_cost = med["stop"] - med["stop_uncounted"]
    total = intake_cost + stop_cost + fields
    for k, v in figures.items():
        print(f"  {k}: median {med[k]:.1f} µs (runs: {', '.join(f'{x:.1f}' for x in v)})")
    print(f"  counting per event: intake {intake_cost:.1f} µs (of which naming the keys {names:.1f}), "
          f"billing a run {stop_cost:.1f} µs, counters {fields:.1f} µs: {total:.1f} µs = "
          f"{100 * total / (args.per_event_ms * 1000):.1f} % of {args.per_event_ms} ms per event", flush=True)
    print(harness.summary("metering", intake_us=f"{intake_cost:.1f}", billing_us=f"{stop_cost:.1f}",
                          counters_us=f"{fields:.1f}", total_us=f"{total:.1f}",
                          share=f"{100 * total / (args.per_event_ms * 1000):.1f}%"))
    print("busy after:", ", ".join(harness.busy_processes()) or "nothing over 5%")
    server.stop() if hasattr(server, "stop") else None
    harness.remove_data()  # os._exit runs no atexit handler
    os._exit(0)


if __name__ == "__main__":
    main()
