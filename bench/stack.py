"""Full stack: the whole stack as `make run` starts it, signed webhooks in, one InLoox write per event out.

    .venv/bin/python bench/stack.py [--events 5000 | --seconds 10] [--rate 200 --rate-seconds 20]
        [--latency-ms 0] [--workers N] [--inloox-rps 0] [--workspaces 1] [--root DIR]

The stack: `honcho start -f Procfile` in `--root` (default: this checkout) with the environment
the Makefile's RUN_ENV builds (free ports, embedded Valkey with AOF in a temporary folder, the
sandbox), except that INLOOX_URL points at bench/sink.py (answering after `--latency-ms`), the
rules folder holds one rule, and INLOOX_REQUESTS_PER_SECOND is `--inloox-rps` (default 0: no
budget). The processes are read from the Procfile and honcho's output, never listed here;
`--workers N` runs honcho with `-c worker=N`; `--workspaces N` serves N workspaces from a WORKSPACES_FILE
(`default` and N - 1 more, each with the rule, the sink and the secret), the open loop's deliveries to each in
turn (a hosted service's mix; the closed loop's all to `default`). `--neighbour R` (with `--workspaces` 2 or
more): ws1, a quiet customer beside a noisy one, sends R deliveries a second (its rule writes a Task), alone for
`--neighbour-seconds`, then from the closed loop's start to the end of its drain; each one's send-to-write time
and ack time, alone and beside the flood (`--flood-rate R`: default's deliveries at R a second for `--flood-seconds`
instead of wrk's closed loop); `--pace R`: default's `webhooks_per_second` (the others' is 0, none: a
workspace's default of 100 would pace the closed loop). The job: a Standard-Webhooks-signed
`{"event": "task.updated", "task": {TaskItemId, Name, IsDone, WorkAmount, ProjectId}}` to
/hooks/bench; the rule books one TimeEntry (DisplayName = the task's unique Name) when the task is
done with WorkAmount > 0, so the sink counts writes per event. Two phases, each drained to the
last write before the next:
  1. closed loop: wrk (one thread, `--connections` 50 keep-alive connections) sends `--events`
     deliveries signed beforehand, each once (bench/stack.lua), or replays for `--seconds`;
  2. open loop: `--rate`/s for `--rate-seconds` (bench/paced.py, latency from the scheduled send):
     ack p99, the write backlog when the last delivery is acked, and how long writes go on after.
Figures: acks/s and ack p99; writes/s from the first to the last write at the sink; whole-stack
CPU per event = utime+stime (with reaped children) of every production process tree (all but
the sandbox; honcho, the sink and the load generators are not part of it) from the phase's first
delivery to its last write, over the events acked; summed RSS (and, idle, PSS: shared pages split among their processes) of those trees after start-up
(idle) and at the peak (sampled every 0.25 s); lost = events acked 202 without a write, dup =
writes - distinct events written; Valkey's round trips (reads of a request or pipeline) and command calls
per event, over the phase and its drain (a script's own commands counted by name). Everything listens on 127.0.0.1; the stack is torn down (its
process groups) on exit, error or Ctrl+C.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import requests  # noqa: E402
import redis  # noqa: E402

HERE = Path(__file__).resolve().parent
PROJECT = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
# Procfile processes that a production deployment does not run: started, but not measured.
NOT_PRODUCTION = {"sandbox"}
RULE = f"""id: bench-stack-book-done-task
description: A task reported done by a signed webhook books its planned effort as one time entry.
when:
  - webhook: {harness.WEBHOOK_SOURCE}
if:
  all:
    - {{path: webhook.body.event, op: eq, value: task.updated}}
    - {{path: webhook.body.task.IsDone, op: eq, value: true}}
    - {{path: webhook.body.task.WorkAmount, op: gt, value: 0}}
then:
  - id: book
    inloox.create: TimeEntry
    values:
      ProjectId: "{{{{ webhook.body.task.ProjectId }}}}"
      TaskItemId: "{{{{ webhook.body.task.TaskItemId }}}}"
      DisplayName: "{{{{ webhook.body.task.Name }}}}"
      StartDateTime: "{{{{ (now - hours(webhook.body.task.WorkAmount)) | isoformat }}}}"
      EndDateTime: "{{{{ now | isoformat }}}}"
"""
# `--neighbour`: the quiet workspace's rule, on the same deliveries, writes a Task (the sink counts the flood's
# TimeEntry writes apart) named as the task.
NEIGHBOUR_RULE = RULE.replace("bench-stack-book-done-task", "bench-stack-neighbour-task").replace(
    "books its planned effort as one time entry", "is copied as a task of the same name").replace(
    """  - id: book
    inloox.create: TimeEntry
    values:
      ProjectId: "{{ webhook.body.task.ProjectId }}"
      TaskItemId: "{{ webhook.body.task.TaskItemId }}"
      DisplayName: "{{ webhook.body.task.Name }}"
      StartDateTime: "{{ (now - hours(webhook.body.task.WorkAmount)) | isoformat }}"
      EndDateTime: "{{ now | isoformat }}"
