"""`python -m sandbox --port 8090 --token sandbox-token [--seed demo|empty] [--data FILE] [--host H]
[--user-token TOKEN=First Last ...]`."""
from __future__ import annotations

import argparse

import waitress

from .app import create_app

# Enough threads that a few commit_then_hang faults holding their thread don't starve the rest.
THREADS = 32


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token", default="sandbox-token")
    parser.add_argument("--seed", choices=("empty", "demo"), default="empty")
    parser.add_argument("--data", help="SQLite file (default: in memory)")
    parser.add_argument("--user-token", action="append", default=[], metavar="TOKEN=First Last",
                        type=_user_token, help="another person and their token (e.g. the automation's own user)")
    args = parser.parse_args(argv)
    app = create_app({"SANDBOX_TOKEN": args.token, "SANDBOX_SEED": args.seed, "SANDBOX_DATA": args.data,
                      "SANDBOX_USERS": dict(args.user_token)})
    print(f"sandbox: http://{args.host}:{args.port}/api/odata/ (seed {args.seed})", flush=True)
    waitress.serve(app, host=args.host, port=args.port, threads=THREADS, ident="inloox-sandbox")


def _user_token(text: str) -> tuple[str, tuple[str, str]]:
    token, _, name = text.partition("=")
    first, _, last = name.strip().partition(" ")
    if not token or not first or not last:
        raise argparse.ArgumentTypeError(f"expected TOKEN=First Last, got {text!r}")
    return token, (first, last)


if __name__ == "__main__":
    main()
