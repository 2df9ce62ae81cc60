"""What the tests' TCP proxies to Redis share: a listener on 127.0.0.1, the sockets they opened, closing them all.

tests/support/partition.py (a network partition) and tests/support/cut.py (a connection lost mid-write) forward
each connection their own way (`_accept`, started by `start`).
"""
from __future__ import annotations

import socket
import threading


class Proxy:
    """Listens on 127.0.0.1:<port> (`url` for a Redis client) for connections to forward to 127.0.0.1:<target_port>."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()

    def start(self, name: str) -> None:
        threading.Thread(target=self._accept, name=name, daemon=True).start()

    def _accept(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone may not)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
