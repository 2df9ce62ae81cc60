"""The worker's gate alone (workers/consumer/gate.py): what a place costs, and how long a thread waits for one.

    .venv/bin/python bench/gate.py [--threads 400] [--seconds 15] [--answer 1.0] [--work 40000] [--root DIR ...]

Each thread plays an event against a slow InLoox, over and over: inside the gate it runs `--work` loop turns
of Python and holds its place for a 2 ms Redis round trip, steps out for an answer of `--answer` seconds
(±20 %), and comes back in for the run's end. With 400 threads at 1 s and 40,000 turns the process's one
GIL is close to busy, as a worker's is at 300 writes a second (bench/RESULTS.md section 25). Printed per
`--root` (alternating, in one process each): cycles a second, CPU per cycle, and the wait for a place
(p50, p99, max).
"""
from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

ROUND_TRIP = 0.002  # seconds a thread holds its place waiting for Redis


def child(args) -> None:
    spec = importlib.util.spec_from_file_location("gate", Path(args.child) / "workers/consumer/gate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gate = module.Gate()
    stop = time.monotonic() + args.seconds
    cycles, waits, lock = [0], [], threading.Lock()

    def work() -> int:
        total = 0
        for i in range(args.work):
            total += i
        return total

    def enter() -> float:
        asked = time.monotonic()
        gate.enter()
        return time.monotonic() - asked

    def event() -> None:
        rnd = random.Random()
        while time.monotonic() < stop:
            first = enter()
            work()
            time.sleep(ROUND_TRIP)
            gate.leave()
            time.sleep(args.answer * rnd.uniform(0.8, 1.2))
            second = enter()
            work()
            time.sleep(ROUND_TRIP)
            gate.leave()
            with lock:
                cycles[0] += 1
                waits.append(max(first, second))

    cpu, started = time.process_time(), time.monotonic()
    threads = [threading.Thread(target=event, daemon=True) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu, wall = time.process_time() - cpu, time.monotonic() - started
    waits.sort()
    print(f"{args.child}: {cycles[0] / wall:.0f} cycles/s, {cpu / cycles[0] * 1e6:.0f} us CPU a cycle, wait for a place "
          f"p50 {waits[len(waits) // 2] * 1000:.1f} ms, p99 {waits[int(len(waits) * 0.99)] * 1000:.1f} ms, "
          f"max {waits[-1] * 1000:.0f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--answer", type=float, default=1.0, help="seconds InLoox takes to answer")
    parser.add_argument("--work", type=int, default=40000, help="loop turns of Python a thread runs inside the gate")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--root", action="append", help="code to measure (repeatable; default this checkout)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    roots = args.root or [str(Path(__file__).resolve().parent.parent)]
    for _ in range(args.repeats):
        for root in roots:
            subprocess.run([sys.executable, __file__, "--child", root, "--threads", str(args.threads), "--seconds",
                            str(args.seconds), "--answer", str(args.answer), "--work", str(args.work)], check=True,
                           timeout=args.seconds + 120)


if __name__ == "__main__":
    main()
