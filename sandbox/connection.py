"""Closing a client's connection without an answer, for the `drop` and `commit_then_hang` faults.

WSGI has no way to say "send nothing", so we reach the socket through the server: waitress hands
its channel out as `waitress.client_disconnected.__self__`, werkzeug's dev server as
`werkzeug.socket`. Shutting the socket down makes the client see the connection closed with no
response; the empty Response returned afterwards goes nowhere.
"""
from __future__ import annotations

import socket

from flask import Response


def drop(environ: dict) -> Response:
    """Shut down the request's socket; returns a placeholder response the server cannot send."""
    sock = _socket(environ)
    if sock is None:
        raise RuntimeError("cannot drop the connection: the server does not expose its socket")
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the client is already gone, which is the goal
    return Response(status=500)


def _socket(environ: dict):
    check = environ.get("waitress.client_disconnected")
    channel = getattr(check, "__self__", None)
    if channel is not None and getattr(channel, "socket", None) is not None:
        return channel.socket
    return environ.get("werkzeug.socket")
