"""A hostile InLoox for tests: the sandbox behind a local proxy that spoils the answers a test names.

The sandbox answers as InLoox documents; what a server that does not (a self-hosted InLoox's bug, or
one that lies on purpose) may answer, the proxy makes of it, for one entity set while the others
stay the sandbox's.
"""
from __future__ import annotations

import functools
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import requests

DRIP_SECONDS = 0.2
_FORWARDED = ("x-api-key", "Content-Type", "Accept", "OData-MaxVersion")


class Spoiler:
    """Forwards /api/odata/ to the sandbox; `spoil(path, change)` rewrites the JSON answers to `path`."""

    def __init__(self, upstream: str):
        self.upstream = upstream  # the sandbox's base URL (…/api/odata/)
        self.spoils: dict[str, Callable[[dict], dict]] = {}
        self.drips: set[str] = set()  # paths answered a byte at a time, for good (`drip`)
        self.give_ups: dict[str, float] = {}  # path → seconds after which a write to it is answered 503 (`gives_up`)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/api/odata/"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def spoil(self, path: str, change: Callable[[dict], dict]) -> None:
        """Answers to `path` (the entity set, before any `?` or `(`) pass through `change(answer)` first."""
        self.spoils[path] = change

    def drip(self, path: str) -> None:
        """Answers to `path` (as in `spoil`) are a status line and headers, then a byte every DRIP_SECONDS for as
        long as the client reads (or until `drips` is cleared): each read comes well within any read timeout."""
        self.drips.add(path)

    def gives_up(self, path: str, after: float) -> None:
        """Writes to `path` (as in `spoil`) that the sandbox has not answered within `after` seconds are answered 503
        by the proxy, while the sandbox goes on with them and applies them: a router in front of InLoox that waits
        less than InLoox takes (Heroku's H12, whose 503 says nothing of what the application did)."""
        self.give_ups[path] = after

    def stop(self) -> None:
        self.drips.clear()  # the answers still dripping end
        self.httpd.shutdown()
        self.httpd.server_close()


def between_pages(act: Callable[[dict], object], at: int = 1) -> tuple[Callable[[dict], dict], list[dict]]:
    """A spoil that lets the answer through and, at the `at`-th answer with rows (the first by default), calls
    `act(its first row)` once: a person's edit or delete between that page of a read and the next. Returns it, and
    the rows acted on."""
    acted: list[dict] = []
    answers = 0

    def spoil(answer: dict) -> dict:
        nonlocal answers
        answers += bool(answer.get("value"))
        if not acted and answers == at:
            acted.append(answer["value"][0])
            act(acted[0])
        return answer

    return spoil, acted


def without_offset(stamp: str) -> str:
    """`2025-04-01T09:00:00Z` as `2025-04-01T09:00:00`: a date-time that says no time zone."""
    return re.sub(r"(Z|[+-]\d\d:\d\d)$", "", stamp)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        relative = self.path.removeprefix("/api/odata/")
        path = re.split(r"[?(]", relative, maxsplit=1)[0]
        if path in owner.drips:
            return self._drip(owner, path)
        forward = functools.partial(requests.request, self.command, owner.upstream + relative, timeout=30,
                                    data=self.rfile.read(length) if length else None,
                                    headers={h: self.headers[h] for h in _FORWARDED if h in self.headers})
        if self.command != "GET" and path in owner.give_ups:
            return self._unless_given_up(forward, owner.give_ups[path])
        answer = forward()
        # nextLinks name the sandbox: they go through the proxy too.
        body = answer.content.replace(owner.upstream.encode(), owner.url.encode())
        change = owner.spoils.get(path)
        if change is not None and answer.ok and body:
            body = json.dumps(change(json.loads(body))).encode()
        self.send_response(answer.status_code)
        self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PATCH = do_DELETE = do_GET

    def _unless_given_up(self, forward: Callable[[], requests.Response], after: float) -> None:
        answered: list[requests.Response] = []
        sent = threading.Thread(target=lambda: answered.append(forward()), daemon=True)
        sent.start()
        sent.join(after)  # the request goes on upstream after this, answered or not
        status, body = (answered[0].status_code, answered[0].content) if answered else (503, b"Application error")
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if answered else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, owner: Spoiler, path: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(10**9))
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(b'{"value": [')
            while path in owner.drips:
                time.sleep(DRIP_SECONDS)
                self.wfile.write(b" ")
                self.wfile.flush()
        except OSError:
            pass  # the client gave up on the answer: what a trickle is for

    def log_message(self, *args):
        pass
