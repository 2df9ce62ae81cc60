"""Tenants: what an idle workspace costs, and how fast a person's change is still seen (issue 21).

    .venv/bin/python bench/tenants.py [--workspaces 30] [--idle-seconds 300] [--measure-seconds 60]

Starts Valkey (durable, as in production), the sandbox (a project with tasks, contacts, checklists and
a portfolio, written as a person) and the stack's worker and poller processes as the Procfile runs
them (`rq worker` with the worker class; `python -m workers.poller --with-scheduler`). There are
`--workspaces` workspaces, all on the sandbox with the example rules of rules/ (Task and
DynamicProject by change feed; Contact, CheckList and Portfolio by scan; a schedule): `default`, as
the settings declare it, and the others created in the registry (workers.registry.put, as the
operator API does). The web is not started (it costs nothing while nobody calls it).

Once every workspace has its baselines, nothing happens for `--idle-seconds`; then, over
`--measure-seconds` of more idling, per idle workspace:
  - InLoox requests per minute (the sandbox's request log, cleared at the window's start);
  - CPU of the worker and poller processes (utime + stime), and of Valkey, in ms per second;
  - Redis commands per second (the calls of INFO commandstats, before and after; the bench's own
    few reads are counted in, a handful);
  - Redis memory: MEMORY USAGE summed over the workspace's `ws:<name>:*` keys (median workspace),
    and used_memory over the workspaces.
Then change detection: a person ticks a task (a watched field; it has no planned effort, so no rule
writes anything) and the bench reads, in each workspace's event log, when its event was accepted
(the entry id is Valkey's clock): first after the idle period (an idle set), then again 20 s later
(a set active in the last minute). Latency = acceptance − the moment the sandbox answered the change.
All workspaces read the same sandbox, so one change is seen once per workspace: N samples each.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402

from workers import registry  # noqa: E402
from workers.secrets import Keyring, generate_key  # noqa: E402

PERSON_TOKEN, ENGINE_TOKEN = "bench-person", "bench-engine"
PROJECT = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
RULES = ("contact-email-changed", "checklist-added", "portfolio-manager-changed", "project-budget-changed",
         "log-time-when-task-done", "task-moved-to-review", "unassigned-task-alert", "overdue-tasks-digest",
         "archive-project")


def seed(odata: str, *, tasks: int = 20, contacts: int = 50) -> str:
    """A project with tasks, checklists, a portfolio and contacts, written as a person; the id of a task to tick."""
    session = requests.Session()
    session.headers["x-api-key"] = PERSON_TOKEN
    for path, body in [("Project", {"ProjectId": PROJECT, "Name": "Bench"}),
                       ("Portfolio", {"Name": "Bench portfolio"}),
                       *(("CheckList", {"Name": f"List {n}", "ProjectId": PROJECT}) for n in range(3)),
                       *(("Contact", {"DisplayName": f"Contact {n}", "Email": f"c{n}@example.com"})
                         for n in range(contacts)),
                       *(("Task", {"Name": f"Task {n}", "ProjectId": PROJECT, "WorkAmount": 1.0})
                         for n in range(tasks))]:
        session.post(odata + path, json=body, timeout=10).raise_for_status()
    # No planned effort: ticking it is an event for every workspace and a run for none.
    answer = session.post(odata + "Task", json={"Name": "Ticked by the bench", "ProjectId": PROJECT,
                                                "WorkAmount": 0}, timeout=10)
    answer.raise_for_status()
    return answer.json()["TaskItemId"]


FOLDERS: list[Path] = []  # the rules folders made, removed at the end


def rules_folder(owner: str = "") -> Path:
    """The example rules in a folder of their own; with `owner`, each file names it in a comment, so that
    its texts are the owner's alone (a process compiles a copy per distinct text, not per workspace)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-tenants-rules-"))
    FOLDERS.append(folder)
    for name in RULES:
        source = harness.ROOT / "rules" / f"{name}.yaml"
        if source.exists():
            (folder / source.name).write_text(source.read_text() + (f"\n# the rules of {owner}\n" if owner else ""))
    return folder


