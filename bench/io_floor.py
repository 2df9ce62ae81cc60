"""I/O floor: the CPU per event of a run's I/O skeleton alone, per execution design (issue 22).

    .venv/bin/python bench/io_floor.py [--events 5000] [--repeats 3] [--variants a,b8,b48,c1,c50,c200,d200]
        [--async-python /tmp/iofloor-venv/bin/python] [--engine-events 3000]   (variants also e8, e32)

Before anyone rewrites the worker's execution path: what do the Redis and HTTP calls of one event
cost the worker's CPU, without any of our code around them? The skeleton per event is what
workers/jobs.py sends for a webhook event whose one rule writes once (`_queue_starts`, `ledger.mark_sent`,
the InLoox call, `_stop`), with records of the sizes workers/runs.py stores; every key is the event's own:
  1. one pipeline: EVALSHA of a run-creation script (SET of a 1.3 KB record NX EX, ZADD to an index,
     SET NX PX of the run's lock), GET of the pause flag, SET of a 1 KB trace EX, 2 HINCRBY;
  2. SET of the ledger's 60-byte "sent" mark EX;
  3. POST /api/odata/TimeEntry of ~300 bytes of JSON (a unique DisplayName) to bench/sink.py, its
     answer JSON-decoded;
  4. one pipeline: SET of the 1.3 KB run record EX, ZADD, 2 HINCRBY, EXPIRE of the mark, EVALSHA of
     redis-py's lock release script.
Not in it: the consumer's read and acknowledgement of the event in the event log, the guards' and
limits' reads, the run-end log line. Scripts go as EVALSHA (loaded beforehand); the worker sends
EVAL with the script's text on a pipeline (workers/scripts.py), a few hundred bytes more per call.
Variants (each a child process of its own, 3 runs each by default, interleaved):
  a     sync, 1 thread: redis-py (hiredis) on a BlockingConnectionPool + a urllib3 PoolManager, as
        workers/settings.py and inloox/connections.py make them;
  b8    the same on a ThreadPoolExecutor of 8 threads; b48: 48 threads (the worker's floor in flight);
  c1    asyncio, one loop, 1 / 50 / 200 events in flight (c50, c200): redis.asyncio (same redis-py,
        hiredis) + aiohttp (C HTTP parser). aiohttp is not a project dependency: these run in the
        interpreter given by `--async-python`, a venv with redis==8.1.0 hiredis==3.5.0 aiohttp==3.12.15
        (`python3 -m venv /tmp/iofloor-venv && /tmp/iofloor-venv/bin/pip install redis==8.1.0
        hiredis==3.5.0 aiohttp==3.12.15`), and are skipped without it;
  d200  (d1, d50) asyncio with redis.asyncio and the POST written and read by hand on a raw asyncio
        stream (one keep-alive connection per event in flight): only to show the HTTP client's share
        of c; NOT a production candidate (no TLS, no chunked answers, no error handling);
  e8    (e32) sync, 1 thread, 8 (32) events at a time: their step 1 and 2 in one pipeline, their POSTs
        one after the other, their step 4 in one pipeline: the floor of a worker that stores and
        ends several events' runs together (three round trips per event become two per batch).
Figures per variant (median and min–max over the runs, each over `--events` events after a
warm-up of a tenth of that): events/s wall; the worker's CPU per event (time.process_time, and
os.times' user and system parts); Valkey's CPU per event (utime+stime of its process from
/proc/<pid>/stat over the same window). Valkey is durable as in production (AOF, fsync every
second); it is emptied and its AOF rewritten between runs, outside the measured window. The sink
counts the writes of each run: a run whose sink saw fewer POSTs than it sent fails.
A second table: the pure-Python work of one event apart from I/O, timed in this process (1 thread,
no I/O): the engine (Event.from_dict, explain = match + plan + template rendering) for bench/stack.py's
RULE, the run record and trace as workers/jobs.py builds them, and workers.runs.encode_record.
Valkey and the sink run in process groups of their own and are stopped on exit, error or Ctrl+C.
Everything listens on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Only the standard library and redis-py at the top: a child of variant c runs in a venv that has
# redis-py and aiohttp but not the project's other dependencies (the parent's imports are lazy).
import redis

HERE = Path(__file__).resolve().parent
RECORD = b'{"id":"run_0","status":"queued","plan":' + b'"' + b"r" * 1250 + b'"}'  # a 1.3 KB run record
TRACE = b'{"event":"e","rules":"' + b"t" * 980 + b'"}'  # a 1 KB trace
SENT = b'{"state":"sent","at":"2026-12-05T01:00:00.000000+00:00"}'  # 60 bytes: ledger.mark_sent
TTL = 7 * 24 * 3600  # runs.RUNS_MAX_AGE, ledger.LEDGER_MAX_AGE
AFTER_FINISH = 3600  # ledger.LEDGER_AFTER_FINISH
LEASE_MS = 45_000
METRICS = "metrics:counts"
PAUSED = "account:paused"
PROJECT = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
# What inloox/client.py sends with a write (its _WRITE_HEADERS and the key).
HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "Accept-Encoding": "gzip,deflate",
           "Content-Type": "application/json", "x-api-key": "io-floor-token"}
# workers/runs.py _CREATE cut to what one unguarded run's creation does: the record, its listing, the lease.
CREATE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return {0, 0} end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
local leased = 0
if redis.call('SET', KEYS[3], ARGV[5], 'NX', 'PX', ARGV[6]) then leased = 1 end
return {1, leased}
"""
RELEASE = redis.lock.Lock.LUA_RELEASE_SCRIPT  # what `_queue_release` sends
VARIANTS = {  # name: (design, events or threads in flight, what it is)
    "a": ("sync", 1, "sync, 1 thread"),
    "b8": ("sync", 8, "sync, 8 threads"),
    "b48": ("sync", 48, "sync, 48 threads"),
    "c1": ("aiohttp", 1, "asyncio+aiohttp, 1 in flight"),
    "c50": ("aiohttp", 50, "asyncio+aiohttp, 50 in flight"),
    "c200": ("aiohttp", 200, "asyncio+aiohttp, 200 in flight"),
    "d1": ("raw", 1, "asyncio+raw HTTP, 1 in flight"),
    "d50": ("raw", 50, "asyncio+raw HTTP, 50 in flight"),
    "d200": ("raw", 200, "asyncio+raw HTTP, 200 in flight"),
    "e8": ("batched", 8, "sync, 1 thread, 8 events a pipeline"),
    "e32": ("batched", 32, "sync, 1 thread, 32 events a pipeline"),
}


