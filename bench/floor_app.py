"""What acknowledging a webhook costs before any of our code runs: waitress alone, then waitress with Flask.

    .venv/bin/python bench/acks.py --web "python bench/floor_app.py raw --port \\$PORT"
    .venv/bin/python bench/acks.py --web "python bench/floor_app.py flask --port \\$PORT"
    .venv/bin/python bench/acks.py --web "python -m web.server --port \\$PORT --processes 1 --threads 8"

Each answers every POST with 202 and a small JSON body after reading the request's body, under
waitress with web/server.py's settings, 8 threads, held to the core it starts on as our lone web
server is: `raw`, a bare WSGI function; `flask`, one Flask view returning `jsonify`. Against our
web's figure from the same bench in the same window, the difference is what our code costs (the
signature, the event, its Redis write, the workspace's limits); the floors are what no change to
it can go below while the web is waitress and Flask (bench/RESULTS.md section 35).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from web import server  # noqa: E402  the web's waitress settings
from workers import cores  # noqa: E402

BODY = b'{"status":"accepted"}'


def raw(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("202 Accepted", [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))])
    return [BODY]


def flask_app():
    from flask import Flask, jsonify, request

    app = Flask("floor")

    @app.post("/hooks/<source>")
    def receive(source: str):
        request.get_data(cache=False)
        return jsonify(status="accepted", event_id=source), 202

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("app", choices=["raw", "flask"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    cores.pin()
    server.serve(server.settings("127.0.0.1", args.port, args.threads), raw if args.app == "raw" else flask_app())


if __name__ == "__main__":
    main()