""", """  - id: copy
    inloox.create: Task
    values:
      ProjectId: "{{ webhook.body.task.ProjectId }}"
      Name: "{{ webhook.body.task.Name }}"
""")
# Settings the stack reads: never inherited from the caller's shell (a real InLoox token or
# REDIS_URL there must not reach a benchmark); RUN_ENV's values are set below instead.
STACK_PREFIXES = ("INLOOX_", "WEBHOOK_SECRET_", "REDIS_", "SANDBOX_", "POLL_", "SLACK_", "TEAMS_")
STACK_NAMES = {"SECRETS_KEY", "RULES_PATH", "RULES_ENV", "WORKSPACES_FILE", "ADMIN_TOKEN", "OPERATOR_TOKEN", "CHAT_USER_MAP",
               "SCHEDULE_INTERVAL", "PORT", "WEB_PORT", "EMBEDDED_REDIS", "DEV_INBOX", "TEAM_CHANNEL_URL",
               "OUTBOUND_ALLOW", "PYTHONPATH", "VIRTUAL_ENV"}


def is_stack_setting(name: str) -> bool:
    """Whether the caller's environment variable `name` is one the stack reads (never passed on)."""
    return name.startswith(STACK_PREFIXES) or name in STACK_NAMES


# --- the job ----------------------------------------------------------------------------------------
def task_body(msg_id: str) -> dict:
    """The webhook body of one event: a task marked done, its Name unique (the write carries it)."""
    return {"event": "task.updated",
            "task": {"TaskItemId": str(uuid.uuid5(uuid.NAMESPACE_URL, msg_id)), "Name": f"stack {msg_id}",
                     "IsDone": True, "WorkAmount": 2, "ProjectId": PROJECT}}


def write_deliveries(path: Path, count: int, prefix: str) -> None:
    """`count` signed deliveries for stack.lua (signed.lua's format: id, timestamp, signature, body)."""
    with path.open("w") as out:
        for i in range(count):
            raw, headers = harness.signed_delivery(f"{prefix}-{i}", task_body(f"{prefix}-{i}"))
            out.write(f"{headers['webhook-id']}\t{headers['webhook-timestamp']}\t{headers['webhook-signature']}\t{raw}\n")


def procfile_names(root: Path) -> list[str]:
    names = []
    for line in (root / "Procfile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*\S", line)
        if match:
            names.append(match.group(1))
    return names


def describe(root: Path) -> str:
    """The checkout measured: short commit, `+dirty` when its working tree has changes."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit or "?") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


# --- the stack under honcho -------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int] | None:
    """(process group, start time) of a live pid, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[2]), int(fields[19])