def post_body(tag: str, i: int) -> bytes:
    """~300 bytes: the bench rule's TimeEntry, its DisplayName unique per event (the sink counts them)."""
    return json.dumps({"ProjectId": PROJECT, "TaskItemId": f"5b1f1d0e-0000-4000-8000-{i:012d}",
                       "DisplayName": f"io-floor {tag} {i}", "StartDateTime": "2026-12-05T00:00:00.000000+00:00",
                       "EndDateTime": "2026-12-05T02:00:00.000000+00:00", "Description": "d" * 60}).encode()


def keys(tag: str, i: int) -> tuple[str, str, str, str, str]:
    run = f"run_{tag}_{i}"
    return run, f"run:{run}", f"trace:{tag}:{i}", f"step:op_{tag}_{i}", f"run-lock:{run}"


def queue_start(pipe, shas: dict, tag: str, i: int, token: bytes) -> None:
    """Pipeline 1 (`_queue_starts`): the run's creation script with its lease, the pause flag, the trace, counts."""
    run, record, trace, _, lock = keys(tag, i)
    pipe.evalsha(shas["create"], 3, record, "runs", lock, RECORD, TTL, run, time.time(), token, LEASE_MS)
    pipe.get(PAUSED)
    pipe.set(trace, TRACE, ex=TTL)
    pipe.hincrby(METRICS, "rule_matches", 1)
    pipe.hincrby(METRICS, "runs_started", 1)


