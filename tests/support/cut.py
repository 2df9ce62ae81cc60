"""A TCP proxy to Redis that loses a connection in the middle of a client's write: what a pipeline sent
before the cut is executed, what it sent after is not, and the client hears nothing back.

    with MidWriteCut(port) as proxy:             # proxy.url: redis://127.0.0.1:<its port>/0
        proxy.arm(lambda command: b"billable_runs" in command, after=1)
        ...                                      # the next command holding those bytes reaches Redis, no more;
        proxy.wait_cut()                         # then the connection is closed, the rest of the write dropped
                                                 # (after its last command, when it had fewer than `after`)

A connection reset by the network (a failover, a worker's host losing its link) cuts a write at any
byte. The proxy cuts between whole commands, counted from the first command the armed test picks out:
Redis executes every whole command it received, so that is where a client can be left half-written.
Only the next such command is cut at; other connections, and the connections opened after, go through.
"""
from __future__ import annotations

import socket
import threading
from typing import Callable

from tests.support.proxy import Proxy

CHUNK = 65536
# Once the picked command came, a client silent this long is waiting for its answers: its write is over (a pipeline
# goes out at once), so it is cut after its last command. Not a wait for a result: the client waits as long.
WRITE_ENDED = 0.2


def split_commands(buffer: bytes) -> tuple[list[list[bytes]], bytes]:
    """The whole RESP commands (arrays of bulk strings, as clients send them) at the start of `buffer`, and the
    bytes left over (a command not yet wholly received)."""
    commands, at = [], 0
    while at < len(buffer):
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0 or buffer[at:at + 1] != b"*":
            break
        count, cursor, args = int(buffer[at + 1:line_end]), line_end + 2, []
        for _ in range(count):
            length_end = buffer.find(b"\r\n", cursor)
            if length_end < 0:
                break
            length = int(buffer[cursor + 1:length_end])
            if length_end + 2 + length + 2 > len(buffer):
                break
            args.append(buffer[length_end + 2:length_end + 2 + length])
            cursor = length_end + 2 + length + 2
        if len(args) < count:
            break
        commands.append(args)
        at = cursor
    return commands, buffer[at:]