class Honcho:
    """`honcho start -f Procfile` in `root`, its output in a file, every process group it made remembered.

    A sampler thread walks honcho's process tree every 0.25 s: it remembers each process (pid, start
    time, group) so that stop() can kill whatever survives honcho, and, while `measuring`, keeps the
    peak summed RSS of the production trees.
    """

    def __init__(self, root: Path, env: dict, concurrency: dict[str, int], log: Path):
        self.root, self.log = root, log
        args = [str(Path(sys.executable).parent / "honcho"), "start", "-f", str(root / "Procfile"),
                "-e", str(log.parent / "empty.env")]  # the root's .env is not read: it may name a real account
        (log.parent / "empty.env").write_text("")
        if concurrency:
            args += ["-c", ",".join(f"{name}={n}" for name, n in concurrency.items())]
        self.expected = concurrency
        with log.open("wb") as out:
            self.popen = subprocess.Popen(args, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        self.seen: dict[int, tuple[int, int]] = {}  # pid -> (group, start time)
        self.fixed: dict[str, int] = {}
        self.measuring, self.peak, self.peak_by_name = False, 0.0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def processes(self) -> dict[str, int]:
        """Honcho's children as it announced them: {"web.1": pid, "worker.2": pid, ...}."""
        if self.fixed:
            return self.fixed
        found = re.findall(r"\| (\S+) started \(pid=(\d+)\)", self.output())
        return {name: int(pid) for name, pid in found}

    def fix(self) -> None:
        """All started: stop re-reading honcho's (growing) output for the list of processes."""
        self.fixed = self.processes()

    def production(self) -> dict[str, int]:
        return {name: pid for name, pid in self.processes().items() if name.rsplit(".", 1)[0] not in NOT_PRODUCTION}

    def stopped(self) -> list[str]:
        return re.findall(r"\| (\S+ stopped \(rc=-?\d+\))", self.output())

    def rss(self, children: dict | None = None) -> dict[str, float]:
        children = children if children is not None else harness.children_by_parent()
        return {name: harness.rss_mb(harness.tree_pids(pid, children)) for name, pid in self.production().items()}

    def pss(self) -> dict[str, float]:
        children = harness.children_by_parent()
        return {name: harness.pss_mb(harness.tree_pids(pid, children)) for name, pid in self.production().items()}

    def cpu(self) -> dict[str, float]:
        return {name: harness.tree_cpu_seconds(pid) for name, pid in self.production().items()}

    def _sample(self):
        while not self._stop.is_set():
            children = harness.children_by_parent()  # one walk of /proc per sample: the machine has 2 cores to share
            for pid in harness.tree_pids(self.popen.pid, children):
                if pid not in self.seen and (stat := _stat(pid)):
                    self.seen[pid] = stat
            if self.measuring:
                by_name = self.rss(children)
                self.peak = max(self.peak, sum(by_name.values()))
                for name, mb in by_name.items():
                    self.peak_by_name[name] = max(self.peak_by_name.get(name, 0.0), mb)
            self._stop.wait(0.25)

    def stop(self) -> None:
        """SIGTERM honcho (it stops its children's groups), then SIGKILL every group still there."""
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                pass
        self._stop.set()
        self._thread.join(5)
        mine = os.getpgid(0)
        for pid, (group, started) in list(self.seen.items()) + [(self.popen.pid, (self.popen.pid, -1))]:
            stat = _stat(pid)
            if stat and (started == -1 or stat[1] == started):
                try:
                    os.killpg(group, signal.SIGKILL) if group != mine else os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.popen.poll() is None:
            self.popen.wait(5)


class Sink:
    def __init__(self, latency_ms: float):
        self.port = harness.free_port()
        self.process = harness.Process.python(str(HERE / "sink.py"), "--port", str(self.port), "--latency-ms",
                                              str(latency_ms), name="sink")
        self.process.wait_for_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}/api/odata/"

    def reset(self):
        requests.post(f"http://127.0.0.1:{self.port}/_sink/reset", timeout=10).raise_for_status()

    def stats(self) -> dict:
        s = requests.get(f"http://127.0.0.1:{self.port}/_sink/stats", timeout=10).json()
        return {"posts": s["posts"].get("TimeEntry", 0), "distinct": s["distinct"].get("TimeEntry", 0),
                "duplicated": s.get("duplicated", {}).get("TimeEntry", 0), "first": s["first"], "last": s["last"],
                "other": {k: v for k, v in s["posts"].items() if k != "TimeEntry"}}

    def stop(self):
        self.process.stop()


def wait_ready(base: str, honcho: Honcho, timeout: float) -> dict:
    """Until /readyz answers 200 (Redis, InLoox = the sink, a worker's heartbeat); fails with the logs."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if honcho.popen.poll() is not None or honcho.stopped():
            break
        try:
            response = requests.get(f"{base}/readyz", timeout=5)
            last = response.text
            if response.status_code == 200:
                return response.json()
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise SystemExit(f"the stack did not become ready (last /readyz: {last}); honcho's output:\n"
                     f"{honcho.output()[-6000:]}")


def probe_every_web_process(base: str, probes: int = 20) -> None:
    """/readyz as a load balancer asks it, on new connections until each web process likely answered one:
    its checks load the rules in the process that serves them (a few MB), so the idle figure counts them
    in every web process, as a deployment probed by its load balancer would (section 20)."""
    for _ in range(probes):
        requests.get(f"{base}/readyz", timeout=5, headers={"Connection": "close"})


def wait_for_writes(sink: Sink, expected: int, stall: float, timeout: float) -> tuple[dict, float, str]:
    """Until `expected` distinct events are written; also stops when writes stall or time runs out.

    Returns the stats, the time.time() it noticed, and "done" / "stalled" / "timeout"."""
    deadline, last_posts, last_change = time.monotonic() + timeout, -1, time.monotonic()
    while True:
        stats, now = sink.stats(), time.monotonic()
        if stats["distinct"] >= expected:
            return stats, time.time(), "done"
        if stats["posts"] != last_posts:
            last_posts, last_change = stats["posts"], now
        elif now - last_change > stall:
            return stats, time.time(), "stalled"
        if now > deadline:
            return stats, time.time(), "timeout"
        time.sleep(0.2)


def settle(sink: Sink, seconds: float = 1.0) -> dict:
    """The sink's stats once nothing more arrived for `seconds` (late duplicates count), at most 10 s."""
    stats, deadline = sink.stats(), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(seconds)
        again = sink.stats()
        if again["posts"] == stats["posts"]:
            return again
        stats = again
    return stats