def queue_stop(pipe, shas: dict, tag: str, i: int, token: bytes) -> None:
    """Pipeline 4 (`_stop`): the run's last record, its listing, counts, the mark's expiry, the lock back."""
    run, record, _, mark, lock = keys(tag, i)
    pipe.set(record, RECORD, ex=TTL)
    pipe.zadd("runs:done", {run: time.time()})
    pipe.hincrby(METRICS, "runs:succeeded", 1)
    pipe.hincrby(METRICS, "steps:done", 1)
    pipe.expire(mark, AFTER_FINISH)
    pipe.evalsha(shas["release"], 1, lock, token)


def check_created(replies: list) -> None:
    if list(replies[0]) != [1, 1]:
        raise RuntimeError(f"the run's creation script answered {replies[0]!r}: keys left from an earlier run?")


def check_answer(status: int, body: bytes) -> None:
    answer = json.loads(body)  # as inloox.Client does with every answer
    if status != 201 or "TimeEntryId" not in answer:
        raise RuntimeError(f"the sink answered {status}: {body[:200]!r}")


# --- the designs (each runs in a child process) ----------------------------------------------------
def sync_design(args, shas: dict, *, batch: int = 1) -> tuple:
    """run(count, tag) for variants a, b and e: the worker's clients on 1 or N threads, or (e, `batch`
    > 1) on one thread handling `batch` events at a time: their creations and "sent" marks in one
    pipeline, their POSTs one after the other, their ends in one pipeline."""
    import urllib3
    from concurrent.futures import ThreadPoolExecutor

    threads = 1 if batch > 1 else args.in_flight
    connection = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
        args.redis_url, timeout=20, max_connections=max(100, threads + 32)))  # workers/settings.py
    http = urllib3.PoolManager(num_pools=10, maxsize=threads, block=False, retries=False)  # inloox/connections.py
    timeout = urllib3.Timeout(connect=5.0, read=30.0)
    url = f"{args.sink_url}/api/odata/TimeEntry"

    def event(tag: str, i: int) -> None:
        token = os.urandom(16).hex().encode()  # `_lease`
        with connection.pipeline(transaction=False) as pipe:
            queue_start(pipe, shas, tag, i, token)
            check_created(pipe.execute())
        connection.set(keys(tag, i)[3], SENT, ex=TTL)
        response = http.urlopen("POST", url, body=post_body(tag, i), headers=dict(HEADERS), timeout=timeout,
                                retries=False, redirect=False)
        check_answer(response.status, response.data)
        with connection.pipeline(transaction=False) as pipe:
            queue_stop(pipe, shas, tag, i, token)
            pipe.execute()

    def batched(tag: str, first: int, last: int) -> None:
        tokens = {i: os.urandom(16).hex().encode() for i in range(first, last)}
        with connection.pipeline(transaction=False) as pipe:
            for i, token in tokens.items():
                queue_start(pipe, shas, tag, i, token)
                pipe.set(keys(tag, i)[3], SENT, ex=TTL)
            replies = pipe.execute()
        for n in range(len(tokens)):
            check_created(replies[n * 6:])
        for i in tokens:
            response = http.urlopen("POST", url, body=post_body(tag, i), headers=dict(HEADERS), timeout=timeout,
                                    retries=False, redirect=False)
            check_answer(response.status, response.data)
        with connection.pipeline(transaction=False) as pipe:
            for i, token in tokens.items():
                queue_stop(pipe, shas, tag, i, token)
            pipe.execute()

    pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def run(count: int, tag: str) -> None:
        if batch > 1:
            for first in range(0, count, batch):
                batched(tag, first, min(count, first + batch))
            return
        if pool is None:  # one thread: the events one after the other, no pool's hand-offs
            for i in range(count):
                event(tag, i)
            return
        for _ in pool.map(lambda i: event(tag, i), range(count)):
            pass

    return run


