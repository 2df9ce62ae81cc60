"""The web's own CPU per acknowledged webhook, in one thread, code against code (issue 22).

    cd TREE && .venv/bin/python PATH/TO/bench/web_cpu.py [--events 5000] [--repeats 3]

bench/acks.py measures the web under waitress and wrk, which share the machine's two cores with it: its
figures move by 20-40 % with whatever else runs. This calls the app of the current directory's checkout
(so a tree of another commit can be measured with this script) as a WSGI callable, `app.wsgi_app`, in
one thread, with signed deliveries to `/hooks/bench` built beforehand, against a durable embedded Valkey
(AOF, fsync every second, as `make run`), and counts the thread's CPU per call (time.thread_time).
Not in it: waitress (its parsing and thread hand-over, ~0.11-0.14 ms a request: bench/RESULTS.md
section 35) and the GIL's hand-overs between threads. The figure is the median of `--repeats`.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path.cwd()  # the checkout measured: its code alone is imported (harness would put this one's first)
sys.path.insert(0, str(ROOT))

from standardwebhooks.webhooks import Webhook  # noqa: E402

from workers.redis_server import start_embedded  # noqa: E402

SOURCE, SECRET = "bench", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # bench/harness.py's
WARM_UP = 500


def environ_of(msg_id: str, n: int) -> tuple[dict, bytes]:
    """A WSGI environ (less its input) and body of one signed delivery, as waitress would hand it over."""
    data = json.dumps({"task": {"id": n, "name": f"task {n}", "done": True}}, separators=(",", ":")).encode()
    now = datetime.now(timezone.utc)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(SECRET).sign(msg_id, now, data.decode())}
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": f"/hooks/{SOURCE}", "SCRIPT_NAME": "",
               "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
               "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.multithread": True,
               "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.version": (1, 0),
               "CONTENT_LENGTH": str(len(data)), "CONTENT_TYPE": "application/json", "REMOTE_ADDR": "127.0.0.1"}
    environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
    return environ, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}Z, {os.cpu_count()} cores, load "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}, root {ROOT}")
    data_dir = Path(tempfile.mkdtemp(prefix="bench-web-cpu-"))
    server = start_embedded(data_dir=data_dir)  # durable (AOF, fsync every second), as `make run`
    os.environ.update({"REDIS_URL": f"redis://127.0.0.1:{server.port}/0", "EMBEDDED_REDIS": "0",
                       f"WEBHOOK_SECRET_{SOURCE.upper()}": SECRET, "STACK_ENV": "",
                       "RULES_PATH": str(ROOT / "rules"), "OUTBOUND_ALLOW": "127.0.0.1", "SECRETS_KEY": "",
                       })
    try:
        from app import create_app

        web = create_app(commands=False)
        assert Path(sys.modules["app"].__file__).parent == ROOT, sys.modules["app"].__file__
        answers: dict[str, int] = {}

        def call(environ: dict, data: bytes) -> None:
            def start_response(status, headers, exc_info=None):
                answers[status] = answers.get(status, 0) + 1

            body = web.wsgi_app({**environ, "wsgi.input": io.BytesIO(data)}, start_response)
            b"".join(body)
            getattr(body, "close", lambda: None)()

        figures = []
        for repeat in range(args.repeats):
            deliveries = [environ_of(f"msg_{repeat}_{n:08d}", n) for n in range(WARM_UP + args.events)]
            for environ, data in deliveries[:WARM_UP]:
                call(environ, data)
            cpu = time.thread_time()
            for environ, data in deliveries[WARM_UP:]:
                call(environ, data)
            figures.append(1e6 * (time.thread_time() - cpu) / args.events)
            print(f"run {repeat + 1}: {figures[-1]:.0f} us of CPU per webhook", flush=True)
        print(f"web_cpu: root={ROOT} events={args.events} us_per_webhook={statistics.median(figures):.0f} "
              f"(min {min(figures):.0f}, max {max(figures):.0f}) answers={answers}")
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