# --- load -------------------------------------------------------------------------------------------
def wrk_closed_loop(url: str, deliveries: Path, connections: int, seconds: int | None, timeout: float) -> dict:
    """wrk on stack.lua: each delivery once (SIGINT on its WRK_DONE), or for `seconds`."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds or int(timeout)}s", "--timeout", "30s", "--latency",
            "-s", str(HERE / "stack.lua"), url, "--", str(deliveries)] + ([] if seconds else ["once"])
    started = time.time()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, finished = [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("WRK_DONE"):
                finished = time.time()
                proc.send_signal(signal.SIGINT)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = next((json.loads(l[len("WRK_JSON "):]) for l in lines if l.startswith("WRK_JSON ")), None)
    if result is None:
        raise SystemExit("wrk failed:\n" + "".join(lines))
    result["started"] = started
    # the last ack: WRK_DONE in "once" mode; else wrk's own duration
    result["finished"] = finished or started + result["seconds"]
    result["wall"] = result["finished"] - started
    return result


def paced_open_loop(url: str, rate: float, count: int, prefix: str, redeliver: float = 0.0, workspaces: int = 1) -> dict:
    """bench/paced.py's open loop with this bench's task bodies, in a process of its own."""
    proc = subprocess.Popen([sys.executable, __file__, "--paced-child", url, "--rate", str(rate), "--events", str(count),
                             "--prefix", prefix, "--redeliver", str(redeliver), "--workspaces", str(workspaces)],
                            stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=count / rate + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return json.loads(out.strip().splitlines()[-1])


def paced_child(args) -> None:
    import paced

    paced.signed_delivery = lambda msg_id, _body: harness.signed_delivery(msg_id, task_body(msg_id))
    spread = workspace_names(args.workspaces) if args.workspaces > 1 else None
    result = asyncio.run(paced.run(args.paced_child, args.rate, args.events, 16, args.prefix, args.redeliver, spread))
    result["finished"] = time.time()  # the last answer came in just now
    print(json.dumps(result))


# --- phases -----------------------------------------------------------------------------------------
def phase_figures(name: str, honcho: Honcho, sink: Sink, acked: int, started: float, last_ack: float,
                  cpu_before: dict, args) -> dict:
    """Drain after a phase's load: writes, lost and duplicates, CPU per event."""
    at_last_ack = sink.stats()
    stats, noticed, how = wait_for_writes(sink, acked, args.stall, args.drain_timeout)
    cpu_after = honcho.cpu()
    valkey = valkey_figures(args.valkey, acked)
    final = settle(sink)
    cpu = {n: cpu_after.get(n, 0.0) - cpu_before.get(n, 0.0) for n in cpu_after}
    first, last = final["first"], final["last"]
    return {
        "phase": name, "acked": acked, "drain": how, "posts": final["posts"], "distinct": final["distinct"],
        "lost": max(0, acked - final["distinct"]), "extra": max(0, final["distinct"] - acked),
        "dup": final["posts"] - final["distinct"], "dup_events": final["duplicated"], "other_writes": final["other"],
        "writes_per_s": (final["posts"] - 1) / (last - first) if final["posts"] > 1 and last > first else 0.0,
        "events_per_s": final["distinct"] / (last - started) if last and last > started else 0.0,
        "backlog_at_last_ack": max(0, acked - at_last_ack["distinct"]),
        "writes_after_last_ack_s": (last - last_ack) if last else None,
        "cpu_s": sum(cpu.values()), "cpu_by_name": cpu, "window_s": noticed - started,
        "cpu_ms_per_event": sum(cpu.values()) / max(1, acked) * 1000, "valkey": valkey,
    }


def valkey_figures(valkey: redis.Redis, events: int) -> dict:
    """Valkey's work per event since the phase began: reads of a client's request (a command or a
    pipeline: a round trip) and command calls by name (a script's own commands counted apart)."""
    events = max(1, events)
    reads = int(valkey.info("stats").get("total_reads_processed", 0))
    calls = {name.removeprefix("cmdstat_"): v["calls"] / events for name, v in valkey.info("commandstats").items()
             if name not in ("cmdstat_info", "cmdstat_config|resetstat")}
    return {"round_trips_per_event": reads / events, "calls_per_event": calls}


def closed_loop(honcho: Honcho, sink: Sink, hooks: str, tmp: Path, args) -> dict:
    prefix = f"a{int(time.time())}"
    if args.flood_rate:  # default's deliveries at a rate instead (a sender the web keeps up with), then the drain
        sink.reset()
        args.valkey.config_resetstat()
        cpu_before, started = honcho.cpu(), time.time()
        load = paced_open_loop(hooks, args.flood_rate, int(args.flood_rate * args.flood_seconds), prefix)
        acked = load["statuses"].get("202", 0)
        figures = phase_figures("flood", honcho, sink, acked, started, load["finished"], cpu_before, args)
        figures.update(load=load, acks_per_s=acked / max(load["seconds"], 1e-9), p50=load["p50_ms"], p99=load["p99_ms"])
        return figures
    count = args.events if not args.seconds else args.seconds * args.max_per_second
    deliveries = tmp / "deliveries.tsv"
    write_deliveries(deliveries, count, prefix)
    sink.reset()
    args.valkey.config_resetstat()
    cpu_before = honcho.cpu()
    load = wrk_closed_loop(hooks, deliveries, args.connections, args.seconds, args.drain_timeout)
    acked = load["statuses"].get("202", 0)
    figures = phase_figures("closed", honcho, sink, acked, load["started"], load["finished"], cpu_before, args)
    figures.update(load=load, acks_per_s=acked / load["wall"], p50=load["p50_ms"], p99=load["p99_ms"])
    return figures


