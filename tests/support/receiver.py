"""A local HTTP endpoint that records what is posted to it (stands in for Slack, Teams, a webhook)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """Records every request body; `url` is its base URL, `json_url` the Apprise form of it."""

    def __init__(self):
        self.received: list[dict] = []
        self.answers: list[int] = []  # statuses for the next requests (then 200), e.g. [503, 503, 503]
        self.delay = 0.0  # seconds each answer takes (a slow Slack)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                # The answer is chosen before the request is recorded: a test that sets `answers` once it
                # sees a request must not change that request's own answer (a 503 for a delivery it saw).
                status = receiver.answers.pop(0) if receiver.answers else 200
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = body.decode(errors="replace")
                receiver.received.append({"path": self.path, "body": parsed, "headers": dict(self.headers),
                                          "raw": body.decode(errors="replace")})
                time.sleep(receiver.delay)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.json_url = f"json://127.0.0.1:{self.port}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
