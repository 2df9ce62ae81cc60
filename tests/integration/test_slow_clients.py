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
from web.server import CONNECTION_LIMIT

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


@pytest.mark.timeout(60)
def test_a_client_holding_every_connection_with_headers_that_never_end_holds_up_no_sender(stack):
    # No secret needed: a client opens as many connections as the web takes and keeps each just short of
    # its time-out. waitress stopped accepting at its limit, and no sender was answered until it let go.
    web = stack.web(threads=4)
    address = urlparse(web)
    held = []
    try:
        for _ in range(CONNECTION_LIMIT):
            conn = socket.create_connection((address.hostname, address.port), timeout=5)
            conn.sendall(b"POST /hooks/forms HTTP/1.1\r\nHost: x\r\n")  # headers that never end
            held.append(conn)
        time.sleep(0.5)
        assert deliver(web, {"title": "Served while held"}, "msg_beside_held").status_code == 202
        assert requests.get(f"{web}/healthz", timeout=5).status_code == 200
        # The connections quiet the longest were closed to make room, without an answer.
        held[0].settimeout(5)
        assert held[0].recv(1024) == b""
        assert "closed" in stack.logs() and "quiet one(s) to accept new ones" in stack.logs()
    finally:
        for conn in held:
            conn.close()