def open_loop(honcho: Honcho, sink: Sink, hooks: str, args) -> dict:
    sink.reset()
    args.valkey.config_resetstat()
    cpu_before = honcho.cpu()
    started = time.time()
    if args.workspaces > 1:  # each delivery to the next workspace's hook, in turn
        hooks = hooks.replace("/hooks/", "/workspaces/{ws}/hooks/")
    load = paced_open_loop(hooks, args.rate, int(args.rate * args.rate_seconds), f"b{int(started)}", args.redeliver,
                           args.workspaces)
    last_ack = load["finished"]
    acked = load["statuses"].get("202", 0)
    figures = phase_figures("open", honcho, sink, acked, started, last_ack, cpu_before, args)
    figures.update(load=load, p50=load["p50_ms"], p99=load["p99_ms"])
    return figures


def print_phase(r: dict) -> None:
    load = r["load"]
    if r["phase"] == "closed":
        print(f"  closed loop ({load['requests']} answered in {r['load']['wall']:.1f}s, statuses {load['statuses']}, "
              f"timeouts {load['errors_timeout']}, wrapped {load['wrapped']}): {r['acks_per_s']:.0f} acks/s, "
              f"p50 {load['p50_ms']:.1f} ms, p90 {load['p90_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, "
              f"max {load['max_ms']:.0f} ms")
    else:
        print(f"  open loop {load['rate']}/s achieved over {load['seconds']:.1f}s (statuses {load['statuses']}, "
              f"errors {load['errors']}): p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, "
              f"max {load['max_ms']:.0f} ms")
    after = r["writes_after_last_ack_s"]
    print(f"  {r['phase']}: drain {r['drain']}; {r['acked']} acked, {r['posts']} writes ({r['distinct']} distinct, "
          f"{r['dup_events']} events written twice or more), lost {r['lost']}, dup {r['dup']}"
          + (f", written but not counted as acked {r['extra']}" if r["extra"] else "")
          + (f", other writes {r['other_writes']}" if r["other_writes"] else ""))
    print(f"  {r['phase']}: {r['writes_per_s']:.0f} writes/s first to last write, {r['events_per_s']:.0f} events/s "
          f"first delivery to last write; backlog at the last ack {r['backlog_at_last_ack']}, last write "
          f"{after:.1f}s after it" if after is not None else "no writes")
    print(f"  {r['phase']}: stack CPU {r['cpu_s']:.1f}s over {r['window_s']:.1f}s ({r['cpu_s'] / max(r['window_s'], 1e-9):.2f} cores) "
          f"= {r['cpu_ms_per_event']:.2f} ms/event; by process: "
          + ", ".join(f"{n} {s:.1f}s" for n, s in sorted(r["cpu_by_name"].items())))
    calls = sorted(r["valkey"]["calls_per_event"].items(), key=lambda kv: -kv[1])
    print(f"  {r['phase']}: Valkey per event: {r['valkey']['round_trips_per_event']:.1f} round trips; "
          f"{sum(c for _, c in calls):.1f} commands (" + ", ".join(f"{n} {c:.2f}" for n, c in calls if c >= 0.05) + ")")


def stack_env(root: Path, ports: dict, tmp: Path, sink: Sink, args) -> dict:
    env = {k: v for k, v in os.environ.items() if not is_stack_setting(k)}
    redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
    env.update({
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        "PORT": str(ports["web"]), "WEB_PORT": str(ports["web"]), "EMBEDDED_REDIS": "1",
        "REDIS_PORT": str(ports["redis"]), "REDIS_DIR": str(tmp / "redis"), "REDIS_URL": redis_url,
        "SANDBOX_PORT": str(ports["sandbox"]), "SANDBOX_TOKEN": "sandbox-token",
        "SANDBOX_ENGINE_TOKEN": "sandbox-engine-token", "INLOOX_URL": sink.url, "INLOOX_API_KEY": "sandbox-engine-token",
        "DEV_INBOX": "1", "TEAM_CHANNEL_URL": f"json://127.0.0.1:{ports['web']}/dev/inbox", "OUTBOUND_ALLOW": "127.0.0.1",
        "RULES_PATH": str(tmp / "rules"), f"WEBHOOK_SECRET_{harness.WEBHOOK_SOURCE.upper()}": harness.WEBHOOK_SECRET,
        "INLOOX_REQUESTS_PER_SECOND": str(args.inloox_rps),
        "STACK_ENV": "",  # not the settings of a `make run` the checkout may have going (var/stack.env)
        # As `make run` does (it generates var/secrets.key): a checkout without the registry ignores it.
        "SECRETS_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
    })
    return env