def create_workspaces(connection: redis.Redis, keyring: Keyring, count: int, odata: str, rules: Path,
                      probes: int = 0, probe_odata: str = "", own_rules: bool = False) -> list[str]:
    """`default` (declared by the settings) and count − 1 registry workspaces like it; the first
    `probes` of those on `probe_odata` instead; with `own_rules`, each on a rules folder of its own."""
    names = ["default"] + [f"t{n:03d}" for n in range(1, count)]
    for n, name in enumerate(names[1:]):
        folder = rules_folder(name) if own_rules else rules
        registry.put(connection, keyring, name, {"inloox_url": probe_odata if n < probes else odata,
                                                 "inloox_api_key": ENGINE_TOKEN, "rules": str(folder)})
    return names


def command_calls(connection: redis.Redis) -> dict[str, int]:
    """Calls so far by command (INFO commandstats)."""
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in connection.info("commandstats").items()}


def busiest(before: dict[str, int], after: dict[str, int], per: float, top: int = 8) -> str:
    """The commands sent most in between, `per` (workspaces × seconds) each: where Redis's load comes from."""
    sent = sorted(((after[c] - before.get(c, 0), c) for c in after), reverse=True)[:top]
    return ", ".join(f"{c} {n / per:.2f}" for n, c in sent if n)


def monitor(connection: redis.Redis, names: list[str], seconds: float, top: int = 25) -> str:
    """Commands by key pattern over `seconds` (MONITOR; workspace names read as <ws>), per workspace per second."""
    import re
    import collections
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + r")\b")
    tally: collections.Counter = collections.Counter()
    deadline = time.monotonic() + seconds
    with connection.monitor() as feed:
        for item in feed.listen():
            words = item["command"].split(" ")
            key = words[1] if len(words) > 1 else ""
            tally[f"{words[0].upper()} {pattern.sub('<ws>', key)[:60]}"] += 1
            if time.monotonic() >= deadline:
                break
    per = len(names) * seconds
    return "\n".join(f"    {n / per:7.3f}  {what}" for what, n in tally.most_common(top))


def workspace_bytes(connection: redis.Redis, name: str) -> int:
    return sum(connection.memory_usage(k) or 0 for k in connection.scan_iter(f"ws:{name}:*", count=1000))


def tick(odata: str, task: str, done: bool) -> float:
    """A person sets the task's IsDone; the wall time (s) when the sandbox had it."""
    answer = requests.patch(f"{odata}Task({task})", json={"IsDone": done}, timeout=10,
                            headers={"x-api-key": PERSON_TOKEN})
    answer.raise_for_status()
    return time.time()


def detected(connection: redis.Redis, names: list[str], task: str, since: float, timeout: float) -> list[float]:
    """Seconds from `since` to each workspace's acceptance of an event about `task` (missing ones left out)."""
    found: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(found) < len(names) and time.monotonic() < deadline:
        for name in names:
            if name in found:
                continue
            for entry_id, fields in connection.xrevrange(f"ws:{name}:events", count=5):
                accepted = int(entry_id.decode().split("-")[0]) / 1000
                if accepted >= since - 1 and task.encode() in _plain(fields):
                    found[name] = accepted - since
                    break
        time.sleep(0.5)
    return list(found.values())


def _plain(fields: dict) -> bytes:
    return zlib.decompress(fields[b"z"])


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)] if values else float("nan")


