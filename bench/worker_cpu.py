"""The worker's own CPU per event, in one process on one thread, code against code (issue 22).

    .venv/bin/python bench/worker_cpu.py [--events 6000] [--batch 8] [--together [--workspaces N]] [--repeats 3]
        [--breakdown | --instructions] [--root DIR ...]

bench/stack.py measures the whole stack, and its figures move by 5-15 % with whatever else the machine
runs: a change worth 3 % of the worker cannot be seen there without many pairs. This runs only what a
busy worker's event thread runs for its events, `workers.jobs.handle_batch` on `--batch` events at a
time (the consumer's busy batches, workers/consumer/in_flight.py), for bench/stack.py's rule, against
a durable embedded Valkey and bench/sink.py answering at once (`--together`: the batch's events run together,
as the busy floor's thread runs them, inloox/together.py; the root must have that; `--workspaces N`: each batch's
events spread over N workspaces in turns, as a hosted worker's busy floor takes them, workers.jobs.handle_together,
which the root must have), and counts the thread's CPU per event
(time.process_time: the thread is the process's only busy one). Not in it: the consumer's read and
acknowledgement of the events, the gate, other threads and their GIL hand-overs, the web, and the
run-end log lines (logging is at WARNING here; a worker writes one INFO line per run).

Each `--root` (a checkout or an exported tree; default this one) runs in a child process of its own,
with its own Valkey, roots alternating, `--repeats` times; the figure is the median. The child imports
the engine and the workers of its root, nothing of this checkout but what it is handed in files.

`--instructions`: instead of CPU time, the instructions the child executes per event, counted by valgrind
(`--tool=cachegrind --cache-sim=no`; `apt-get install -y valgrind`): each run handles `--events` and a fifth
of them under valgrind, and the figure is the difference over the difference of events, so start-up and the
warm-up cancel out. CPU time on this shared machine moves by 10-30 % with what else runs (helpers' test runs,
other benches); the instruction count of the same tree moves by well under 1 %, so a change worth 3 % shows
in one pair. It is slow (valgrind runs Python ~40 times slower: ~2 minutes a run for 2,000 events), and
instructions are not time: a system call or a cache miss costs more than its count says.

`--breakdown`: also where an event's CPU goes, by timing (thread CPU) what handle_batch calls: the plan
(`_plan`), storing the runs (`_start_each`), the InLoox request (`Client._send`, of which http.client's
header parsing), the ends (`Ending.flush`), the rest of running the event. Timing costs a little
itself; compare breakdowns with breakdowns.

Valkey and the sink run in process groups of their own and are stopped on exit, error or Ctrl+C.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARM_UP = 400  # events handled before measuring: imports, connections, the rules' first load


def parent(args) -> None:
    sys.path.insert(0, str(HERE))
    import harness
    import stack

    roots = [Path(r).resolve() for r in (args.root or [HERE.parent])]
    print(harness.machine())
    print("busy before:", ", ".join(harness.busy_processes()) or "nothing over 5%", flush=True)
    sink = stack.Sink(0)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-worker-cpu-") as tmp:
            (Path(tmp) / "rules").mkdir()
            (Path(tmp) / "rules" / "book-done-task.yaml").write_text(stack.RULE)
            figures: dict[Path, list[float]] = {root: [] for root in roots}
            bodies = Path(tmp) / "bodies.json"
            bodies.write_text(json.dumps([stack.task_body(f"cpu-{i}") for i in range(args.events + WARM_UP)]))
            # The caller's settings stay out of the children (a real InLoox token, a WORKSPACES_FILE), as
            # bench/stack.py keeps them out of its stack; the child sets what it needs.
            env = {name: None for name in os.environ if stack.is_stack_setting(name)}
            for repeat in range(args.repeats):
                for root in roots:
                    if args.instructions:
                        fewer = max(args.events // 5, args.batch)
                        counts = [_counted(root, args, events, Path(tmp), bodies, sink, env, harness)
                                  for events in (fewer, args.events)]
                        per_event = (counts[1] - counts[0]) / (args.events - fewer)
                        figures[root].append(per_event)
                        print(f"{root} run {repeat + 1}: {per_event / 1e6:.3f} M instructions per event", flush=True)
                        continue
                    line = _measured(root, args, args.events, Path(tmp), bodies, sink, env, harness)
                    figures[root].append(line["us_per_event"])
                    breakdown = "".join(f"; {k} {v:.0f}" for k, v in line.get("breakdown", {}).items())
                    print(f"{root} run {repeat + 1}: {line['us_per_event']:.0f} us of CPU per event, "
                          f"{line['events_per_second']:.0f} events/s{breakdown}", flush=True)
            for root, values in figures.items():
                if args.instructions:
                    print(f"worker_cpu: root={root} batch={args.batch} events={args.events} "
                          f"instructions_per_event={statistics.median(values) / 1e6:.3f}M "
                          f"(min {min(values) / 1e6:.3f}, max {max(values) / 1e6:.3f}, {len(values)} runs)")
                    continue
                print(f"worker_cpu: root={root} batch={args.batch} events={args.events} "
                      f"us_per_event={statistics.median(values):.0f} (min {min(values):.0f}, max {max(values):.0f}, "
                      f"{len(values)} runs)")
    finally:
        sink.stop()
    print("busy after:", ", ".join(harness.busy_processes()) or "nothing over 5%")


def _measured(root: Path, args, events: int, tmp: Path, bodies: Path, sink, env: dict, harness,
              valgrind: list[str] = ()) -> dict:
    """One child's run of `events` (after the warm-up), its JSON line; the sink must have seen each write once."""
    sink.reset()
    line = _child(root, args, events, tmp, bodies, sink.url, env, harness, valgrind)
    written = sink.stats()
    if written["distinct"] != events + WARM_UP or written["duplicated"]:
        raise SystemExit(f"{root}: the sink saw {written['distinct']} distinct writes "
                         f"({written['duplicated']} twice or more), not {events + WARM_UP}")
    return line