async def async_design(args, shas: dict):
    """(run(count, tag), close()) for variants c and d: one event loop, `in_flight` events at once."""
    import asyncio

    import redis.asyncio

    connection = redis.asyncio.Redis(connection_pool=redis.asyncio.BlockingConnectionPool.from_url(
        args.redis_url, timeout=20, max_connections=max(100, args.in_flight + 32)))
    post, close_http = await (aiohttp_post(args) if args.design == "aiohttp" else raw_post(args))

    async def event(tag: str, i: int, lane: int) -> None:
        token = os.urandom(16).hex().encode()
        async with connection.pipeline(transaction=False) as pipe:
            queue_start(pipe, shas, tag, i, token)
            check_created(await pipe.execute())
        await connection.set(keys(tag, i)[3], SENT, ex=TTL)
        check_answer(*await post(post_body(tag, i), lane))
        async with connection.pipeline(transaction=False) as pipe:
            queue_stop(pipe, shas, tag, i, token)
            await pipe.execute()

    async def run(count: int, tag: str) -> None:
        numbers = iter(range(count))

        async def lane(n: int) -> None:  # one of `in_flight` events at a time, until none is left
            for i in numbers:
                await event(tag, i, n)

        await asyncio.gather(*(lane(n) for n in range(min(args.in_flight, count))))

    async def close() -> None:
        await close_http()
        await connection.aclose()

    return run, close


async def aiohttp_post(args):
    """(post(body, lane) -> (status, body), close): aiohttp's pooled keep-alive connections, C parser."""
    import aiohttp
    import aiohttp.http_parser

    if aiohttp.http_parser.HttpResponseParser.__module__ != "aiohttp._http_parser":
        raise RuntimeError("aiohttp runs without its C parser here: the figures would not be aiohttp's")
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.in_flight, limit_per_host=0),
                                    timeout=aiohttp.ClientTimeout(sock_connect=5.0, sock_read=30.0))
    url = f"{args.sink_url}/api/odata/TimeEntry"

    async def post(body: bytes, lane: int) -> tuple[int, bytes]:
        async with session.post(url, data=body, headers=HEADERS) as response:
            return response.status, await response.read()

    return post, session.close


