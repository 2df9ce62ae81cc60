"""Memory: RSS (and PSS) of the web, worker and poller processes at idle and under ingest load.

    .venv/bin/python bench/memory.py [--seconds 10]

Starts the stack as the Procfile does (durable Valkey, sandbox, gunicorn 2x8, one rq worker, the
poller) with two rules: each webhook becomes a Task (end_to_end.py's rule) and a Task rule the
poller has to watch. Samples every process tree every 0.25 s: idle for 5 s, then while wrk sends
signed webhooks as fast as the web accepts them for `--seconds`, then for 10 s after (the worker
still draining). RSS counts pages gunicorn's forks share once per process; PSS splits them.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import requests  # noqa: E402

from end_to_end import ENGINE_TOKEN, PROJECT, RULE, SANDBOX_TOKEN  # noqa: E402
from ingest import wrk, write_deliveries  # noqa: E402

TASK_RULE = """id: bench-watch-done
when:
  - inloox: Task
    on: updated
    changes:
      IsDone: {from: false, to: true}
then:
  - notify: "json://127.0.0.1:9/never"
    body: "{{ task.Name }}"
"""


class Sampler:
    """Peak and last RSS/PSS per named process tree, sampled in a thread."""

    def __init__(self, trees: dict[str, callable]):
        self.trees, self.peak, self._stop = trees, {}, threading.Event()
        self._thread = None

    def sample(self) -> dict:
        out = {}
        for name, root in self.trees.items():
            pids = harness.tree_pids(root())
            out[name] = (harness.rss_mb(pids), harness.pss_mb(pids))
        return out

    def start(self):
        self.peak, self._stop = {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for name, (rss, pss) in self.sample().items():
                old = self.peak.get(name, (0.0, 0.0))
                self.peak[name] = (max(old[0], rss), max(old[1], pss))
            self._stop.wait(0.25)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return self.peak


def line(label: str, figures: dict) -> str:
    total = sum(r for r, _ in figures.values()), sum(p for _, p in figures.values())
    parts = [f"{name} {rss:.0f}/{pss:.0f}" for name, (rss, pss) in figures.items()]
    return f"  {label} RSS/PSS MB: " + ", ".join(parts) + f"; total {total[0]:.0f}/{total[1]:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    print(harness.machine())
    print("busy before:", ", ".join(harness.busy_processes()) or "nothing over 5%")
    server = harness.redis_server()
    sandbox_port = harness.free_port()
    sandbox = harness.sandbox(sandbox_port, SANDBOX_TOKEN, engine_token=ENGINE_TOKEN)
    odata = f"http://127.0.0.1:{sandbox_port}/api/odata/"
    requests.post(odata + "Project", json={"ProjectId": PROJECT, "Name": "Bench"},
                  headers={"x-api-key": SANDBOX_TOKEN}, timeout=10).raise_for_status()
    rules = Path(tempfile.mkdtemp(prefix="bench-rules-"))
    (rules / "bench.yaml").write_text(RULE)
    (rules / "watch.yaml").write_text(TASK_RULE)
    env = {"REDIS_URL": f"redis://127.0.0.1:{server.port}/0", "RULES_PATH": str(rules), "INLOOX_URL": odata,
           "INLOOX_API_KEY": ENGINE_TOKEN, "OUTBOUND_ALLOW": "127.0.0.1", "POLL_INTERVAL": "2",
           "INLOOX_REQUESTS_PER_SECOND": "0"}
    web, base = harness.gunicorn(env)
    worker = harness.rq_worker(env)
    poller = harness.Process.python("-m", "workers.poller", name="poller", env=env)
    valkey = harness.valkey_pid(server)
    sampler = Sampler({"web": lambda: web.popen.pid, "worker": lambda: worker.popen.pid,
                       "poller": lambda: poller.popen.pid, "valkey": lambda: valkey,
                       "sandbox": lambda: sandbox.popen.pid})
    try:
        time.sleep(8)  # imports, first poll (baseline), worker registration
        sampler.start()
        time.sleep(5)
        idle = sampler.stop()
        print(line("idle (peak over 5 s)", idle))
        deliveries = Path(tempfile.mkstemp(prefix="bench-deliveries-", suffix=".tsv")[1])
        write_deliveries(deliveries, args.seconds * 6000, f"mem-{int(time.time())}")
        sampler.start()
        fast = wrk(f"{base}/hooks/{harness.WEBHOOK_SOURCE}", args.seconds, args.connections, deliveries)
        time.sleep(10)
        loaded = sampler.stop()
        deliveries.unlink()
        print(f"  ingest load: {fast['requests'] / fast['seconds']:.0f} req/s for {fast['seconds']:.0f}s "
              f"(statuses {fast['statuses']}), then 10 s of draining")
        print(line("under load (peak)", loaded))
        for process in (worker, poller):
            if not process.alive():
                print(f"  {process.name} exited:\n{process.output()[-2000:]}")
        fig = {f"{name}_idle": f"{idle[name][0]:.0f}MB" for name in ("web", "worker", "poller")}
        fig.update({f"{name}_load": f"{loaded[name][0]:.0f}MB" for name in ("web", "worker", "poller")})
        fig["stack_load"] = f"{sum(r for r, _ in loaded.values()):.0f}MB"
        fig["stack_load_pss"] = f"{sum(p for _, p in loaded.values()):.0f}MB"
        print(harness.summary("memory", **fig))
    finally:
        for process in (poller, worker, web):
            process.stop()
        sandbox.stop()
        server.stop()


if __name__ == "__main__":
    main()
