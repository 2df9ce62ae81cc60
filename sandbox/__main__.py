"""`python -m sandbox --port 8090 --token sandbox-token [--seed demo|empty] [--data FILE] [--host H]
[--user-token TOKEN=First Last ...]`."""
from __future__ import annotations

import argparse
import logging
import threading
import time

import waitress

from workers.signals import stop_event

from .app import create_app

# Enough threads that a few commit_then_hang faults holding their thread don't starve the rest, and
# that a latency fault (each request sleeps on its thread) still lets a worker have over a hundred
# requests in flight, as it would against InLoox's cloud.
THREADS = 128
# Connections held open at once (waitress's default is 100). InLoox's cloud, behind its load
# balancer, keeps what a client's connection pools hold; with 100, the third worker of a stack,
# whose pools kept one connection per request it had in flight, waited in the accept queue.
CONNECTION_LIMIT = 2000
# `make run`'s honcho kills what is left 5 s after the first process stopped.
STOP_GRACE_SECONDS = 3.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token", default="sandbox-token")
    parser.add_argument("--seed", choices=("empty", "demo"), default="empty")
    parser.add_argument("--data", help="SQLite file, kept across restarts: seeded only when new (default: in memory)")
    parser.add_argument("--user-token", action="append", default=[], metavar="TOKEN=First Last",
                        type=_user_token, help="another person and their token (e.g. the automation's own user)")
    args = parser.parse_args(argv)
    app = create_app({"SANDBOX_TOKEN": args.token, "SANDBOX_SEED": args.seed, "SANDBOX_DATA": args.data,
                      "SANDBOX_USERS": dict(args.user_token)})
    print(f"sandbox: http://{args.host}:{args.port}/api/odata/ ({_dataset(args, app.config['SANDBOX_SEEDED'])})",
          flush=True)
    serve(app, args.host, args.port)


def serve(app, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then until the clients have gone (at most STOP_GRACE_SECONDS).

    The sandbox stands in for InLoox, which does not stop with the stack: were it to go first when
    `make run` stops everything at once, the poller would report InLoox gone on its way out. Every
    write was committed to the data file when it was answered, so there is nothing to save.
    """
    logging.basicConfig()  # waitress's own warnings, as waitress.serve() would show them
    server = waitress.create_server(app, host=host, port=port, threads=THREADS, connection_limit=CONNECTION_LIMIT,
                                    ident="inloox-sandbox")
    stop = stop_event()  # set by SIGTERM or Ctrl+C from a thread: the handler takes no lock
    threading.Thread(target=server.run, name="waitress", daemon=True).start()
    while not stop.wait(1):
        pass
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while server.active_channels and time.monotonic() < deadline:  # open connections, kept alive or busy
        time.sleep(0.05)


def _dataset(args: argparse.Namespace, seeded: bool) -> str:
    if not args.data:
        return f"seed {args.seed}, in memory"
    return f"seed {args.seed}, saved in {args.data}" if seeded else f"the data kept in {args.data}"


def _user_token(text: str) -> tuple[str, tuple[str, str]]:
    token, _, name = text.partition("=")
    first, _, last = name.strip().partition(" ")
    if not token or not first or not last:
        raise argparse.ArgumentTypeError(f"expected TOKEN=First Last, got {text!r}")
    return token, (first, last)


if __name__ == "__main__":
    main()