class MidWriteCut(Proxy):
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>; `arm` closes the connection that sends the picked
    command, once it forwarded `after` commands from it on (`after=0`: before it). `commands` is every command
    forwarded, in order, each a list of its arguments."""

    def __init__(self, target_port: int):
        super().__init__(target_port)
        self.commands: list[list[bytes]] = []
        self._picks: Callable[[bytes], bool] | None = None
        self._counting: object | None = None  # the connection the picked command came on, once it came
        self._left = 0
        self._cut = threading.Event()
        self.start("cut-accept")

    def arm(self, picks: Callable[[bytes], bool], *, after: int) -> None:
        """Cut the connection that sends the next command whose bytes `picks` says yes to, once it forwarded that
        one and the `after - 1` commands that follow it on that connection (before it with `after=0`), without
        waiting for more: what else that write holds is dropped; a write with fewer is cut after its last one.
        Nothing Redis answers on that connection from then on reaches the client."""
        with self.lock:
            self._picks, self._counting, self._left = picks, None, after
            self._cut.clear()

    def wait_cut(self, timeout: float = 10.0) -> None:
        """Until the armed cut happened and Redis has executed what it got before it (it closed its end)."""
        if not self._cut.wait(timeout):
            raise AssertionError(f"no connection was cut within {timeout}s: the picked command was not sent")

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Client to Redis, command by command, until the armed cut (then: Redis is told the connection ended
        once it has what was forwarded, and the client gets no reply to anything of this write)."""
        pending = b""
        try:
            while True:
                try:
                    data = client.recv(CHUNK)
                except TimeoutError:  # the client waits for answers: its write ended before the count did
                    with self.lock:
                        self._picks = None
                    return self._cut_off(client, upstream)
                if not data:
                    break
                commands, pending = split_commands(pending + data)
                for command in commands:
                    if self._counts(client, command) == 0:
                        return self._cut_off(client, upstream)
                    upstream.sendall(_packed(command))
                    with self.lock:
                        self.commands.append(command)
                    if self._counts(client, None) == 0:
                        return self._cut_off(client, upstream)
                with self.lock:
                    counting = self._counting is client
                client.settimeout(WRITE_ENDED if counting else None)
        except OSError:
            pass
        for sock in (client, upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _counts(self, connection: socket.socket, command: list[bytes] | None) -> int | None:
        """Before `command` (None: after the one just forwarded), how many more commands the armed cut lets through
        on `connection`: 0 cuts it there (None: no cut is counting on it)."""
        with self.lock:
            if self._picks is None:
                return None
            if self._counting is None:
                if command is None or not self._picks(b" ".join(command)):
                    return None
                self._counting = connection  # from now on `_replies` passes nothing on to this client
            elif self._counting is not connection:
                return None
            elif command is None:
                self._left -= 1  # the command just forwarded
            if self._left == 0:
                self._picks = None  # `_replies` sets `_cut` when this connection's Redis end closes
            return self._left

    @staticmethod
    def _cut_off(client: socket.socket, upstream: socket.socket) -> None:
        upstream.shutdown(socket.SHUT_WR)  # a FIN after what was sent: Redis executes that first
        client.shutdown(socket.SHUT_RDWR)  # the client hears nothing more: no reply, then the end

    def _replies(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(CHUNK):
                with self.lock:
                    cut = self._counting is client
                if cut:  # an answer must not slip through before the cut: the client would have heard it
                    continue
                try:
                    client.sendall(data)
                except OSError:
                    pass
        except OSError:
            pass
        with self.lock:
            if self._picks is None and self._counting is client:
                self._cut.set()  # Redis closed its end after our FIN: it executed everything before the cut
        try:
            client.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _packed(command: list[bytes]) -> bytes:
    return b"".join([b"*%d\r\n" % len(command)] + [b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in command])


class LostAnswer(Proxy):
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>; `arm` makes the connection that sends the next picked
    command go silent once that command reached Redis: Redis executes it, its answer (and any after it) never
    reaches the client, and nothing is closed, so the client waits until its own socket timeout. A reply lost
    or too slow (a congested link, a Redis stalled by a fork or a slow disk) after the command was executed."""

    def __init__(self, target_port: int):
        super().__init__(target_port)
        self.commands: list[list[bytes]] = []
        self._picks: Callable[[bytes], bool] | None = None
        self._silent: set[int] = set()  # id() of the client sockets that hear nothing more
        self._lost = threading.Event()
        self.start("lost-answer-accept")

    def arm(self, picks: Callable[[bytes], bool]) -> None:
        """The next command whose bytes `picks` says yes to is executed and its connection hears nothing back."""
        with self.lock:
            self._picks = picks
            self._lost.clear()

    def wait_lost(self, timeout: float = 10.0) -> None:
        if not self._lost.wait(timeout):
            raise AssertionError(f"no answer was lost within {timeout}s: the picked command was not sent")

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        pending = b""
        try:
            while data := client.recv(CHUNK):
                commands, pending = split_commands(pending + data)
                for command in commands:
                    with self.lock:
                        if self._picks is not None and self._picks(b" ".join(command)):
                            self._picks = None  # silenced before it is sent: its answer cannot slip through
                            self._silent.add(id(client))
                            self._lost.set()
                        self.commands.append(command)
                    upstream.sendall(_packed(command))
        except OSError:
            pass
        try:
            upstream.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _replies(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(CHUNK):
                with self.lock:
                    silent = id(client) in self._silent
                if not silent:
                    client.sendall(data)
        except OSError:
            pass
        with self.lock:
            silent = id(client) in self._silent
        if not silent:  # a silenced connection says nothing, not even its end
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
