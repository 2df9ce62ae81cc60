"""Outbound requests against a real local server: redirects are never followed."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from workers.outbound import OutboundPolicy, OutboundRefused, http


def test_http_never_follows_a_redirect():
    hits = []

    class Redirecting(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(OutboundRefused, match="answered 302"):
            http(OutboundPolicy.from_setting("127.0.0.1"), "GET", f"http://127.0.0.1:{server.server_address[1]}/x")
    finally:
        server.shutdown()
    assert hits == ["/x"]
