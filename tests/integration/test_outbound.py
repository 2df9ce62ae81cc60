"""Outbound requests against a real local server: redirects are never followed, and an answer is
read only up to a size (after decompression) and a time, since the server is chosen by a customer."""
from __future__ import annotations

import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from workers import outbound
from workers.outbound import OutboundPolicy, OutboundRefused, http, notify

POLICY = OutboundPolicy.from_setting("127.0.0.1")
BOMB = 64 * 1024 * 1024  # decompressed size of the gzip bomb; it travels as about 64 KB


class Answering(BaseHTTPRequestHandler):
    """Answers every request with the class's `status`, `sent_headers` and `body` (`headers` holds the request's)."""

    protocol_version = "HTTP/1.1"  # keep-alive, so that a connection left half read would show
    status, sent_headers, body = 200, {}, b""

    def do_GET(self):
        self.send_response(self.status)
        for name, value in {"Content-Length": str(len(self.body)), **self.sent_headers}.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(self.body)
        except OSError:  # the client stopped reading, as it should past the limit
            pass

    do_POST = do_GET

    def log_message(self, *args):
        pass


class Trickling(BaseHTTPRequestHandler):
    """Sends one byte every 0.3 s for about 6 s: in the headers, or in a body with a length, chunked, or until close."""

    mode = "length"

    def do_GET(self):
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        if self.mode == "headers":
            parts = [head] + [bytes([c]) for c in b"X-Slow: " + b"a" * 20 + b"\r\n"]
        elif self.mode == "chunked":
            parts = [head + b"Transfer-Encoding: chunked\r\n\r\n"] + [b"1\r\nx\r\n"] * 20 + [b"0\r\n\r\n"]
        elif self.mode == "length":
            parts = [head + b"Content-Length: 20\r\n\r\n"] + [b"x"] * 20
        else:  # the body ends when the connection does
            parts = [head + b"Connection: close\r\n\r\n"] + [b"x"] * 20
        try:
            for part in parts:
                self.wfile.write(part)
                time.sleep(0.3)
        except OSError:  # the client gave up, as it should
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients here hang up on purpose (limits, deadlines): a broken pipe is what the test wants


