"""`python -m sandbox --port 8090 --token sandbox-token [--seed demo|empty] [--data FILE] [--host H]`."""
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
    args = parser.parse_args(argv)
    app = create_app({"SANDBOX_TOKEN": args.token, "SANDBOX_SEED": args.seed, "SANDBOX_DATA": args.data})
    print(f"sandbox: http://{args.host}:{args.port}/api/odata/ (seed {args.seed})", flush=True)
    waitress.serve(app, host=args.host, port=args.port, threads=THREADS, ident="inloox-sandbox")


if __name__ == "__main__":
    main()
