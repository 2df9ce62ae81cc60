"""The web process: the app under waitress, set so that a slow client holds a connection, never a thread.

    python -m web.server [--host 127.0.0.1] [--port 8000] [--threads 16]

waitress reads each whole request (headers and body) on its I/O loop before one of its threads sees
it; a client that announces a body and sends part of it holds one of `connection_limit` connection
slots until `channel_timeout` seconds pass without a byte (checked every `cleanup_interval`).
Under gunicorn's threaded worker, 20 such connections held every thread and /healthz timed out
(issue 19; docs/deploy.md, "What stands in front of the web"). SIGTERM (a supervisor's stop) ends
it as Ctrl+C does: requests in flight finish, then the process exits 0.
"""
from __future__ import annotations

import argparse
import signal

import waitress

CONNECTION_LIMIT = 1000  # idle or slow connections are cheap on the I/O loop (poll, not select)
CHANNEL_TIMEOUT = 10  # seconds a connection may send nothing before it is closed
CLEANUP_INTERVAL = 5  # how often waitress looks for such connections
MAX_REQUEST_BODY = 16 * 1024 * 1024  # each route limits its own body far below this (64 KiB, 2 MiB)


def settings(host: str, port: int, threads: int) -> dict:
    """waitress's settings for the app (tests and benches start it with these too)."""
    return {"host": host, "port": port, "threads": threads, "connection_limit": CONNECTION_LIMIT,
            "channel_timeout": CHANNEL_TIMEOUT, "cleanup_interval": CLEANUP_INTERVAL, "asyncore_use_poll": True,
            "max_request_body_size": MAX_REQUEST_BODY, "ident": None}


def _stop(signum, frame):
    raise KeyboardInterrupt  # waitress's loop closes its sockets and lets its threads finish on it


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the app with waitress.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args(argv)
    from app import create_app  # the factory imports every blueprint, this module among its neighbours

    app = create_app()
    signal.signal(signal.SIGTERM, _stop)
    waitress.serve(app, **settings(args.host, args.port, args.threads))


if __name__ == "__main__":
    main()