def latency_line(label: str, values: list[float], expected: int) -> str:
    if not values:
        return f"  {label}: not detected in any workspace"
    return (f"  {label}: seen by {len(values)}/{expected} workspaces; median {statistics.median(values):.1f}s, "
            f"p95 {p95(values):.1f}s, worst {max(values):.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspaces", type=int, default=30)
    parser.add_argument("--idle-seconds", type=float, default=300)
    parser.add_argument("--measure-seconds", type=float, default=60)
    parser.add_argument("--detect-timeout", type=float, default=120)
    parser.add_argument("--own-rules", action="store_true",
                        help="each workspace on a folder of its own (texts that differ), as a hosted service's customers")
    parser.add_argument("--probes", type=int, default=0,
                        help="measure change detection in this many workspaces on a sandbox of their own "
                             "(0: every workspace sees the change, all at once)")
    parser.add_argument("--baseline-timeout", type=float, default=300,
                        help="how long every workspace may take to have its first polls done")
    parser.add_argument("--monitor-seconds", type=float, default=0,
                        help="after the window, tally commands by key pattern for this long (MONITOR)")
    args = parser.parse_args()
    print(harness.machine())
    print("busy before:", ", ".join(harness.busy_processes()) or "nothing over 5%", flush=True)
    server = harness.redis_server(durable=True)
    port = harness.free_port()
    sandbox = harness.sandbox(port, PERSON_TOKEN, engine_token=ENGINE_TOKEN)
    odata = f"http://127.0.0.1:{port}/api/odata/"
    task = seed(odata)
    probe_sandbox, probe_odata, probe_task = None, odata, task
    if args.probes:
        probe_port = harness.free_port()
        probe_sandbox = harness.sandbox(probe_port, PERSON_TOKEN, engine_token=ENGINE_TOKEN)
        probe_odata = f"http://127.0.0.1:{probe_port}/api/odata/"
        probe_task = seed(probe_odata)
    rules = rules_folder()
    url = f"redis://127.0.0.1:{server.port}/0"
    secrets_key = generate_key()
    env = {"REDIS_URL": url, "RULES_PATH": str(rules), "INLOOX_URL": odata, "INLOOX_API_KEY": ENGINE_TOKEN,
           "SECRETS_KEY": secrets_key, "STACK_ENV": "", "WORKSPACES_FILE": ""}
    connection = redis.Redis.from_url(url)
    names = create_workspaces(connection, Keyring([secrets_key]), args.workspaces, odata, rules,
                              probes=args.probes, probe_odata=probe_odata, own_rules=args.own_rules)
    watching = names[1:1 + args.probes] if args.probes else names  # the workspaces that see the change
    processes = [harness.Process.python("-m", "rq.cli", "worker", "--worker-class", "workers.worker.Worker",
                                        "--with-scheduler", "--serializer", "json", "--dequeue-strategy",
                                        "round_robin", "--url", url, name="worker", env=env),
                 harness.Process.python("-m", "workers.poller", "--with-scheduler", name="poller", env=env)]
    valkey = harness.valkey_pid(server)
    try:
        baselines = [f"ws:{n}:poll:{s}:cursor" for n in names for s in ("Task", "Contact")]
        started = time.monotonic()
        harness.wait_until(lambda: connection.exists(*baselines) == len(baselines), args.baseline_timeout,
                           "every workspace's baselines")
        print(f"  {len(names)} workspaces polled (first polls done in {time.monotonic() - started:.0f}s); "
              f"idle for {args.idle_seconds:g}s", flush=True)
        time.sleep(args.idle_seconds)
        pids = [p for process in processes for p in harness.tree_pids(process.popen.pid)]
        by_process = lambda: {p.name: harness.tree_cpu_seconds(p.popen.pid) for p in processes}  # noqa: E731
        stack_cpu = lambda: sum(by_process().values())  # noqa: E731
        each0 = by_process()
        logs = [odata.replace("/api/odata/", "/_sandbox/requests")] + (
            [probe_odata.replace("/api/odata/", "/_sandbox/requests")] if args.probes else [])
        for log in logs:
            requests.delete(log, timeout=10)
        calls0, cpu0, valkey0, t0 = command_calls(connection), stack_cpu(), \
            harness.cpu_seconds([valkey] if valkey else []), time.monotonic()
        time.sleep(args.measure_seconds)
        seconds = time.monotonic() - t0
        calls1 = command_calls(connection)
        calls = sum(calls1.values()) - sum(calls0.values())
        cpu = stack_cpu() - cpu0
        each = {name: (spent - each0[name]) * 1000 / seconds / len(names) for name, spent in by_process().items()}
        valkey_cpu = harness.cpu_seconds([valkey] if valkey else []) - valkey0
        sent = sum(len(requests.get(log, timeout=10).json()["value"]) for log in logs)
        sizes = sorted(workspace_bytes(connection, n) for n in names)
        used = int(connection.info("memory")["used_memory"])
        rss = harness.rss_mb(pids)
        n = len(names)
        print(f"  idle window {seconds:.0f}s after {args.idle_seconds:g}s idle, per workspace: "
              f"{sent / n / (seconds / 60):.1f} InLoox requests/min; worker+poller CPU "
              f"{cpu * 1000 / seconds / n:.2f} ms/s (all {cpu / seconds:.3f} cores, RSS {rss:.0f} MB); Valkey CPU "
              f"{valkey_cpu * 1000 / seconds / n:.2f} ms/s; {calls / seconds / n:.1f} Redis commands/s; "
              f"Redis {statistics.median(sizes) / 1024:.1f} KiB of ws:<name>:* keys (median; "
              f"{used / n / 1024:.0f} KiB of used_memory)", flush=True)
        print("  CPU per workspace by process: " + ", ".join(f"{k} {v:.2f} ms/s" for k, v in each.items()), flush=True)
        print(f"  Redis commands per workspace per second, busiest: {busiest(calls0, calls1, n * seconds)}", flush=True)
        if args.monitor_seconds:
            print("  Redis commands by key pattern, per workspace per second (MONITOR):\n"
                  + monitor(connection, names, args.monitor_seconds), flush=True)
        idle_since = time.time()
        idle_for = args.idle_seconds + seconds
        seeing = len(watching)
        if args.probes:
            print(f"  change detection in {seeing} workspaces on a sandbox of their own, among {n} workspaces")
        idle = detected(connection, watching, probe_task, tick(probe_odata, probe_task, True), args.detect_timeout)
        print(latency_line(f"change in a set idle for {idle_for:.0f}s", idle, seeing), flush=True)
        time.sleep(max(0.0, 20 - (time.time() - idle_since)))
        active = detected(connection, watching, probe_task, tick(probe_odata, probe_task, False), args.detect_timeout)
        print(latency_line("change in a set active in the last minute", active, seeing), flush=True)
        print(harness.summary(
            "tenants", workspaces=n, idle_s=f"{idle_for:.0f}", requests_per_min=f"{sent / n / (seconds / 60):.1f}",
            cpu_ms_per_s=f"{cpu * 1000 / seconds / n:.2f}", valkey_cpu_ms_per_s=f"{valkey_cpu * 1000 / seconds / n:.2f}",
            redis_cmds_per_s=f"{calls / seconds / n:.1f}", redis_kib=f"{statistics.median(sizes) / 1024:.1f}",
            idle_p95=f"{p95(idle):.1f}s", active_p95=f"{p95(active):.1f}s"), flush=True)
        problems = [p.name for p in processes if "Traceback" in p.output()]
        if problems:
            print("  tracebacks in: " + ", ".join(problems))
            for p in processes:
                print(f"--- {p.name}\n{p.output()[-3000:]}")
    finally:
        for process in processes:
            process.stop()
        sandbox.stop()
        if probe_sandbox is not None:
            probe_sandbox.stop()
        server.stop()
        for folder in FOLDERS:
            shutil.rmtree(folder, ignore_errors=True)
    print("busy after:", ", ".join(harness.busy_processes()) or "nothing over 5%")


if __name__ == "__main__":
    main()
