"""What a rule bundle upload costs the web's other requests: signed webhooks acknowledged before, during, after it.

    .venv/bin/python bench/bundle_upload.py [--senders 1] [--size 1000000]

A Valkey, the web (`python -m web.server`, 8 threads) serving two workspaces: acme takes webhooks, globex bundles.
`--senders` threads each post a signed webhook to acme every 20 ms (one connection each) while globex's admin
uploads a valid bundle of ~`--size` bytes (the example rules again and again, each under its own id). Figures: the
upload's answer and wall time, the web process's own CPU meanwhile (its child's not counted), and the acks'
latency (p50, p90, max) in each phase.

One run, 2 shared cores, 1 MB (1,408 rules), 1 sender: validated in the web, the upload used 7.9 s of the web's
CPU and acks went from p50 4.0 ms (max 14) to 14.1 ms (max 116); in a child (web/bundle_check.py) 0.5 s
of the web's CPU (its acks') and 3.9 ms (max 16). 8 senders: p50 8.4 -> 14.6 ms (max 103) against 5.3 -> 5.1
ms (max 34).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from standardwebhooks.webhooks import Webhook  # noqa: E402

import harness  # noqa: E402
from tests.integration.test_bundle_check import large_bundle  # noqa: E402
from tests.support.processes import Process, free_port  # noqa: E402

WORKSPACES = """workspaces:
  acme: {{inloox_url: "http://127.0.0.1:9/api/odata/", inloox_api_key: unused, webhooks: {{forms: {secret}}}}}
  globex: {{inloox_url: "http://127.0.0.1:9/api/odata/", inloox_api_key: unused, admin_token: globex-admin}}
"""


def web(redis_url: str, folder: Path) -> tuple[Process, str]:
    (folder / "workspaces.yaml").write_text(WORKSPACES.format(secret=harness.WEBHOOK_SECRET))
    port = free_port()
    env = {"REDIS_URL": redis_url, "WORKSPACES_FILE": str(folder / "workspaces.yaml"), "STACK_ENV": "",
           "SECRETS_KEY": "", "LOG_LEVEL": "WARNING"}
    process = Process([sys.executable, "-m", "web.server", "--port", str(port), "--threads", "8"], name="web",
                      env=env, cwd=ROOT)
    process.wait_for_port(port, timeout=60)
    return process, f"http://127.0.0.1:{port}"


def ack_ms(session: requests.Session, base: str, msg_id: str) -> float:
    raw = json.dumps({"title": msg_id})
    stamp = int(time.time())
    signature = Webhook(harness.WEBHOOK_SECRET).sign(msg_id, datetime.fromtimestamp(stamp, timezone.utc), raw)
    began = time.perf_counter()
    answer = session.post(f"{base}/workspaces/acme/hooks/forms", data=raw, timeout=30, headers={
        "content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(stamp),
        "webhook-signature": signature})
    assert answer.status_code == 202, answer.text
    return (time.perf_counter() - began) * 1000


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--size", type=int, default=1_000_000)
    args = parser.parse_args()
    print(harness.machine())
    server = harness.redis_server(durable=False)
    folder = tempfile.TemporaryDirectory(prefix="bench-bundle-")
    process, base = web(f"redis://127.0.0.1:{server.port}/0", Path(folder.name))
    bundle = json.dumps({"files": large_bundle(args.size)}).encode()
    phase, latencies, stop = ["before"], {"before": [], "during": [], "after": []}, threading.Event()

    def send(number: int) -> None:
        session, count = requests.Session(), 0
        while not stop.is_set():
            count += 1
            latencies[phase[0]].append(ack_ms(session, base, f"m{number}-{count}"))
            time.sleep(0.02)

    senders = [threading.Thread(target=send, args=(n,)) for n in range(args.senders)]
    try:
        for sender in senders:
            sender.start()
        time.sleep(3)
        phase[0], cpu, began = "during", cpu_seconds(process.popen.pid), time.perf_counter()
        answer = requests.put(f"{base}/workspaces/globex/rules", data=bundle, timeout=300, headers={
            "content-type": "application/json", "Authorization": "Bearer globex-admin"})
        took, cpu = time.perf_counter() - began, cpu_seconds(process.popen.pid) - cpu
        phase[0] = "after"
        time.sleep(3)
    finally:
        stop.set()
        for sender in senders:
            sender.join()
        process.stop()
        server.stop()
        folder.cleanup()
    print(f"upload: {answer.status_code}, {len(bundle)} bytes, {took:.2f} s, the web's CPU meanwhile {cpu:.2f} s")
    for name, found in latencies.items():
        found.sort()
        print(f"acks {name:6s} n={len(found):5d} p50={statistics.median(found):6.1f} ms "
              f"p90={found[int(len(found) * 0.9)]:6.1f} ms max={found[-1]:6.1f} ms")


if __name__ == "__main__":
    main()