def workspace_names(count: int) -> list[str]:
    """`--workspaces N`: the hosted service's workspaces, `default` (the closed loop's) and N - 1 more."""
    return ["default"] + [f"ws{n}" for n in range(1, count)]


def write_workspaces(path: Path, count: int, tmp: Path, sink: Sink, args) -> None:
    """A WORKSPACES_FILE of `count` workspaces, each as the single one is: the bench rule, the sink, the secret
    (with `--neighbour`, ws1 has NEIGHBOUR_RULE instead)."""
    one = {"inloox_url": sink.url, "inloox_api_key": "sandbox-engine-token", "rules": str(tmp / "rules"),
           "webhooks": {harness.WEBHOOK_SOURCE: [harness.WEBHOOK_SECRET]},
           "limits": {"inloox_requests_per_second": args.inloox_rps, "webhooks_per_second": 0}}
    every = {name: one for name in workspace_names(count)}
    every["default"] = {**one, "limits": {**one["limits"], "webhooks_per_second": args.pace}}
    if args.neighbour:
        every[NEIGHBOUR] = {**one, "rules": str(tmp / "rules-neighbour")}
    path.write_text(json.dumps({"workspaces": every}))  # JSON is YAML


NEIGHBOUR = "ws1"  # `--neighbour`: the quiet workspace


class Trickle:
    """`--neighbour`: deliveries to the quiet workspace at `rate` a second on a thread, each one's send time kept."""

    def __init__(self, base: str, rate: float, prefix: str):
        self.url = f"{base}/workspaces/{NEIGHBOUR}/hooks/{harness.WEBHOOK_SOURCE}"
        self.rate, self.prefix = rate, prefix
        self.sent: dict[str, float] = {}  # the task's Name -> when it was sent (time.time())
        self.acks: list[float] = []  # ms
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)

    def start(self) -> "Trickle":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _send(self) -> None:
        session, n, start = requests.Session(), 0, time.monotonic()
        while not self._stop.is_set():
            msg_id = f"{self.prefix}-{n}"
            body = task_body(msg_id)
            raw, headers = harness.signed_delivery(msg_id, body)
            sent, begun = time.time(), time.perf_counter()
            try:
                answer = session.post(self.url, data=raw, headers={**headers, "content-type": "application/json"},
                                      timeout=30)
                ok = answer.status_code == 202
            except requests.RequestException:
                ok = False
            if ok:
                self.sent[body["task"]["Name"]] = sent
                self.acks.append((time.perf_counter() - begun) * 1000)
            else:
                self.refused += 1
            n += 1
            self._stop.wait(max(0.0, start + n / self.rate - time.monotonic()))

    def figures(self, sink: Sink, timeout: float = 60) -> dict:
        """Once every accepted delivery was written (or `timeout`): end-to-end (send to write) and ack figures."""
        deadline = time.monotonic() + timeout
        while True:
            at = requests.get(f"http://127.0.0.1:{sink.port}/_sink/at/Task", timeout=10).json()
            if all(name in at for name in self.sent) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        e2e = sorted((at[name] - sent) * 1000 for name, sent in self.sent.items() if name in at)
        acks = sorted(self.acks)

        def pct(values, q):
            return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")
        return {"sent": len(self.sent), "refused": self.refused, "unwritten": len(self.sent) - len(e2e),
                "e2e_p50": pct(e2e, 0.5), "e2e_p99": pct(e2e, 0.99), "e2e_max": e2e[-1] if e2e else float("nan"),
                "ack_p50": pct(acks, 0.5), "ack_p99": pct(acks, 0.99)}


def print_neighbour(phase: str, f: dict) -> None:
    print(f"  {NEIGHBOUR} {phase}: {f['sent']} sent ({f['refused']} not accepted), {f['unwritten']} not written; "
          f"send to write p50 {f['e2e_p50']:.0f} ms, p99 {f['e2e_p99']:.0f} ms, max {f['e2e_max']:.0f} ms; "
          f"ack p50 {f['ack_p50']:.1f} ms, p99 {f['ack_p99']:.1f} ms", flush=True)


