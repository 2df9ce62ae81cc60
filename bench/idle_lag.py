"""Idle lag: how stale the poller's view of InLoox gets on a stack where nothing happens, and what scans cost.

    .venv/bin/python bench/idle_lag.py [--minutes 10] [--contacts 250] [--scan-seconds 60]

Starts Valkey, the sandbox (`--contacts` contacts and a few checklists and portfolios, so scans
have pages to read) and one poller with the example rules of rules/ (Task and DynamicProject by
change feed, Contact, CheckList and Portfolio by scan), at the Procfile's settings: POLL_INTERVAL 2 s,
POLL_SCAN_SECONDS as given, the default 5 requests/s budget. Nothing changes for `--minutes`.
Every 5 s the lag of each watched set (now − start of its last complete poll, as /metrics shows it)
is read; the issue's bound is three intervals of the set (6 s for feeds, 3 × scan seconds for
scans). Also prints each scanned set's requests per scan and the requests a minute all polls cost.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402

from workers import workspaces  # noqa: E402
from workers.poller.status import poll_status  # noqa: E402

PERSON_TOKEN, ENGINE_TOKEN = "bench-person", "bench-engine"
PROJECT = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
POLL_INTERVAL = 2.0


def seed(odata: str, contacts: int) -> None:
    """A project with checklists, a portfolio and `contacts` contacts, written as a person."""
    session = requests.Session()
    session.headers["x-api-key"] = PERSON_TOKEN
    for path, body in [("Project", {"ProjectId": PROJECT, "Name": "Bench"}),
                       ("Portfolio", {"Name": "Bench portfolio"}),
                       *(("CheckList", {"Name": f"List {n}", "ProjectId": PROJECT}) for n in range(3)),
                       *(("Contact", {"DisplayName": f"Contact {n}", "Email": f"c{n}@example.com"})
                         for n in range(contacts))]:
        session.post(odata + path, json=body, timeout=10).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--contacts", type=int, default=250)
    parser.add_argument("--scan-seconds", type=float, default=60)
    args = parser.parse_args()
    print(harness.machine())
    server = harness.redis_server(durable=False)
    port = harness.free_port()
    sandbox = harness.sandbox(port, PERSON_TOKEN, engine_token=ENGINE_TOKEN)
    odata = f"http://127.0.0.1:{port}/api/odata/"
    seed(odata, args.contacts)
    rules = Path(tempfile.mkdtemp(prefix="bench-rules-"))
    for name in ("contact-email-changed", "checklist-added", "portfolio-manager-changed", "project-budget-changed",
                 "log-time-when-task-done"):
        (rules / f"{name}.yaml").write_text((harness.ROOT / "rules" / f"{name}.yaml").read_text())
    url = f"redis://127.0.0.1:{server.port}/0"
    env = {"REDIS_URL": url, "RULES_PATH": str(rules), "INLOOX_URL": odata, "INLOOX_API_KEY": ENGINE_TOKEN,
           "POLL_INTERVAL": f"{POLL_INTERVAL:g}", "POLL_SCAN_SECONDS": f"{args.scan_seconds:g}"}
    poller = harness.Process.python("-m", "workers.poller", name="poller", env=env)
    connection = redis.Redis.from_url(url)
    worst: dict[str, float] = {}
    try:
        harness.wait_until(lambda: connection.exists("ws:default:poll:Contact:cursor"), 60, "the first scan")
        requests.delete(f"http://127.0.0.1:{port}/_sandbox/requests", timeout=10)
        started = time.monotonic()
        with workspaces.using(workspaces.Workspace(workspaces.DEFAULT, odata, ENGINE_TOKEN)):
            while time.monotonic() - started < args.minutes * 60:
                for entry in poll_status(connection, now=datetime.now(timezone.utc)):
                    if entry["lag_seconds"] is not None:
                        worst[entry["entity_set"]] = max(worst.get(entry["entity_set"], 0.0), entry["lag_seconds"])
                time.sleep(5)
            status = poll_status(connection, now=datetime.now(timezone.utc))
        sent = len(requests.get(f"http://127.0.0.1:{port}/_sandbox/requests", timeout=10).json()["value"])
        minutes = (time.monotonic() - started) / 60
        for entry in status:
            bound = 3 * (entry["every"] or POLL_INTERVAL)
            cost = f", {entry['requests_per_scan']} requests per scan" if entry["requests_per_scan"] else ""
            print(f"  {entry['entity_set']:<16} {entry['method']} every {entry['every']:g}s: worst lag "
                  f"{worst.get(entry['entity_set'], 0):.1f}s (bound {bound:g}s){cost}")
        print(f"  InLoox requests: {sent} in {minutes:.1f} min ({sent / minutes:.0f} a minute)")
        print(harness.summary("idle_lag", minutes=f"{minutes:.1f}",
                              worst_feed_lag=f"{max(v for k, v in worst.items() if k in ('Task', 'DynamicProject')):.1f}s",
                              worst_scan_lag=f"{max(v for k, v in worst.items() if k not in ('Task', 'DynamicProject')):.1f}s",
                              requests_per_minute=f"{sent / minutes:.0f}"))
    finally:
        poller.stop()
        sandbox.stop()
        server.stop()


if __name__ == "__main__":
    main()