@pytest.fixture
def serve():
    """Starts a server for a handler class; returns its base URL. Every server is stopped after the test."""
    servers = []

    def start(handler: type[BaseHTTPRequestHandler]) -> str:
        server = _Server(("127.0.0.1", 0), handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def answering(status: int = 200, body: bytes = b"", **headers: str) -> type[BaseHTTPRequestHandler]:
    return type("Answer", (Answering,), {"status": status, "body": body,
                                         "sent_headers": {k.replace("_", "-"): v for k, v in headers.items()}})


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


def test_a_gzip_bomb_is_refused_at_the_limit(serve):
    url = serve(answering(body=gzip.compress(b"0" * BOMB), Content_Encoding="gzip", Content_Type="text/plain"))
    started = time.monotonic()
    with pytest.raises(OutboundRefused, match=r"GET http://127\.0\.0\.1:\d+/\*\*\* answered with a body over 1 MiB"):
        http(POLICY, "GET", f"{url}/bomb")
    assert time.monotonic() - started < 2  # stopped at the limit, not after decompressing 64 MiB


def test_a_large_plain_answer_is_refused_at_the_limit(serve):
    url = serve(answering(body=b"x" * (2 * 1024 * 1024), Content_Type="text/plain"))
    with pytest.raises(OutboundRefused, match="answered with a body over 1 MiB") as refused:
        http(POLICY, "POST", f"{url}/big", body={"a": 1})
    assert not refused.value.refused  # the guard did not stop it: trying again later may help


def test_an_answer_of_exactly_the_limit_is_read_whole(serve):
    """The limit is on the decompressed size, and the limit itself is allowed."""
    text = b"y" * outbound.MAX_ANSWER_BYTES
    url = serve(answering(body=gzip.compress(text), Content_Encoding="gzip", Content_Type="text/plain"))
    response = outbound.send(POLICY, "GET", f"{url}/edge")
    assert response.status_code == 200
    assert response.content == text


@pytest.mark.parametrize("mode", ["headers", "length", "chunked", "until close"])
def test_an_answer_that_trickles_is_cut_off_at_the_timeout(serve, mode):
    url = serve(type("Slow", (Trickling,), {"mode": mode}))
    started = time.monotonic()
    with pytest.raises(OutboundRefused, match="did not finish answering within 1 s"):
        http(OutboundPolicy.from_setting("127.0.0.1", timeout=1), "GET", f"{url}/slow")
    assert time.monotonic() - started < 3  # each byte came within the timeout; the whole answer did not


def test_ordinary_answers_come_back_as_before(serve):
    answer = {"ok": True, "items": list(range(100))}
    plain = serve(answering(body=json.dumps(answer).encode(), Content_Type="application/json"))
    zipped = serve(answering(body=gzip.compress(json.dumps(answer).encode()), Content_Type="application/json",
                             Content_Encoding="gzip"))
    text = serve(answering(status=201, body=b"created", Content_Type="text/plain"))
    for _ in range(2):  # a second request after the first one's connection was handled
        assert http(POLICY, "GET", f"{plain}/a") == {"status": 200, "body": answer}
        assert http(POLICY, "GET", f"{zipped}/a") == {"status": 200, "body": answer}
        assert http(POLICY, "POST", f"{text}/a", body={"x": 1}) == {"status": 201, "body": "created"}


def test_a_request_after_a_refused_answer_still_works(serve):
    big = serve(answering(body=b"x" * (2 * 1024 * 1024)))
    small = serve(answering(body=b'{"ok": true}', Content_Type="application/json"))
    with pytest.raises(OutboundRefused, match="over 1 MiB"):
        http(POLICY, "GET", f"{big}/a")
    assert http(POLICY, "GET", f"{small}/a") == {"status": 200, "body": {"ok": True}}
    response = outbound.send(POLICY, "POST", f"{small}/b", data=b"{}", headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (200, {"ok": True})  # as deliveries read it


def test_a_delivery_reads_the_status_and_leaves_a_long_body_unread(serve):
    """A subscription delivery needs only the status: a receiver's 2xx with 2 MiB of body is delivered."""
    url = serve(answering(body=b"x" * (2 * 1024 * 1024), Content_Type="text/plain"))
    for _ in range(2):  # the connection left with its body unread is not used again
        response = outbound.send(POLICY, "POST", f"{url}/hook", answer_bytes=0, data=b"{}")
        assert (response.status_code, response.content) == (200, b"")


def test_a_notification_whose_server_trickles_its_answer_lets_go_of_it_at_the_timeout(serve):
    """Apprise gives up waiting after its timeout but left its service reading on one of its few pool
    threads; now the service's connection is shut when time is up, and the server sees it go."""
    gone = threading.Event()

    class Watched(Trickling):
        mode = "length"

        def do_POST(self):
            started = time.monotonic()
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.do_GET()  # returns once the client has gone, or after the ~6 s trickle
            if time.monotonic() - started < 3:
                gone.set()

    url = serve(Watched)
    with pytest.raises(OutboundRefused, match="not delivered"):
        notify(OutboundPolicy.from_setting("127.0.0.1", timeout=1), f"json://{url.split('//')[1]}/hook", "hi")
    assert gone.wait(5), "the notification's connection was still open after 3 s"


def test_an_answer_nested_deeper_than_the_parser_goes_is_kept_as_text(serve):
    url = serve(answering(body=b"[" * 100_000, Content_Type="application/json"))
    assert http(POLICY, "GET", f"{url}/deep") == {"status": 200, "body": "[" * 10_000}


def test_a_notification_whose_server_answers_a_gzip_bomb_is_not_read_past_the_limit(serve):
    """Apprise's services read their answers whole (requests without stream): 64 MiB here, gigabytes from a
    server that means it, in a worker every customer shares. Read by the outbound limits instead, the
    notification stops at 1 MiB and says why."""
    url = serve(answering(body=gzip.compress(b"0" * BOMB), Content_Encoding="gzip", Content_Type="text/plain"))
    started = time.monotonic()
    with pytest.raises(OutboundRefused, match="not delivered: answered with a body over 1 MiB"):
        notify(POLICY, f"json://{url.split('//')[1]}/hook", "hi")
    assert time.monotonic() - started < 2  # stopped at the limit, not after decompressing 64 MiB


def test_a_notification_with_an_ordinary_answer_is_delivered_and_keeps_the_limits_to_itself(serve):
    url = serve(answering(body=b'{"ok": true}', Content_Type="application/json"))
    notify(POLICY, f"json://{url.split('//')[1]}/hook", "hi")
    import requests
    answer = requests.get(f"{url}/after", stream=False, timeout=5)  # outside outbound: requests as before
    assert answer.json() == {"ok": True}
    big = serve(answering(body=b"x" * (2 * 1024 * 1024), Content_Type="text/plain"))
    assert len(requests.get(f"{big}/plain", timeout=5).content) == 2 * 1024 * 1024


def test_an_email_notification_whose_server_never_ends_its_reply_stops_at_the_limit():
    """smtplib reads a reply's lines until one without "-" after the code, however many: a mail server
    sending "220-…" lines without end filled the worker's memory at the network's pace (443 MB in the
    3 s of this test's timeout: 568 MB of RSS). Now an email notification's replies stop at 1 MiB."""
    import socket

    sent, listener = [0], socket.create_server(("127.0.0.1", 0))

    def flood():
        connection, _ = listener.accept()
        lines = (b"220-" + b"x" * 200 + b"\r\n") * 50
        with connection:
            try:
                while True:
                    connection.sendall(lines)
                    sent[0] += len(lines)
            except OSError:  # the client hung up, as it should
                pass

    threading.Thread(target=flood, daemon=True).start()
    url = f"mailto://user:pw@127.0.0.1:{listener.getsockname()[1]}?to=a@example.com&from=b@example.com"
    started = time.monotonic()
    try:
        with pytest.raises(OutboundRefused, match="NotifyEmail notification was not delivered: "
                                                  "answered with replies over 1 MiB"):
            notify(OutboundPolicy.from_setting("127.0.0.1", timeout=3), url, "hi")
    finally:
        listener.close()
    assert time.monotonic() - started < 2.5  # stopped at the limit, not at the timeout
    assert sent[0] < 16 * 1024 * 1024  # 1 MiB read, the rest what the sockets' buffers held


def test_an_email_notification_to_an_ordinary_mail_server_is_delivered():
    """What the limit on replies must leave alone: a plain SMTP conversation, login included."""
    import socket

    listener, received = socket.create_server(("127.0.0.1", 0)), []

    def serve():
        connection, _ = listener.accept()
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"220 mail.example ready\r\n")
            for line in lines:
                command = line.split(b" ", 1)[0].upper().strip()
                if command in (b"EHLO", b"HELO"):
                    connection.sendall(b"250-mail.example\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n")
                elif command == b"AUTH":
                    connection.sendall(b"235 2.7.0 accepted\r\n")
                elif command == b"DATA":
                    connection.sendall(b"354 go on\r\n")
                    received.append(b"".join(iter(lines.readline, b".\r\n")))
                    connection.sendall(b"250 2.0.0 queued\r\n")
                elif command == b"QUIT":
                    connection.sendall(b"221 bye\r\n")
                    return
                else:  # MAIL FROM, RCPT TO, RSET, NOOP
                    connection.sendall(b"250 ok\r\n")

    threading.Thread(target=serve, daemon=True).start()
    url = f"mailto://user:pw@127.0.0.1:{listener.getsockname()[1]}?to=a@example.com&from=b@example.com"
    try:
        notify(OutboundPolicy.from_setting("127.0.0.1", timeout=5), url, "hello by mail", title="Subject line")
    finally:
        listener.close()
    assert len(received) == 1 and b"hello by mail" in received[0] and b"Subject line" in received[0]
