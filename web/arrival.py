"""When a request came: stamped by waitress's I/O loop as its first bytes are read, before it waits for a thread.

A request whose thread is busy waits in waitress's queue, and a view that takes the time when it runs misses that
wait. A chat command must be answered within the surface's patience (web/commands.py ANSWER_SECONDS); one that
waited in the queue past it, timed from the view, was stored and run though Slack had shown the person an error,
and the command they sent again ran too (tests/integration/test_chat.py). waitress makes a request's parser when
its first bytes arrive; the parser here notes the time (`time.monotonic()`, this process's clock, as the views
read it), and each request's WSGI environ carries it as ENVIRON_KEY.

Slack's signed X-Slack-Request-Timestamp says when Slack sent it, but in whole seconds and by Slack's clock:
not used for this.
"""
from __future__ import annotations

import time

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.task import WSGITask

ENVIRON_KEY = "engine.arrived"  # time.monotonic() when the request's first bytes were read


class StampedParser(HTTPRequestParser):
    """A request being read, with the time its first bytes came (waitress makes one when they do)."""

    def __init__(self, adj):
        super().__init__(adj)
        self.arrived = time.monotonic()

    def received(self, data):
        if self.body_rcv is None and not self.header_plus.strip():
            # Nothing but blank lines yet: the CRLF a client may send after a request (RFC 9112 2.2, which waitress
            # skips) makes the next request's parser on a keep-alive connection; the request starts with these bytes.
            self.arrived = time.monotonic()
        return super().received(data)


class StampedTask(WSGITask):
    """A request's task, whose WSGI environ says when the request came."""

    def get_environment(self):
        environ = super().get_environment()
        environ[ENVIRON_KEY] = getattr(self.request, "arrived", None)
        return environ


class StampedChannel(HTTPChannel):
    """waitress's connection, reading requests with StampedParser and serving them with StampedTask."""

    parser_class = StampedParser
    task_class = StampedTask


def arrived(environ: dict) -> float:
    """When the request came (time.monotonic()); now when no waitress stamped it (Flask's test client)."""
    stamp = environ.get(ENVIRON_KEY)
    return stamp if isinstance(stamp, float) else time.monotonic()