def run(args) -> None:
    root = Path(args.root).resolve()
    names = procfile_names(root)
    concurrency = {}
    if args.workers:
        if "worker" not in names:
            raise SystemExit(f"--workers: {root / 'Procfile'} has no process named 'worker' (it has {', '.join(names)})")
        concurrency["worker"] = args.workers
    print(harness.machine())
    print(f"root {root} at {describe(root)}; Procfile: {', '.join(names)}; not measured: "
          f"{', '.join(sorted(NOT_PRODUCTION & set(names))) or 'none'}")
    print("busy before:", ", ".join(harness.busy_processes()) or "nothing over 5%", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    (tmp / "redis").mkdir()
    (tmp / "rules").mkdir()
    (tmp / "rules" / "book-done-task.yaml").write_text(RULE)
    if args.neighbour:
        if args.workspaces < 2:
            raise SystemExit("--neighbour needs --workspaces 2 or more (its deliveries go to ws1)")
        (tmp / "rules-neighbour").mkdir()
        (tmp / "rules-neighbour" / "copy-task.yaml").write_text(NEIGHBOUR_RULE)
    sink = honcho = None
    ok = False
    try:
        sink = Sink(args.latency_ms)
        ports = {"web": harness.free_port(), "redis": harness.free_port(), "sandbox": harness.free_port()}
        env = stack_env(root, ports, tmp, sink, args)
        if args.workspaces > 1:
            write_workspaces(tmp / "workspaces.yaml", args.workspaces, tmp, sink, args)
            env["WORKSPACES_FILE"] = str(tmp / "workspaces.yaml")
        check = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "rules", "check", str(tmp / "rules")],
                               cwd=root, env=env, capture_output=True, text=True, timeout=120)
        if check.returncode:
            raise SystemExit(f"the bench rule does not check:\n{check.stdout}{check.stderr}")
        started = time.monotonic()
        honcho = Honcho(root, env, concurrency, tmp / "honcho.log")
        base = f"http://127.0.0.1:{ports['web']}"
        ready = wait_ready(base, honcho, args.start_timeout)
        probe_every_web_process(base)
        honcho.fix()
        missing = [f"{n}.{i}" for n in names for i in range(1, concurrency.get(n, 1) + 1)
                   if f"{n}.{i}" not in honcho.processes()]
        if missing:
            raise SystemExit(f"honcho did not start {', '.join(missing)}:\n{honcho.output()[-4000:]}")
        print(f"  started in {time.monotonic() - started:.1f}s: {', '.join(f'{n}[{p}]' for n, p in honcho.processes().items())}; "
              f"/readyz {ready.get('checks', {}).get('worker')}", flush=True)
        time.sleep(args.idle_seconds)  # imports done, first poll, rules loaded
        samples, cpu0, t0 = [], honcho.cpu(), time.monotonic()
        for _ in range(int(args.idle_seconds / 0.5)):
            samples.append(honcho.rss())
            time.sleep(0.5)
        idle_cores = (sum(honcho.cpu().values()) - sum(cpu0.values())) / (time.monotonic() - t0)
        idle = {n: statistics.median(s[n] for s in samples if n in s) for n in samples[-1]}
        pss = honcho.pss()
        print(f"  idle ({args.idle_seconds:.0f}s, median): RSS {sum(idle.values()):.0f} MB ("
              + ", ".join(f"{n} {mb:.0f}" for n, mb in sorted(idle.items())) + f"); PSS {sum(pss.values()):.0f} MB ("
              + ", ".join(f"{n} {mb:.0f}" for n, mb in sorted(pss.items())) + f"); stack CPU {idle_cores:.3f} cores",
              flush=True)
        hooks = f"{base}/hooks/{harness.WEBHOOK_SOURCE}"
        args.valkey = redis.Redis.from_url(env["REDIS_URL"])
        neighbour = {}
        if args.neighbour:  # the quiet workspace alone first, then beside the closed loop's flood and its drain
            trickle = Trickle(base, args.neighbour, f"n{int(time.time())}").start()
            time.sleep(args.neighbour_seconds)
            trickle.stop()
            neighbour["alone"] = trickle.figures(sink)
            print_neighbour("alone", neighbour["alone"])
        honcho.measuring = True
        trickle = Trickle(base, args.neighbour, f"f{int(time.time())}").start() if args.neighbour else None
        closed = closed_loop(honcho, sink, hooks, tmp, args)
        if trickle:
            trickle.stop()
            neighbour["flood"] = trickle.figures(sink)
        print_phase(closed)
        if trickle:
            print_neighbour("beside the flood and its drain", neighbour["flood"])
        opened = None
        if args.rate and args.rate_seconds:
            opened = open_loop(honcho, sink, hooks, args)
            print_phase(opened)
        honcho.measuring = False
        print(f"  RSS peak {honcho.peak:.0f} MB (per process, each at its own peak: "
              + ", ".join(f"{n} {mb:.0f}" for n, mb in sorted(honcho.peak_by_name.items())) + ")")
        log = honcho.output()
        problems = [f"{log.count('Traceback')} tracebacks"] if "Traceback" in log else []
        problems += honcho.stopped()
        problems += [f"{phase['phase']}: {phase['dup']} duplicated, {phase['lost']} lost"
                     for phase in (closed, opened) if phase and (phase["dup"] or phase["lost"])]
        if problems:
            print("  stack problems: " + "; ".join(problems) + f" (honcho's output kept: {tmp / 'honcho.log'})")
        figures = {"root": describe(root), "workers": args.workers or 1, "workspaces": args.workspaces,
                   "latency_ms": args.latency_ms,
                   "inloox_rps": args.inloox_rps, "events": closed["acked"], "acks": f"{closed['acks_per_s']:.0f}/s",
                   "p99": f"{closed['p99']:.1f}ms", "writes": f"{closed['writes_per_s']:.0f}/s",
                   "e2e": f"{closed['events_per_s']:.0f}/s", "cpu": f"{closed['cpu_ms_per_event']:.2f}ms/event",
                   "rss_idle": f"{sum(idle.values()):.0f}MB", "pss_idle": f"{sum(pss.values()):.0f}MB", "rss_peak": f"{honcho.peak:.0f}MB",
                   "lost": closed["lost"], "dup": closed["dup"]}
        if opened:
            figures.update({f"p99_at_{args.rate:g}": f"{opened['p99']:.1f}ms",
                            f"backlog_at_{args.rate:g}": opened["backlog_at_last_ack"],
                            f"drain_after_{args.rate:g}": f"{opened['writes_after_last_ack_s'] or 0:.1f}s",
                            f"cpu_at_{args.rate:g}": f"{opened['cpu_ms_per_event']:.2f}ms/event",
                            "lost_open": opened["lost"], "dup_open": opened["dup"]})
        for phase, f in neighbour.items():
            figures.update({f"{NEIGHBOUR}_{phase}_e2e_p99": f"{f['e2e_p99']:.0f}ms",
                            f"{NEIGHBOUR}_{phase}_ack_p99": f"{f['ack_p99']:.1f}ms"})
        print(harness.summary("stack", **figures), flush=True)
        ok = not problems
    finally:
        if honcho:
            honcho.stop()
        if sink:
            sink.stop()
        shutil.rmtree(tmp / "redis", ignore_errors=True)  # the AOF; honcho.log is kept after a problem
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"  kept {tmp} (honcho.log: the stack's output)")
    print("busy after:", ", ".join(harness.busy_processes()) or "nothing over 5%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000, help="closed loop: deliveries, each sent once")
    parser.add_argument("--seconds", type=int, default=0, help="closed loop: run wrk this long instead of --events")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=float, default=200, help="open loop: deliveries per second (0: no open loop)")
    parser.add_argument("--rate-seconds", type=float, default=20)
    parser.add_argument("--redeliver", type=float, default=0.0,
                        help="open loop: this share of deliveries resend an earlier one (same webhook-id): a soak")
    parser.add_argument("--latency-ms", type=float, default=0, help="the sink answers InLoox requests this much later")
    parser.add_argument("--workers", type=int, default=0, help="honcho -c worker=N (default: the Procfile's one)")
    parser.add_argument("--inloox-rps", type=float, default=0, help="INLOOX_REQUESTS_PER_SECOND (0: no budget)")
    parser.add_argument("--workspaces", type=int, default=1,
                        help="a hosted service's N workspaces (WORKSPACES_FILE), the open loop's deliveries to each in turn")
    parser.add_argument("--neighbour", type=float, default=0,
                        help="with --workspaces 2 or more: ws1 sends this many deliveries a second, alone for "
                             "--neighbour-seconds, then beside the closed loop's flood of default: what it waits")
    parser.add_argument("--neighbour-seconds", type=float, default=10)
    parser.add_argument("--flood-rate", type=float, default=0,
                        help="instead of the closed loop: default's deliveries at this rate (bench/paced.py) for --flood-seconds")
    parser.add_argument("--flood-seconds", type=float, default=20)
    parser.add_argument("--pace", type=float, default=0,
                        help="with --workspaces 2 or more: default's webhooks_per_second (0: none); faster deliveries get 429")
    parser.add_argument("--root", default=str(harness.ROOT), help="the checkout to run (its Procfile and code)")
    parser.add_argument("--idle-seconds", type=float, default=5, help="wait, then sample idle RSS, this long each")
    parser.add_argument("--start-timeout", type=float, default=120)
    parser.add_argument("--drain-timeout", type=float, default=900, help="at most this long for one phase's writes")
    parser.add_argument("--stall", type=float, default=60, help="give up a drain after this long without a write")
    parser.add_argument("--max-per-second", type=int, default=4000, help="--seconds: deliveries signed per second")
    parser.add_argument("--paced-child", help=argparse.SUPPRESS)  # internal: the open loop's process
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paced_child:
        return paced_child(args)

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`&`)
    run(args)


if __name__ == "__main__":
    main()
