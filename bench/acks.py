"""The web alone: signed webhooks acknowledged per second by `python -m web.server` against a real Valkey.

    .venv/bin/python bench/acks.py [--events 10000] [--connections 50] [--web "python -m web.server --threads 16"]
        [--profile /tmp/web.raw] [--root DIR]

No worker, no poller: what the web's own CPU per acknowledged webhook is, and where it goes.
A durable embedded Valkey (AOF, fsync every second, as `make run`), then the web as `--web` says
(default: the Procfile's web command), then wrk on bench/stack.lua with `--events` deliveries signed
beforehand (bench/stack.py's task bodies), each sent once over `--connections` keep-alive connections.
Figures: acks/s, latency p50/p99, the web's CPU (utime+stime of its process tree) per ack, Valkey's
CPU per ack. `--profile FILE` runs py-spy (`--gil`, 200 Hz, raw) on the web for the whole load.

`--rate R`: the deliveries at R a second instead (bench/paced.py's open loop over 16 connections), as
senders spread over time send them. `--idle-connections N`: N more connections held open through the
load, quiet but for one byte of a request line every 8 s (a sender's idle keep-alive connection, or
a slow client's, that waitress keeps until 10 s pass without a byte): what every other request pays
for connections that are open and quiet (bench/RESULTS.md section 36).
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import stack  # noqa: E402


def web_process(command: str, port: int, redis_url: str, root: Path, rules: Path) -> harness.Process:
    """The web as `command` runs it (`$PORT` replaced), with the bench's webhook source and settings."""
    args = shlex.split(command.replace("$PORT", str(port)))
    if args[0] == "python":
        args[0] = sys.executable
    env = {"REDIS_URL": redis_url, "WEB_PORT": str(port), "PORT": str(port), "EMBEDDED_REDIS": "0",
           f"WEBHOOK_SECRET_{harness.WEBHOOK_SOURCE.upper()}": harness.WEBHOOK_SECRET, "STACK_ENV": "",
           "RULES_PATH": str(rules), "OUTBOUND_ALLOW": "127.0.0.1",
           "SECRETS_KEY": ""}
    process = harness.Process(args, name="web", env=env, cwd=root)
    process.wait_for_port(port, timeout=60)
    return process


def run(args) -> None:
    print(harness.machine())
    print(f"root {args.root} at {stack.describe(Path(args.root))}")
    print("busy before:", ", ".join(harness.busy_processes()) or "nothing over 5%", flush=True)
    server = harness.redis_server()
    redis_url = f"redis://127.0.0.1:{server.port}/0"
    valkey = harness.valkey_pid(server)
    tmp = Path(tempfile.mkdtemp(prefix="bench-acks-"))
    (tmp / "rules").mkdir()
    port = harness.free_port()
    web = web_process(args.web, port, redis_url, Path(args.root).resolve(), tmp / "rules")
    spy = idle = None
    try:
        deliveries = tmp / "deliveries.tsv"
        if not args.rate:  # the open loop signs its own
            stack.write_deliveries(deliveries, args.events, f"w{int(time.time())}")
        # warm up: imports, the registry, the first connections (not counted)
        warm = tmp / "warm.tsv"
        stack.write_deliveries(warm, 500, f"warm{int(time.time())}")
        stack.wrk_closed_loop(f"http://127.0.0.1:{port}/hooks/{harness.WEBHOOK_SOURCE}", warm, args.connections, None, 120)
        if args.profile:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--gil", "-r", "200", "-f", "raw",
                                    "-o", args.profile, "--subprocesses", "--pid", str(web.popen.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        idle = IdleConnections(port, args.idle_connections)
        web_cpu, valkey_cpu = harness.tree_cpu_seconds(web.popen.pid), harness.cpu_seconds([valkey] if valkey else [])
        url = f"http://127.0.0.1:{port}/hooks/{harness.WEBHOOK_SOURCE}"
        if args.rate:
            load = stack.paced_open_loop(url, args.rate, args.events, f"p{int(time.time())}")
            load["wall"] = load["seconds"]
        else:
            load = stack.wrk_closed_loop(url, deliveries, args.connections, None, 300)
        web_cpu = harness.tree_cpu_seconds(web.popen.pid) - web_cpu
        still_open = idle.open()
        idle.close()
        valkey_cpu = harness.cpu_seconds([valkey] if valkey else []) - valkey_cpu
        acked = load["statuses"].get("202", 0)
        how = f" at {args.rate:.0f}/s" if args.rate else ""
        if args.idle_connections:
            how += f" beside {still_open} of {args.idle_connections} idle connections"
        print(f"  {args.web}{how}: {acked} acked of {load['requests']} (statuses {load['statuses']}) in {load['wall']:.2f}s: "
              f"{acked / load['wall']:.0f} acks/s, p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms; "
              f"web CPU {web_cpu / max(acked, 1) * 1000:.3f} ms/ack, Valkey {valkey_cpu / max(acked, 1) * 1000:.3f} ms/ack")
        print(harness.summary("acks", acks=f"{acked / load['wall']:.0f}/s", p99=f"{load['p99_ms']:.1f}ms",
                              web_cpu=f"{web_cpu / max(acked, 1) * 1000:.3f}ms", valkey_cpu=f"{valkey_cpu / max(acked, 1) * 1000:.3f}ms"))
    finally:
        if idle:
            idle.close()
        if spy:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        web.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the signed deliveries: megabytes a run
    print("busy after:", ", ".join(harness.busy_processes()) or "nothing over 5%")


class IdleConnections:
    """`count` connections to the web, quiet, kept open by one byte of a request line every 8 s, never completed."""

    LINE = b"GET /healthz HTTP/1.1\r\n"

    def __init__(self, port: int, count: int):
        self.sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
        for sock in self.sockets:
            sock.setblocking(False)  # a byte to send never waits, and open() only peeks
        self.sent, self.closed = 0, threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()
        time.sleep(0.5 if count else 0)  # accepted by the web before the load starts

    def _trickle(self) -> None:
        # Quiet from the start; waitress closes a connection after 10 s without a byte (checked every 5 s).
        while not self.closed.wait(8.0):
            for sock in self.sockets:
                try:
                    sock.send(self.LINE[self.sent % len(self.LINE):][:1])
                except OSError:
                    pass
            self.sent += 1

    def open(self) -> int:
        """How many the web still holds (it closes none of them that keeps sending)."""
        alive = 0
        for sock in self.sockets:
            try:
                alive += sock.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        return alive

    def close(self) -> None:
        self.closed.set()
        for sock in self.sockets:
            sock.close()
        self.sockets = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--web", default=stack_web_command(), help="the web's command ($PORT is its port)")
    parser.add_argument("--profile", help="py-spy raw output file")
    parser.add_argument("--rate", type=float, default=0, help="deliveries a second (open loop), not wrk's closed loop")
    parser.add_argument("--idle-connections", type=int, default=0, help="connections held open and quiet meanwhile")
    parser.add_argument("--root", default=str(harness.ROOT), help="the checkout whose web to run")
    run(parser.parse_args())


def stack_web_command() -> str:
    """The Procfile's web command, after its `&&` (the wait for Redis), without `exec`."""
    line = next(l for l in (harness.ROOT / "Procfile").read_text().splitlines() if l.startswith("web:"))
    command = line.split(":", 1)[1].split("&&")[-1].strip().removeprefix("exec ").strip()
    return command.replace("$WEB_PORT", "$PORT")


if __name__ == "__main__":
    os.chdir(harness.ROOT)
    main()
