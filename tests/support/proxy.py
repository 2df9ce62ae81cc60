"""What the tests' TCP proxies to Redis share: a listener on 127.0.0.1, the sockets they opened, closing them all.

tests/support/partition.py (a network partition) and tests/support/cut.py (a connection lost mid-write, an answer
lost) forward each connection their own way (`_accept`, started by `start`, or its `_requests` and `_replies`).
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
        """Each connection forwarded by two threads of the proxy's own: `_requests` (client to Redis) and `_replies`
        (Redis to client)."""
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [client, upstream]
            for forward, ends in ((self._requests, (client, upstream)), (self._replies, (upstream, client))):
                threading.Thread(target=forward, args=ends, name=forward.__name__, daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        raise NotImplementedError

    def _replies(self, upstream: socket.socket, client: socket.socket) -> None:
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
