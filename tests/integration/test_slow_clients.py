"""Issue 19: slow clients cannot hold the web (the web process as the Procfile serves it).

Each connection announces a 1,000-byte body and sends 10 bytes. Under a server that hands the
connection to a thread before the body is read (gunicorn's gthread: 16 threads), 20 such
connections, without any secret, held every thread and /healthz timed out. waitress reads the whole
request on its I/O loop first; a thread only ever sees a complete request.
"""
from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

import pytest
import requests

from tests.support.stack import deliver

HOLDERS = 40


def _hold_unfinished_bodies(web: str, count: int) -> list[socket.socket]:
    address = urlparse(web)
    held = []
    for _ in range(count):
        conn = socket.create_connection((address.hostname, address.port), timeout=5)
        conn.sendall(b"POST /hooks/forms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n0123456789")
        held.append(conn)
    return held


@pytest.mark.timeout(60)
def test_forty_unfinished_bodies_hold_neither_health_nor_a_good_delivery(stack):
    web = stack.web(threads=16)
    held = _hold_unfinished_bodies(web, HOLDERS)
    try:
        time.sleep(0.5)  # every connection is open and waiting for the rest of its body
        started = time.monotonic()
        assert requests.get(f"{web}/healthz", timeout=2).status_code == 200
        assert time.monotonic() - started < 2
        started = time.monotonic()
        assert deliver(web, {"title": "Still served"}, "msg_beside_slow").status_code == 202
        assert time.monotonic() - started < 5
    finally:
        for conn in held:
            conn.close()


@pytest.mark.timeout(60)
def test_a_connection_that_stops_sending_is_closed_after_ten_seconds(stack):
    web = stack.web(threads=4)
    [conn] = _hold_unfinished_bodies(web, 1)
    started = time.monotonic()
    try:
        conn.settimeout(30)
        assert conn.recv(1024) == b""  # closed by the server, with nothing sent: the request never began
        assert time.monotonic() - started < 20
    finally:
        conn.close()