async def raw_post(args):
    """(post(body, lane) -> (status, body), close): a request written by hand on the lane's own stream."""
    import asyncio

    host, port = args.sink_url.removeprefix("http://").split(":")
    head = (f"POST /api/odata/TimeEntry HTTP/1.1\r\nHost: {host}:{port}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())).encode()
    lanes = [await asyncio.open_connection(host, int(port)) for _ in range(args.in_flight)]

    async def post(body: bytes, lane: int) -> tuple[int, bytes]:
        reader, writer = lanes[lane]
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        answer = await reader.readuntil(b"\r\n\r\n")
        length = int(answer.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        return int(answer[9:12]), await reader.readexactly(length)

    async def close() -> None:
        for _, writer in lanes:
            writer.close()

    return post, close


# --- measuring (in the child) ----------------------------------------------------------------------
def valkey_seconds(pid: int) -> float:
    """Valkey's user + system CPU seconds so far (all its threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clocks(valkey_pid: int) -> tuple:
    return valkey_seconds(valkey_pid), os.times(), time.process_time(), time.perf_counter()


def figures(before: tuple, after: tuple, events: int) -> dict:
    """Seconds spent between two `clocks` readings, for `events` events."""
    return {"events": events, "wall": after[3] - before[3], "cpu": after[2] - before[2],
            "user": after[1].user - before[1].user, "sys": after[1].system - before[1].system,
            "valkey": after[0] - before[0]}


def child(args) -> None:
    """Run one variant (warm-up first, not counted) and print its figures as one JSON line."""
    shas = {"create": args.create_sha, "release": args.release_sha}
    if args.design in ("sync", "batched"):
        run = sync_design(args, shas, batch=args.in_flight if args.design == "batched" else 1)
        run(args.warmup, f"{args.tag}w")
        before = clocks(args.valkey_pid)
        run(args.events, args.tag)
        result = figures(before, clocks(args.valkey_pid), args.events)
    else:
        import asyncio

        async def measure() -> dict:
            run, close = await async_design(args, shas)
            await run(args.warmup, f"{args.tag}w")
            before = clocks(args.valkey_pid)
            await run(args.events, args.tag)
            after = clocks(args.valkey_pid)
            await close()
            return figures(before, after, args.events)

        result = asyncio.run(measure())
    print(json.dumps(result), flush=True)


# --- the runs (in the parent) ----------------------------------------------------------------------
def _interrupted(signum, frame):
    raise KeyboardInterrupt  # SIGTERM: the same clean-up as Ctrl+C


def prepare(connection: redis.Redis) -> dict:
    """An empty Valkey with a small AOF (rewritten now, not during a run) and the two scripts loaded."""
    connection.flushall()
    connection.bgrewriteaof()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = connection.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            break
        time.sleep(0.05)
    return {"create": connection.script_load(CREATE), "release": connection.script_load(RELEASE)}


def sink_stats(sink_url: str, reset: bool = False) -> dict:
    import urllib3

    if reset:
        urllib3.request("POST", f"{sink_url}/_sink/reset")
        return {}
    return json.loads(urllib3.request("GET", f"{sink_url}/_sink/stats").data)


def one_run(name: str, python: str, args, *, redis_url: str, sink_url: str, valkey_pid: int, tag: str) -> dict:
    """One child process running variant `name`; its figures (checked against what the sink saw)."""
    import harness

    design, in_flight, _ = VARIANTS[name]
    shas = prepare(redis.Redis.from_url(redis_url))
    sink_stats(sink_url, reset=True)
    warmup = max(50, args.events // 10)
    process = harness.Process([python, str(Path(__file__).resolve()), "--child", design, "--in-flight", str(in_flight),
                               "--redis-url", redis_url, "--sink-url", sink_url, "--valkey-pid", str(valkey_pid),
                               "--events", str(args.events), "--warmup", str(warmup), "--tag", tag,
                               "--create-sha", shas["create"], "--release-sha", shas["release"]], name=f"io-floor-{name}")
    try:
        process.popen.wait(args.timeout)
    finally:
        process.stop()  # a child still running (Ctrl+C, a time-out) goes with its group
    if process.popen.returncode != 0:
        raise RuntimeError(f"variant {name} exited with {process.popen.returncode}:\n{process.output()[-3000:]}")
    result = json.loads(process.output().strip().splitlines()[-1])
    posted = sink_stats(sink_url)["distinct"].get("TimeEntry", 0)
    if posted != args.events + warmup:
        raise RuntimeError(f"variant {name}: the sink saw {posted} distinct writes, not {args.events + warmup}")
    return result


def async_python_problem(python: str | None) -> str | None:
    """Why variant c cannot run with `python`, or None when it can."""
    if not python:
        return "no --async-python given (aiohttp is not a project dependency; see this file's docstring)"
    probe = subprocess.run([python, "-c", "import aiohttp, aiohttp._http_parser, redis.asyncio, hiredis"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return f"{python} cannot import aiohttp (with its C parser), redis.asyncio and hiredis: {probe.stderr.strip()[-300:]}"
    return None


def spread(values: list[float], fmt: str) -> str:
    """The median, and the min–max when there was more than one run."""
    median = format(statistics.median(values), fmt)
    return median if len(values) < 2 else f"{median} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def print_io_table(results: dict[str, list[dict]]) -> None:
    print("\nI/O skeleton per event: median (min–max) over the runs; CPU in ms per event")
    rows = [("variant", "events/s wall", "worker CPU", "user", "sys", "Valkey CPU")]
    for name, runs in results.items():
        per = lambda field: [r[field] / r["events"] * 1000 for r in runs]  # noqa: E731
        rows.append((f"{name}: {VARIANTS[name][2]}", spread([r["events"] / r["wall"] for r in runs], ".0f"),
                     spread(per("cpu"), ".3f"), spread(per("user"), ".3f"), spread(per("sys"), ".3f"),
                     spread(per("valkey"), ".3f")))
    print_rows(rows)


def print_rows(rows: list[tuple]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


# --- the pure-Python part of one event (in the parent) ---------------------------------------------
def engine_costs(count: int) -> None:
    """What one event's own Python costs apart from I/O: the engine and the records, 1 thread."""
    from datetime import datetime, timezone

    import stack
    from engine import Event, Plan, explain, load_texts, render_deferred
    from workers.runs import COMPRESS, encode_record, new_run

    ruleset, now = load_texts([("bench.yaml", stack.RULE)]), datetime.now(timezone.utc)
    events = [Event(source="webhook", kind="bench", id=f"webhook:bench:floor_{i}", occurred_at=now,
                    payload={"id": f"floor_{i}", "body": stack.task_body(f"floor-{i}"), "headers": {}}).to_dict()
              for i in range(count)]
    rows = [("piece (per event)", "µs CPU", "bytes")]
    parsed = timed(rows, "Event.from_dict (the stored event)", Event.from_dict, events)
    reports = timed(rows, "explain: match + plan + template rendering",
                    lambda e: explain(e, ruleset, now=now, env={}, defer_env=True), parsed)
    dicts = timed(rows, "the trace: Explanation.to_dict()", lambda r: r.to_dict(), reports)
    runs = timed(rows, "new_run(plan): the run record", lambda r: new_run(r.plans[0], now=now, ruleset_version="v1"),
                 reports)
    timed(rows, "encode_record(run, compress=False): created under its lease",
          lambda run: encode_record(run, compress=False), runs, sized=True)
    traces = [stored_trace(d, run) for d, run in zip(dicts, runs)]
    timed(rows, f"encode_record(trace, compress={COMPRESS})", lambda t: encode_record(t, compress=COMPRESS), traces,
          sized=True)
    timed(rows, "Plan.from_dict + render_deferred (the executor's step)",
          lambda run: render_deferred(plan := Plan.from_dict(run["plan"]), plan.operations[0], {}, env={}), runs)
    finished = [finished_run(run) for run in runs]
    timed(rows, "encode_record(finished run, compress=True)", lambda run: encode_record(run, compress=True), finished,
          sized=True)
    timed(rows, "encode_record(ledger mark, compress=True)",
          lambda run: encode_record({"state": "sent", "at": now.isoformat()}, compress=True), runs, sized=True)
    rows.append(("sum", f"{sum(float(r[1]) for r in rows[1:]):.1f}", ""))
    print(f"\nOne event's own Python apart from I/O (bench/stack.py's RULE, 1 thread, {count} events, "
          "time.process_time after a warm-up)")
    print_rows(rows)


def timed(rows: list, label: str, work, inputs: list, *, sized: bool = False) -> list:
    """`work` applied to each input (a few first as a warm-up), its µs of CPU per call added to `rows`."""
    for value in inputs[:50]:
        work(value)
    started = time.process_time()
    outputs = [work(value) for value in inputs]
    micros = (time.process_time() - started) / len(inputs) * 1e6
    rows.append((label, f"{micros:.1f}", f"{statistics.mean(len(o) for o in outputs):.0f}" if sized else ""))
    return outputs


def stored_trace(report: dict, run: dict) -> dict:
    """The trace as workers.runs.save_trace stores it: the matched rule's plan is its run's."""
    rules = [{**o, "plan": None, "run": run["id"]} if o.get("plan") else o for o in report["rules"]]
    return {**report, "rules": rules, "runs": [run["id"]], "handled_at": run["created_at"],
            "event": {"id": report["event"]["id"], "in_run": run["id"]}}


def finished_run(run: dict) -> dict:
    """The run as `_stop` stores it after one done step (output and request elided, as `_encode_run` does)."""
    output = {"@odata.context": "$metadata#TimeEntry/$entity", **run["plan"]["operations"][0]["params"]["values"],
              "TimeEntryId": "6c1f4f36-8a8e-4d55-9f5e-1f7a1b2c3d4e"}
    step = {"index": 0, "id": "book", "action": "inloox.create", "verb": "create", "started_at": run["created_at"],
            "status": "done", "ms": 3, "elided": ["request", "output"]}
    return {**run, "status": "succeeded", "steps": [step], "outputs": {"book": output}, "limit_counted": True,
            "workspace_counted": True}


def run_all(args) -> None:
    import harness
    import stack
    from tests.support.valkey import Valkey

    print(harness.machine())
    print(f"root {harness.ROOT} at {stack.describe(harness.ROOT)}")
    print("busy before:", ", ".join(harness.busy_processes()) or "nothing over 5%", flush=True)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    problem = async_python_problem(args.async_python) if any(VARIANTS[n][0] == "aiohttp" for n in names) else None
    if problem:
        print(f"variants {', '.join(n for n in names if VARIANTS[n][0] == 'aiohttp')} skipped: {problem}")
        names = [n for n in names if VARIANTS[n][0] != "aiohttp"]
    data = Path(tempfile.mkdtemp(prefix="bench-io-floor-"))
    valkey = Valkey(data / "valkey").start()
    port = harness.free_port()
    sink = harness.Process.python(str(HERE / "sink.py"), "--port", str(port), name="sink")
    try:
        sink.wait_for_port(port)
        where = {"redis_url": valkey.url, "sink_url": f"http://127.0.0.1:{port}", "valkey_pid": valkey.process.popen.pid}
        results: dict[str, list[dict]] = {name: [] for name in names}
        for repeat in range(args.repeats):  # interleaved: a busy minute on the shared machine hits every variant
            for name in names:
                python = args.async_python if VARIANTS[name][0] == "aiohttp" else sys.executable
                result = one_run(name, python, args, tag=f"{name}r{repeat}", **where)
                results[name].append(result)
                print(f"  run {repeat + 1} {name}: {result['events'] / result['wall']:.0f} events/s, worker "
                      f"{result['cpu'] / result['events'] * 1000:.3f} ms/event, Valkey "
                      f"{result['valkey'] / result['events'] * 1000:.3f} ms/event", flush=True)
        print_io_table(results)
    finally:
        sink.stop()
        valkey.stop()
        shutil.rmtree(data, ignore_errors=True)  # the AOF of every run
    if args.engine_events:
        engine_costs(args.engine_events)
    print("busy after:", ", ".join(harness.busy_processes()) or "nothing over 5%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000, help="events measured per run (after a tenth as warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="a,b8,b48,c1,c50,c200,d200", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--async-python", help="an interpreter with redis==8.1.0, hiredis and aiohttp (variant c)")
    parser.add_argument("--engine-events", type=int, default=3000, help="events for the second table (0: none)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one run may take")
    child_options = parser.add_argument_group("a child's (one run of one variant, started by the parent)")
    child_options.add_argument("--child", dest="design", choices=("sync", "batched", "aiohttp", "raw"))
    for option in ("--in-flight", "--valkey-pid", "--warmup"):
        child_options.add_argument(option, type=int)
    for option in ("--redis-url", "--sink-url", "--tag", "--create-sha", "--release-sha"):
        child_options.add_argument(option)
    args = parser.parse_args()
    if args.design:
        child(args)
        return
    sys.path.insert(0, str(HERE))  # harness, stack: the parent's alone (a child of variant c has no project venv)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        run_all(args)
    except KeyboardInterrupt:
        print("interrupted: Valkey, the sink and the running variant are stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
