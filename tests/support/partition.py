"""A TCP proxy a test can cut without closing a socket: a network partition between a process and its Redis.

    with Partition(valkey.port) as partition:   # partition.url: redis://127.0.0.1:<its port>/0
        partition.cut()    # every connection goes silent, and so does any opened meanwhile
        partition.heal()   # new connections reach the server again; those cut stay silent for good

Killing a server closes its sockets, so its clients learn at once. A partition (a switch, a NAT or
firewall that lost its state, a failover that moved the address) closes nothing: what is sent is
dropped, no reset comes back, and a client waiting for an answer on such a connection waits until
its own timeout, if it has one.
"""
from __future__ import annotations

import socket
import threading

from tests.support.proxy import Proxy

CHUNK = 65536


class Partition(Proxy):
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port> until cut; each connection on two threads."""

    def __init__(self, target_port: int):
        super().__init__(target_port)
        self.era = 0  # a connection forwards while the era it was opened in lasts; cut() ends it
        self.cutting = False
        self.start("partition-accept")

    def cut(self) -> None:
        with self.lock:
            self.era += 1
            self.cutting = True

    def heal(self) -> None:
        with self.lock:
            self.cutting = False

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self.lock:
                self.sockets.append(client)
                era = -1 if self.cutting else self.era  # opened during the cut: silent for good
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets.append(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, era), name="partition-pump",
                                 daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, era: int) -> None:
        """Copy source to sink while the connection's era lasts; after, read and drop (never close: no word)."""
        try:
            while data := source.recv(CHUNK):
                if era == self.era:
                    sink.sendall(data)
        except OSError:
            pass
        if era == self.era:  # an end while forwarding is passed on; a silent connection says nothing
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