def _counted(root: Path, args, events: int, tmp: Path, bodies: Path, sink, env: dict, harness) -> int:
    """The instructions one child executed for `events` (and its start-up and warm-up), counted by valgrind."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind: apt-get install -y valgrind")
    out = tmp / f"cachegrind.{root.name}.{events}"
    _measured(root, args, events, tmp, bodies, sink, env, harness,
              ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}"])
    summary = [line for line in out.read_text().splitlines() if line.startswith("summary:")]
    out.unlink()
    return int(summary[0].split()[1])


def _child(root: Path, args, events: int, tmp: Path, bodies: Path, sink_url: str, env: dict, harness,
           valgrind: list[str] = ()) -> dict:
    command = [*valgrind, sys.executable, str(Path(__file__).resolve()), "--child", str(root), "--events", str(events),
               "--batch", str(args.batch), "--bodies", str(bodies), "--rules", str(tmp / "rules"),
               "--sink", sink_url, "--source", harness.WEBHOOK_SOURCE]
    if args.breakdown:
        command.append("--breakdown")
    if args.together:
        command.append("--together")
    if args.workspaces > 1:
        command += ["--workspaces", str(args.workspaces)]
    process = harness.Process(command, name=f"worker-cpu-{root.name}", env=env)
    try:
        process.popen.wait(args.timeout)
    finally:
        process.stop()  # a child still running (Ctrl+C, a time-out) goes with its group, its Valkey too
    if process.popen.returncode != 0:
        raise SystemExit(f"{root}: the child failed ({process.popen.returncode}):\n{process.output()[-3000:]}")
    return json.loads([line for line in process.output().splitlines() if line.startswith("{")][-1])


def child(args) -> None:
    """One run: handle the bodies' events with the root's code; one JSON line on stdout."""
    root = Path(args.child)
    sys.path.insert(0, str(root))
    os.chdir(root)
    import base64
    import time
    from datetime import datetime, timezone

    from workers.redis_server import start_embedded

    data = tempfile.mkdtemp(prefix="bench-worker-cpu-valkey-")
    server = start_embedded(data_dir=Path(data))  # durable, as in production (AOF, fsync every second)
    try:
        os.environ.update({
            "REDIS_URL": f"redis://127.0.0.1:{server.port}/0", "INLOOX_URL": args.sink, "INLOOX_API_KEY": "bench",
            "INLOOX_REQUESTS_PER_SECOND": "0", "RULES_PATH": args.rules, "STACK_ENV": "",
            "SECRETS_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(), "LOG_LEVEL": "WARNING",
        })
        import logging

        from engine import Event
        from workers import metrics, workspaces
        from workers.jobs import Arrival, handle_batch
        from workers.worker_context import worker_context

        logging.basicConfig(level=logging.WARNING)
        metrics.batch(1.0)  # as workers/worker.py has it
        ctx = worker_context("default")
        workspaces.enter(ctx.workspace)  # as the consumer's thread does (workspaces.using)
        now, pid = datetime.now(timezone.utc), os.getpid()
        events = [Event(source="webhook", kind=args.source, id=f"webhook:{args.source}:cpu{pid}_{i}", occurred_at=now,
                        payload={"id": f"cpu{pid}_{i}", "body": body, "headers": {}}).to_dict()
                  for i, body in enumerate(json.loads(Path(args.bodies).read_text())[:WARM_UP + args.events])]
        accepted = time.time()

        together = {"together": True} if args.together else {}  # a root from before has no such argument
        contexts = [ctx] + [_another(ctx, f"bench{n}") for n in range(1, args.workspaces)]

        def handle(chunk: list[dict]) -> None:
            if len(contexts) > 1:
                from workers.jobs import handle_together

                shares = [(c, [Arrival(e, accepted) for e in chunk[n::len(contexts)]]) for n, c in enumerate(contexts)]
                outcomes = [o for part in handle_together([s for s in shares if s[1]]) for o in part]
            else:
                outcomes = handle_batch(ctx, [Arrival(event, accepted) for event in chunk], **together)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome

        for at in range(0, WARM_UP, args.batch):
            handle(events[at:at + args.batch])
        try:  # as workers/worker.py does once started; a root from before has no such step
            from workers.heap import settle
        except ImportError:
            try:
                from workers.worker import settle_heap as settle
            except ImportError:
                settle = None
        if settle is not None:
            settle()
        timings = _timed_pieces() if args.breakdown else None
        cpu, wall = time.process_time(), time.monotonic()
        for at in range(WARM_UP, len(events), args.batch):
            handle(events[at:at + args.batch])
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        line = {"us_per_event": 1e6 * cpu / args.events, "events_per_second": args.events / wall}
        if timings is not None:
            line["breakdown"] = {name: 1e6 * seconds / args.events for name, seconds in timings.items()}
        print(json.dumps(line), flush=True)
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)  # its AOF, left in /tmp by every run before


def _another(ctx, name: str):
    """A workspace beside `ctx`'s with the same rules, InLoox and Redis connection, as a hosted worker's are."""
    import dataclasses

    from workers import worker_context

    workspace = dataclasses.replace(ctx.workspace, name=name)
    return worker_context.build_context(worker_context._config, workspace, ctx.connection)


def _timed_pieces() -> dict[str, float]:
    """Wrap what handle_batch calls so that each adds its thread CPU to the dict returned (seconds)."""
    import functools
    import http.client
    import time

    import inloox.client
    from workers import jobs

    spent: dict[str, float] = {}

    def wrap(owner, name: str, label: str) -> None:
        original = getattr(owner, name)
        spent[label] = 0.0

        @functools.wraps(original)
        def timed(*a, **k):
            started = time.thread_time()
            try:
                return original(*a, **k)
            finally:
                spent[label] += time.thread_time() - started
        setattr(owner, name, timed)

    wrap(jobs, "_plan", "plan")
    wrap(jobs, "_start_each", "runs stored")
    wrap(jobs, "_execute_event", "run (InLoox request included)")
    wrap(inloox.client.Client, "_send", "InLoox request")
    wrap(http.client, "parse_headers", "its header parsing")
    wrap(jobs.Ending, "flush", "runs ended")
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=6000, help="events measured per run (after a warm-up)")
    parser.add_argument("--batch", type=int, default=8, help="events per handle_batch call (a busy worker's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", action="append", help="code to measure (repeatable; default this checkout)")
    parser.add_argument("--breakdown", action="store_true", help="also where an event's CPU goes")
    parser.add_argument("--together", action="store_true", help="run each batch's events together (the busy floor's way)")
    parser.add_argument("--workspaces", type=int, default=1, help="with --together: spread each batch over this many workspaces")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per event under valgrind instead of CPU time")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take")
    child_options = parser.add_argument_group("a child's (one run of one root, started by the parent)")
    child_options.add_argument("--child", help=argparse.SUPPRESS)
    for name in ("--bodies", "--rules", "--sink", "--source"):
        child_options.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
