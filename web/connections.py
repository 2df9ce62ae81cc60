"""The web's connection slots: a full server makes room by closing the connection quiet the longest.

waitress stops accepting once `connection_limit` connections are open, and closes a connection only
after `channel_timeout` seconds without a byte. So a client that opened that many connections and
sent one byte on each every few seconds, no secret needed, held every slot of the process: no
sender's webhook was answered until it let go (tests/integration/test_slow_clients.py;
bench/RESULTS.md section 36).

Here a full server closes, before it accepts the next connection, the one quiet the longest among
those with no request being served and no answer being sent: an idle keep-alive connection, or a
request arriving a byte at a time. A sender's request arrives whole within milliseconds of its
connection and is then being served, so it is not the one closed; holding slots now takes a new
connection for each one taken back. Closing without an answer is what HTTP allows for a connection
with no complete request (a keep-alive client opens a new one). One warning line a minute at most
says how many were closed.
"""
from __future__ import annotations

import logging
import time

from waitress.server import TcpWSGIServer, create_server

from web.arrival import StampedChannel

log = logging.getLogger(__name__)

REPORT_SECONDS = 60  # at most one warning line this often while connections are being closed


class MakesRoom(TcpWSGIServer):
    """waitress's TCP server, closing its quietest idle connection when full instead of no longer accepting."""

    channel_class = StampedChannel  # each request's environ says when it came (web/arrival.py), for the chat views
    closed_for_room = 0  # since the last warning line
    reported_at = 0.0

    def readable(self):
        # waitress 3.0's own, but for a full server: it stopped accepting and logged two lines each time the
        # count crossed the limit, which making room would do at every connection.
        now = time.time()
        if now >= self.next_channel_cleanup:
            self.next_channel_cleanup = now + self.adj.cleanup_interval
            self.maintenance(now)  # closes connections quiet for channel_timeout
        if not self.accepting:
            return False
        if len(self._map) < self.adj.connection_limit:
            return True
        self.make_room()
        return False

    def make_room(self) -> None:
        """Have the quietest connection closed that is neither served nor answered, unless one is closing already."""
        quietest = None
        for channel in self.active_channels.values():
            if channel.will_close or channel.close_when_flushed:
                return  # it goes in this turn of the loop, and its slot with it
            if channel.requests or channel.total_outbufs_len:
                continue  # a request being served or its answer being sent
            if quietest is None or channel.last_activity < quietest.last_activity:
                quietest = channel
        if quietest is None:
            return  # every connection is busy: the new one waits in the kernel's backlog
        # Marked, as waitress's own time-out does: the loop closes it in its next turn, and accepts in the one
        # after. Closed here, in the middle of the turn's list of what to poll, its descriptor could be
        # the new connection's by the time the poll's answer for the old one is read.
        quietest.will_close = True
        self.closed_for_room += 1
        now = time.monotonic()
        if now - self.reported_at >= REPORT_SECONDS:
            log.warning("the web is at its limit of %d connections: closed %d quiet one(s) to accept new ones "
                        "(a client holding connections open, or more senders keeping them than the limit)",
                        self.adj.connection_limit, self.closed_for_room)
            self.reported_at, self.closed_for_room = now, 0


def server(app, **options):
    """waitress's `create_server` (a `_server` for `waitress.serve`) whose TCP server makes room when full."""
    created = create_server(app, **options)
    # create_server names its classes itself; the one it made for web.server's single listening socket
    # becomes this subclass, which adds methods and two counters that start from its class's values.
    if type(created) is TcpWSGIServer:
        created.__class__ = MakesRoom
    else:
        log.warning("a full web stops accepting connections: %s is not waitress's TCP server this expects",
                    type(created).__name__)
    return created
