"""Ingest: signed webhooks/s the web process accepts under gunicorn, p50/p99, and nothing lost.

    .venv/bin/python bench/ingest.py [--seconds 10] [--connections 32] [--variants 2x8,4x4,2x1]

Per gunicorn variant (`WORKERSxTHREADS`; the Procfile runs 2x8): a fresh durable Valkey (AOF,
fsync every second, as production), the app under gunicorn with its access log as in the Procfile,
then two loads from separate processes:
  1. a fixed 200/s for 10 s (bench/paced.py, open loop: latency counted from the scheduled time);
  2. as fast as it goes for `--seconds` (wrk, one thread, `--connections` keep-alive connections,
     replaying deliveries signed beforehand, each id once: bench/signed.lua).
No worker runs, so every accepted event must still be in the event log (`ws:default:events`):
lost = 202 answers - logged events (never negative: an event whose answer timed out is not lost).
The load generator shares the 2 cores with the server: wrk's CPU share is printed too.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis  # noqa: E402

import harness  # noqa: E402

HERE = Path(__file__).resolve().parent


def write_deliveries(path: Path, count: int, prefix: str) -> None:
    """`count` signed deliveries, one per line (id, timestamp, signature, body), for signed.lua."""
    with path.open("w") as out:
        for i in range(count):
            raw, headers = harness.signed_delivery(f"{prefix}-{i}", {"n": i, "title": f"form {i}", "email": "a@example.com"})
            out.write(f"{headers['webhook-id']}\t{headers['webhook-timestamp']}\t{headers['webhook-signature']}\t{raw}\n")


def paced(url: str, rate: float, count: int, prefix: str) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "paced.py"), url, "--rate", str(rate), "--count", str(count),
                          "--prefix", prefix], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def wrk(url: str, seconds: int, connections: int, deliveries: Path) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
                             str(HERE / "signed.lua"), url, "--", str(deliveries)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate()
    line = next((l for l in out.splitlines() if l.startswith("WRK_JSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed:\n{out}")
    result = json.loads(line[len("WRK_JSON "):])
    result["wall"] = time.perf_counter() - started
    return result


def run_variant(server, workers: int, threads: int, args) -> dict:
    connection = redis.Redis(port=server.port)
    connection.flushdb()
    env = {"REDIS_URL": f"redis://127.0.0.1:{server.port}/0"}
    web, base = harness.gunicorn(env, workers=workers, threads=threads)
    url = f"{base}/hooks/{harness.WEBHOOK_SOURCE}"
    try:
        stamp = int(time.time())
        warm = paced(url, 50, 100, f"warm-{stamp}")  # imports, connections, first-request costs
        idle_rss = harness.tree_rss_mb(web.popen.pid)
        slow = paced(url, 200, args.paced_count, f"paced-{stamp}")
        deliveries = Path(tempfile.mkstemp(prefix="bench-deliveries-", suffix=".tsv")[1])
        write_deliveries(deliveries, args.seconds * args.max_per_second, f"max-{stamp}")
        cpu_before = harness.cpu_seconds(harness.tree_pids(web.popen.pid))
        with harness.PeakRss(lambda: [web.popen.pid]) as peak:
            fast = wrk(url, args.seconds, args.connections, deliveries)
        web_cpu = harness.cpu_seconds(harness.tree_pids(web.popen.pid)) - cpu_before
        deliveries.unlink()
        accepted = warm["statuses"].get("202", 0) + slow["statuses"].get("202", 0) + fast["statuses"].get("202", 0)
        queued = connection.xlen("ws:default:events")
    finally:
        web.stop()
    return {"variant": f"{workers}x{threads}", "slow": slow, "fast": fast, "accepted": accepted, "queued": queued,
            "lost": max(0, accepted - queued), "rate": fast["requests"] / fast["seconds"],
            "web_cpu_ms_per_req": web_cpu / max(1, fast["requests"]) * 1000,
            "web_cpu_share": web_cpu / fast["seconds"], "idle_rss": idle_rss, "peak_rss": peak.peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--variants", default="2x8", help="gunicorn WORKERSxTHREADS, comma-separated")
    parser.add_argument("--paced-count", type=int, default=2000, help="requests of the fixed 200/s run")
    parser.add_argument("--max-per-second", type=int, default=6000, help="deliveries signed per second of wrk")
    args = parser.parse_args()
    print(harness.machine())
    print("busy before:", ", ".join(harness.busy_processes()) or "nothing over 5%")
    server = harness.redis_server()
    try:
        for variant in args.variants.split(","):
            workers, threads = (int(n) for n in variant.split("x"))
            r = run_variant(server, workers, threads, args)
            s, f = r["slow"], r["fast"]
            print(f"  gunicorn {r['variant']}: at 200/s ({s['rate']}/s achieved) p50={s['p50_ms']:.1f}ms "
                  f"p99={s['p99_ms']:.1f}ms statuses={s['statuses']} errors={s['errors']}")
            print(f"  gunicorn {r['variant']}: max {r['rate']:.0f} req/s over {f['seconds']:.1f}s "
                  f"p50={f['p50_ms']:.1f}ms p90={f['p90_ms']:.1f}ms p99={f['p99_ms']:.1f}ms max={f['max_ms']:.0f}ms "
                  f"statuses={f['statuses']} timeouts={f['errors_timeout']} wrapped={f['wrapped']}")
            print(f"  gunicorn {r['variant']}: web CPU {r['web_cpu_ms_per_req']:.2f} ms/req "
                  f"({r['web_cpu_share']:.2f} cores); web RSS idle {r['idle_rss']:.0f} MB, peak {r['peak_rss']:.0f} MB; "
                  f"202s {r['accepted']}, jobs queued {r['queued']}")
            print(harness.summary("ingest", gunicorn=r["variant"], rate=f"{r['rate']:.0f}/s",
                                  p50=f"{f['p50_ms']:.1f}ms", p99=f"{f['p99_ms']:.1f}ms",
                                  p99_at_200=f"{s['p99_ms']:.1f}ms", lost=r["lost"]), flush=True)
    finally:
        server.stop()
    print("busy after:", ", ".join(harness.busy_processes()) or "nothing over 5%")


if __name__ == "__main__":
    main()
