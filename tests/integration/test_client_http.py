"""inloox.Client against tiny local HTTP servers, for what the sandbox cannot do: redirects to another
host, a nextLink that leaves the origin, a token echoed back, exact wire format, lost answers.
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import ipaddress
import json
import logging
import pickle
import socket
import ssl
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from inloox import (
    Client, HTTPStatusError, InLooxError, InvalidRequest, OutcomeUnknown, RateLimited, ServerError,
    TransportError, UnexpectedRedirect, eq,
)
from inloox import together
from inloox.client import MAX_ANSWER_BYTES, MAX_PAGES
from tests.support.processes import free_port

TOKEN = "ilx_SENTINELsentinelSENTINELsentinel01"
GUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
DROP = object()  # reply: close the connection without answering


class Drip:
    """A reply's body sent `size` bytes at a time, `every` seconds apart (a server answering slowly);
    `head`: its status line and headers too."""

    def __init__(self, body: bytes, every: float, size: int = 1, head: bool = False):
        self.body, self.every, self.size, self.head = body, every, size, head


class LocalServer:
    """A stdlib HTTP server in a thread: scripted replies by (method, path), every request recorded."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.replies: dict[tuple[str, str], object] = {}
        self.received: list[dict] = []
        self.released = threading.Event()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.httpd.server_port}/api/odata/"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def reply(self, method: str, path: str, status: int = 200, body=None, headers=None, hang: float = 0):
        """Answer `method /api/odata/<path>` (query string included when given) with this reply."""
        self.replies[(method, path)] = (status, body, headers or {}, hang)

    def stop(self):
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients in these tests hang up on purpose (read timeouts); a broken pipe here is expected.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._answer()

    do_POST = do_PATCH = do_DELETE = do_PUT = do_GET

    def _answer(self):
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        owner.received.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                               "body": json.loads(body) if body else None})
        # An absolute-form target (`GET http://host/api/odata/Task`) is what a proxy is asked for.
        target = self.path if self.path.startswith("/") else urlsplit(self.path)._replace(scheme="", netloc="").geturl()
        relative = target.removeprefix("/api/odata/")
        reply = owner.replies.get((self.command, relative)) or owner.replies.get((self.command, relative.split("?")[0]))
        status, payload, headers, hang = reply or (404, {"error": {"code": "NotFound", "message": "no route"}}, {}, 0)
        if callable(hang):
            hang()  # e.g. a barrier: answered once enough requests arrived
        elif hang:
            owner.released.wait(hang)
        if payload is DROP:
            self.close_connection = True
            return
        if callable(payload):
            payload = payload(relative)  # an answer made for this request (e.g. a nextLink never seen before)
        self._write(status, payload, headers)

    def _write(self, status, payload, headers):
        if isinstance(payload, Drip):
            head = (f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload.body)}\r\n\r\n").encode()
            if not payload.head:
                self.wfile.write(head)
            sent = (head if payload.head else b"") + payload.body
            for start in range(0, len(sent), payload.size):
                self.wfile.write(sent[start:start + payload.size])
                self.wfile.flush()
                if self.server.owner.released.wait(payload.every):
                    return
            return
        data = b"" if payload is None else payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
        data = data.encode() if isinstance(data, str) else data
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    server = LocalServer()
    yield server
    server.stop()


@pytest.fixture
def other_server():
    server = LocalServer()
    yield server
    server.stop()


@pytest.fixture
def client(server):
    with Client(server.url, TOKEN, timeout=(2, 2)) as client:
        yield client


@pytest.fixture(params=["urllib3", "together"])
def via(request):
    """How a test's client calls run: on this thread through urllib3, or on a greenlet of `together.run`,
    awaited on the thread's event loop through aiohttp (inloox/awaited.py, a busy worker's batches). The
    client makes the same promises either way."""
    if request.param == "urllib3":
        return lambda call: call()

    def run(call):
        outcome = together.run([call])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    return run


def _page(rows, next_link=None):
    return {"@odata.context": "$metadata#Task", "value": rows, **({"@odata.nextLink": next_link} if next_link else {})}


def _everything_shown(err: BaseException) -> str:
    """All text an error exposes: str, repr, attributes, pickle, and the traceback with its causes."""
    exposed = [str(err), repr(err), repr(vars(err)), repr(pickle.dumps(err))]
    exposed += traceback.format_exception(err)
    return "\n".join(exposed)


def test_token_and_json_headers_go_with_every_request(server, client, via):
    server.reply("GET", "Task", body=_page([{"Name": "a"}]))
    server.reply("POST", "Task", status=201, body={"TaskItemId": GUID}, headers={"Set-Cookie": "session=abc"})
    assert via(lambda: list(client.query("Task"))) == [{"Name": "a"}]
    assert via(lambda: client.create("Task", {"Name": "b"})) == {"TaskItemId": GUID}
    assert via(lambda: list(client.query("Task"))) == [{"Name": "a"}]
    headers = server.received[0]["headers"]
    assert headers["x-api-key"] == TOKEN and headers["Accept"] == "application/json"
    assert server.received[1]["body"] == {"Name": "b"}
    assert server.received[1]["headers"]["Content-Type"] == "application/json"
    # Connections are shared by every workspace on a host: a cookie one account got is never sent again.
    assert "Cookie" not in server.received[2]["headers"]


def test_a_redirect_is_an_error_and_the_other_host_never_sees_the_token(server, other_server, client, via):
    server.reply("GET", f"Task({GUID})", status=302, headers={"Location": other_server.url + f"Task({GUID})"})
    server.reply("POST", "TimeEntry", status=307, headers={"Location": other_server.url + "TimeEntry"})
    with pytest.raises(UnexpectedRedirect) as caught:
        via(lambda: client.get("Task", GUID))
    assert caught.value.location == other_server.url + f"Task({GUID})" and caught.value.status == 302
    assert other_server.url in str(caught.value) and not caught.value.retryable
    with pytest.raises(UnexpectedRedirect):
        via(lambda: client.create("TimeEntry", {"DisplayName": "x"}))
    assert other_server.received == []


def test_next_link_to_another_origin_is_refused_before_sending(server, other_server, client):
    server.reply("GET", "Task", body=_page([{"Name": "a"}], next_link=other_server.url + "Task?$skiptoken=1"))
    rows = client.query("Task")
    assert next(rows) == {"Name": "a"}
    with pytest.raises(InLooxError, match="refusing to follow @odata.nextLink"):
        next(rows)
    assert other_server.received == []


def test_next_links_that_go_round_in_a_circle_are_refused_not_followed_forever(server, client):
    # Page 2 links back to page 1: a poll that followed it would read (and keep) rows until memory ran out.
    server.reply("GET", "Task", body=_page([{"n": 0}], next_link=server.url + "Task?$skiptoken=1"))
    server.reply("GET", "Task?$skiptoken=1", body=_page([{"n": 1}], next_link=server.url + "Task?$skiptoken=2"))
    server.reply("GET", "Task?$skiptoken=2", body=_page([{"n": 2}], next_link=server.url + "Task?$skiptoken=1"))
    rows = []
    with pytest.raises(InLooxError, match="refusing to follow @odata.nextLink"):
        for row in client.query("Task"):
            rows.append(row["n"])
            assert len(rows) < 50, f"went round the circle of pages: {rows[:10]}…"
    assert rows == [0, 1, 2] and len(server.received) == 3


def test_next_links_that_never_end_are_followed_no_further_than_a_bound(server):
    # Each page links to a page never read before (a skiptoken counting up forever): the circle check
    # never fires, and a poll reading it with list(...) would grow until its process died.
    def endless(path):
        number = int(path.rpartition("=")[2]) if "=" in path else 0
        return _page([{"n": number}], next_link=f"{server.url}Task?$skiptoken={number + 1}")
    server.reply("GET", "Task", body=endless)
    assert MAX_PAGES >= 1_000  # a large account's 100,000 tasks are read whole, 100 a page
    rows = 0
    # A bound of 20 here: 10,000 pages of the stdlib server take minutes.
    with Client(server.url, TOKEN, timeout=(2, 2), max_pages=20) as client, \
            pytest.raises(InLooxError, match="more than 20 pages"):
        for _ in client.query("Task"):
            rows += 1
            assert rows <= 20, "followed fresh nextLinks past 20 pages"
    assert rows == 20 and len(server.received) == 20


def test_next_link_is_followed_verbatim(server, client):
    second = "Task?$skiptoken=a%2Bb'c;d&$filter=Name%20eq%20'x%26y'&empty="
    server.reply("GET", "Task", body=_page([{"n": 1}], next_link=server.url + second))
    server.reply("GET", second, body=_page([{"n": 2}], next_link="Task?$skiptoken=relative"))
    server.reply("GET", "Task?$skiptoken=relative", body=_page([{"n": 3}]))
    assert [row["n"] for row in client.query("Task")] == [1, 2, 3]
    assert [r["path"] for r in server.received] == [
        "/api/odata/Task", "/api/odata/" + second, "/api/odata/Task?$skiptoken=relative"]


def test_reads_are_lazy_and_top_stops_paging(server, client):
    server.reply("GET", "Task", body=_page([{"n": i} for i in range(3)], next_link=server.url + "Task?p=2"))
    rows = client.query("Task", top=2, select=["Name"], orderby="Name desc")
    assert server.received == []
    assert list(rows) == [{"n": 0}, {"n": 1}]
    assert [r["path"] for r in server.received] == ["/api/odata/Task?$select=Name&$orderby=Name%20desc&$top=2"]


def test_filter_text_on_the_wire(server, client):
    server.reply("GET", "Task", body=_page([]))
    list(client.query("Task", filter=eq("Name", "O'Brien) or (1 eq 1 & x=y+z #")))
    assert server.received[0]["path"] == \
        "/api/odata/Task?$filter=Name%20eq%20'O''Brien)%20or%20(1%20eq%201%20%26%20x%3Dy%2Bz%20%23'"


def test_writes_operations_and_counts(server, client):
    server.reply("POST", "TimeEntry", status=201, body={"@odata.context": "x", "TimeEntryId": GUID})
    server.reply("PATCH", f"Task({GUID})", status=204)
    server.reply("DELETE", f"Task({GUID})", status=204)
    server.reply("POST", f"Task({GUID})/Default.AddNote", status=204)
    server.reply("GET", f"Project({GUID})/Default.CopyProject()", body={"@odata.context": "x", "value": GUID})
    server.reply("GET", "UserInfo/Me()", body={"value": [{"ContactId": GUID, "DisplayName": "Ada"}]})
    server.reply("GET", "Task/$count", body="250")
    assert client.create("TimeEntry", {"DisplayName": "x"}) == {"TimeEntryId": GUID}
    assert client.update("Task", GUID, {"IsDone": True}) is None
    assert client.delete("Task", GUID) is None
    assert client.action("Task", GUID, "AddNote", {"htmlText": "<p>hi</p>", "notificationContactIds": []}) is None
    assert client.function("Project", GUID, "CopyProject") == GUID
    assert client.me() == {"ContactId": GUID, "DisplayName": "Ada"}
    assert client.count("Task") == 250
    sent = [(r["method"], r["path"].removeprefix("/api/odata/"), r["body"]) for r in server.received]
    assert sent[:4] == [("POST", "TimeEntry", {"DisplayName": "x"}), ("PATCH", f"Task({GUID})", {"IsDone": True}),
                        ("DELETE", f"Task({GUID})", None),
                        ("POST", f"Task({GUID})/Default.AddNote",
                         {"htmlText": "<p>hi</p>", "notificationContactIds": []})]


@pytest.mark.parametrize("body", [
    {"error": {"code": "InvalidField", "message": "Name too long",
               "details": [{"message": "max 255", "target": "Name"}]}},
    {"title": "One or more validation errors occurred.", "status": 400, "errors": {"Name": ["Name too long"]}},
    "Name too long",
])
def test_each_error_body_format_becomes_invalid_request(server, client, body):
    server.reply("POST", "Task", status=400, body=body)
    with pytest.raises(InvalidRequest) as caught:
        client.create("Task", {"Name": "x" * 300})
    err = caught.value
    assert "Name too long" in err.message and err.status == 400 and not err.retryable
    assert str(err).startswith(f"400 Bad Request from POST {server.url}Task: ")
    assert err.odata_code == ("InvalidField" if "error" in body else None)


def test_retry_after_as_seconds_and_as_http_date(server, client):
    server.reply("GET", "Task", status=429, body="slow down", headers={"Retry-After": "7"})
    server.reply("GET", "Project", status=503, body="", headers={"Retry-After": "Fri, 01 Jan 2100 00:00:00 GMT"})
    with pytest.raises(RateLimited) as limited:
        list(client.query("Task"))
    assert limited.value.retry_after == 7 and limited.value.retryable
    with pytest.raises(ServerError) as unavailable:
        list(client.query("Project"))
    assert unavailable.value.retry_after > 3600 and unavailable.value.retryable


def test_a_body_that_is_not_json_is_an_error(server, client):
    server.reply("GET", "Task", body="<html>login</html>")
    with pytest.raises(HTTPStatusError, match="not JSON") as caught:
        list(client.query("Task"))
    assert not caught.value.retryable


@pytest.mark.parametrize("answer", [
    {"body": "<html>signed in</html>"}, {"body": {"error": {"code": "x", "message": "no"}}}, {"status": 204},
], ids=["not JSON", "an error inside a 201", "no body"])
def test_a_create_answered_with_success_but_not_the_entity_is_an_unknown_outcome(server, client, answer):
    """Whether InLoox created it is unknown: the caller must look for it before sending again, not take the answer
    for the entity, nor InLoox's word that nothing happened."""
    server.reply("POST", "Task", **{"status": 201, **answer})
    with pytest.raises(OutcomeUnknown, match="POST .*Task.* may or may not") as caught:
        client.create("Task", {"Name": "x"})
    assert not caught.value.retryable


def test_the_token_is_redacted_even_when_the_server_echoes_it(server, client, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    server.reply("POST", "Task", status=401, body={"error": {
        "code": TOKEN, "message": f"token {TOKEN} is revoked", "details": [{"message": TOKEN, "target": "x-api-key"}]}})
    server.reply("GET", "Task", status=302, headers={"Location": f"https://evil.example/?k={TOKEN}"})
    server.reply("PATCH", f"Task({GUID})", body=DROP)
    errors = []
    for call in (lambda: client.create("Task", {"Name": TOKEN}), lambda: list(client.query("Task")),
                 lambda: client.update("Task", GUID, {"Name": "x"})):
        with pytest.raises(InLooxError) as caught:
            call()
        errors.append(caught.value)
    assert errors[0].message == "token *** is revoked" and errors[0].details[0]["message"] == "***"
    assert "***" in errors[1].location
    for err in errors:
        assert TOKEN not in _everything_shown(err)
    assert any("urllib3" in r.name for r in caplog.records)
    for record in caplog.records:
        assert TOKEN not in record.getMessage() and TOKEN not in str(record.args)


@pytest.mark.parametrize("method", ["POST", "PATCH", "DELETE"])
def test_a_write_whose_answer_times_out_has_an_unknown_outcome(server, method, via):
    server.reply(method, "Task" if method == "POST" else f"Task({GUID})", hang=5)
    with Client(server.url, TOKEN, timeout=(2, 0.3)) as client:
        write = {"POST": lambda: client.create("Task", {}), "PATCH": lambda: client.update("Task", GUID, {}),
                 "DELETE": lambda: client.delete("Task", GUID)}[method]
        with pytest.raises(OutcomeUnknown) as caught:
            via(write)
    assert not caught.value.retryable and caught.value.method == method
    assert "may or may not have been applied" in str(caught.value)


def test_calls_run_together_have_their_requests_in_flight_at_once(server):
    """A busy worker's batch runs its events together on one thread (inloox/together.py): each waits for
    its answer while the next is sent. This server answers none of four writes before all four arrived."""
    server.reply("POST", "Task", status=201, body={"TaskItemId": GUID}, hang=threading.Barrier(4, timeout=5).wait)
    with Client(server.url, TOKEN, timeout=(2, 10)) as client:
        outcomes = together.run([lambda n=n: client.create("Task", {"Name": f"task {n}"}) for n in range(4)])
    assert outcomes == [{"TaskItemId": GUID}] * 4
    assert sorted(r["body"]["Name"] for r in server.received) == [f"task {n}" for n in range(4)]


def test_calls_run_together_through_a_proxy_have_their_requests_in_flight_at_once(server, other_server, monkeypatch):
    """A route through a proxy keeps urllib3 (inloox/awaited.py does not speak to proxies); run together, its
    requests wait on threads of their own. Before, each held the batch's thread until its answer came, and
    with it every other event of the batch, other workspaces' too. The proxy answers none of four writes
    before all four arrived."""
    _clear_proxy_settings(monkeypatch)
    proxy = other_server  # a plain HTTP server standing in as the proxy: it answers what it is asked
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.httpd.server_port}")
    proxy.reply("POST", "Task", status=201, body={"TaskItemId": GUID}, hang=threading.Barrier(4, timeout=5).wait)
    with Client(server.url, TOKEN, timeout=(2, 10)) as client:
        outcomes = together.run([lambda n=n: client.create("Task", {"Name": f"task {n}"}) for n in range(4)])
    assert outcomes == [{"TaskItemId": GUID}] * 4
    assert sorted(r["body"]["Name"] for r in proxy.received) == [f"task {n}" for n in range(4)]
    assert server.received == []


def test_a_dropped_post_has_an_unknown_outcome(server, client, via):
    server.reply("POST", "Task", body=DROP)
    with pytest.raises(OutcomeUnknown):
        via(lambda: client.create("Task", {"Name": "x"}))


def test_a_write_whose_answer_is_lost_on_a_reused_connection_is_sent_once(server, client, via):
    """The worst bug is a write sent twice. A keep-alive connection that closes after a POST arrived,
    without an answer, is what some HTTP clients answer by resending the POST on a new connection
    (libcurl does, and returns the second answer as if nothing happened: bench/RESULTS.md section 24).
    Ours must not: the POST reached InLoox once, and the caller learns that its outcome is unknown."""
    server.reply("GET", "Task", body=_page([]))
    server.reply("POST", "Task", body=DROP)
    assert via(lambda: list(client.query("Task"))) == []  # the connection is kept, and the POST goes on it
    with pytest.raises(OutcomeUnknown):
        via(lambda: client.create("Task", {"Name": "x"}))
    assert [r["method"] for r in server.received] == ["GET", "POST"]


def test_a_lost_answer_to_a_read_is_retryable(server, via):
    server.reply("GET", "Task", hang=5)
    server.reply("GET", "Project", body=DROP)
    with Client(server.url, TOKEN, timeout=(2, 0.3)) as client:
        for entity_set in ("Task", "Project"):
            with pytest.raises(TransportError) as caught:
                via(lambda: list(client.query(entity_set)))
            assert type(caught.value) is TransportError and caught.value.retryable
            assert not caught.value.unavailable  # InLoox took the request: a slow query may be at fault


def test_a_write_that_could_not_connect_is_safe_to_retry(via):
    with Client(f"http://127.0.0.1:{free_port()}/api/odata/", TOKEN) as client:
        with pytest.raises(TransportError) as caught:
            via(lambda: client.create("TimeEntry", {"DisplayName": "x"}))
    assert type(caught.value) is TransportError and caught.value.retryable
    assert caught.value.unavailable  # the run waits for InLoox without using up an attempt
    assert "could not connect" in str(caught.value)


def test_threads_share_the_pool_without_discarding_connections(server, caplog):
    caplog.set_level(logging.WARNING, logger="urllib3")
    server.reply("GET", "Task", body=_page([{"n": 1}]))
    with Client(server.url, TOKEN, pool_size=8) as client:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: list(client.query("Task")), range(64)))
    assert results == [[{"n": 1}]] * 64
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


def _clear_proxy_settings(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_the_proxy_named_in_the_environment_carries_the_requests(server, other_server, monkeypatch):
    _clear_proxy_settings(monkeypatch)
    proxy = other_server  # a plain HTTP server standing in as the proxy: it answers what it is asked
    monkeypatch.setenv("HTTP_PROXY", f"http://egress:p%40ss@127.0.0.1:{proxy.httpd.server_port}")
    proxy.reply("GET", "Task", body=_page([{"Name": "via the proxy"}]))
    with Client(server.url, TOKEN, timeout=(2, 2)) as client:
        assert list(client.query("Task")) == [{"Name": "via the proxy"}]
    [request] = proxy.received
    assert request["path"] == server.url + "Task"  # absolute-form: the proxy is told where to go
    assert request["headers"]["Proxy-Authorization"] == "Basic " + base64.b64encode(b"egress:p@ss").decode()
    assert request["headers"]["x-api-key"] == TOKEN and server.received == []


def test_no_proxy_sends_directly(server, other_server, monkeypatch):
    _clear_proxy_settings(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", other_server.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    server.reply("GET", "Task", body=_page([{"Name": "direct"}]))
    with Client(server.url, TOKEN, timeout=(2, 2)) as client:
        assert list(client.query("Task")) == [{"Name": "direct"}]
    assert other_server.received == [] and len(server.received) == 1


def test_a_write_whose_proxy_cannot_be_reached_is_safe_to_retry(server, monkeypatch):
    _clear_proxy_settings(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with Client(server.url, TOKEN, timeout=(2, 2)) as client:
        with pytest.raises(TransportError, match="could not connect for POST") as caught:
            client.create("TimeEntry", {"DisplayName": "x"})
    assert type(caught.value) is TransportError and caught.value.retryable
    assert server.received == []


def test_a_body_with_nan_is_refused_and_nothing_is_sent(server, client):
    server.reply("POST", "TimeEntry", status=201, body={})
    for number in (float("nan"), float("inf")):
        with pytest.raises(InLooxError, match="could not send POST .*not JSON compliant") as caught:
            client.create("TimeEntry", {"Duration": number})
        assert type(caught.value) is InLooxError and not caught.value.retryable
    assert server.received == []


def test_a_compressed_answer_is_read_and_a_corrupt_one_is_a_lost_answer(server, client, via):
    server.reply("GET", "Task", body=gzip.compress(json.dumps(_page([{"n": 1}])).encode()),
                 headers={"Content-Encoding": "gzip"})
    server.reply("GET", "Project", body=b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert via(lambda: list(client.query("Task"))) == [{"n": 1}]
    assert "gzip" in server.received[0]["headers"]["Accept-Encoding"]
    with pytest.raises(TransportError, match="no answer to GET") as caught:
        via(lambda: list(client.query("Project")))
    assert caught.value.retryable


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_an_answer_over_the_size_limit_is_an_error_and_is_not_read_whole(server, client, encoding, via):
    """A workspace's InLoox URL may be its customer's own server, and a worker serves many workspaces:
    a page that inflates to 64 MiB (64 KiB on the wire, gzipped) must not be read into the process."""
    page = json.dumps(_page([{"Name": "a" * (MAX_ANSWER_BYTES + 1)}])).encode()
    server.reply("GET", "Task", body=gzip.compress(page) if encoding == "gzip" else page,
                 headers={"Content-Encoding": encoding})
    server.reply("GET", "Project", body=_page([{"Name": "next"}]))
    with pytest.raises(HTTPStatusError, match=f"answered with a body over {MAX_ANSWER_BYTES} bytes") as caught:
        via(lambda: list(client.query("Task")))
    assert caught.value.status == 200 and not caught.value.retryable
    assert via(lambda: list(client.query("Project"))) == [{"Name": "next"}]  # the half-read connection was not reused


def test_a_write_answered_with_success_over_the_size_limit_has_an_unknown_outcome(server, client, via):
    """A 2xx says InLoox did something, not what: the caller must look before sending again, as for an unreadable
    answer. It was an error that said nothing of the sort, and the run forgot the create was sent (test_pipeline)."""
    server.reply("POST", "Task", status=201, body=json.dumps({"TaskItemId": GUID, "Name": "a" * (MAX_ANSWER_BYTES + 1)}))
    with pytest.raises(OutcomeUnknown, match=f"over {MAX_ANSWER_BYTES} bytes.*may or may not") as caught:
        via(lambda: client.create("Task", {"Name": "x"}))
    assert not caught.value.retryable


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_answer_sent_a_byte_at_a_time_ends_at_the_timeout(server, method, via):
    """Each byte comes well within the read timeout (2 s); the whole answer would take 6 s."""
    body = json.dumps(_page([{"Name": "slow"}])).encode()
    path = "Task" if method == "GET" else "TimeEntry"
    server.reply(method, path, status=200 if method == "GET" else 201, body=Drip(body, every=6 / len(body)))
    with Client(server.url, TOKEN, timeout=(2, 2)) as client:
        started = time.monotonic()
        expected = TransportError if method == "GET" else OutcomeUnknown
        with pytest.raises(expected, match="the answer did not (end|come) within 2 s") as caught:
            via(lambda: list(client.query("Task")) if method == "GET" else client.create("TimeEntry", {"DisplayName": "x"}))
        assert time.monotonic() - started < 4  # the timeout and one slow read at most, not the 6 s drip
    assert type(caught.value) is expected and caught.value.retryable == (method == "GET")


@pytest.mark.parametrize("route", ["direct", "socks"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_answer_whose_head_comes_a_byte_at_a_time_ends_at_the_timeout(server, method, route, request, via):
    """The status line and headers, each byte well within the read timeout (2 s), would take 6 s. Through
    a SOCKS proxy too, whose connections are urllib3.contrib.socks' own classes (7 s before 372c244)."""
    proxy = request.getfixturevalue("socks_proxy") if route == "socks" else None
    body = json.dumps(_page([{"Name": "slow"}])).encode()
    path = "Task" if method == "GET" else "TimeEntry"
    server.reply(method, path, status=200 if method == "GET" else 201, body=Drip(body, every=0.1, head=True))
    with Client(server.url, TOKEN, timeout=(2, 2)) as client:
        started = time.monotonic()
        expected = TransportError if method == "GET" else OutcomeUnknown
        with pytest.raises(expected, match=f"no answer to {method}") as caught:
            via(lambda: list(client.query("Task")) if method == "GET" else client.create("TimeEntry", {"DisplayName": "x"}))
        assert time.monotonic() - started < 4  # the timeout and the watcher's half second, not the 6 s+ trickle
    assert type(caught.value) is expected
    assert proxy is None or proxy.connects == [("127.0.0.1", server.httpd.server_port)]


def test_json_nested_deeper_than_the_parser_goes_is_an_error(server, client):
    server.reply("GET", "Task", body="[" * 100_000)
    with pytest.raises(HTTPStatusError, match="not JSON"):
        list(client.query("Task"))


@pytest.fixture
def tls_server(tmp_path):
    certificate = _self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, tmp_path / "key.pem")
    server = LocalServer(tls=context)
    server.certificate = certificate
    yield server
    server.stop()


def test_https_trusts_the_ca_bundle_named_in_the_environment(tls_server, monkeypatch, via):
    _clear_proxy_settings(monkeypatch)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_server.certificate))
    tls_server.reply("GET", "Task", body=_page([{"Name": "over TLS"}]))
    with Client(tls_server.url, TOKEN, timeout=(2, 2)) as client:
        assert via(lambda: list(client.query("Task"))) == [{"Name": "over TLS"}]


def test_an_untrusted_certificate_is_a_transport_error_that_is_not_retried(tls_server, monkeypatch, via):
    _clear_proxy_settings(monkeypatch)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)  # then certifi's bundle, which does not know it
    with Client(tls_server.url, TOKEN, timeout=(2, 2)) as client:
        with pytest.raises(TransportError, match="could not connect for POST") as caught:
            via(lambda: client.create("TimeEntry", {"DisplayName": "x"}))
    assert type(caught.value) is TransportError and not caught.value.retryable
    assert tls_server.received == []


def _self_signed_certificate(folder):
    """A certificate for 127.0.0.1 signed by its own key (cert.pem, key.pem in `folder`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (folder / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return folder / "cert.pem"


def _the_workers_client(server, redis_url) -> Client:
    """The client a worker and a poller use for a workspace whose InLoox is `server`."""
    import redis

    from workers import workspaces
    from workers.worker_context import build_context

    workspace = workspaces.Workspace(workspaces.DEFAULT, server.url, TOKEN,
                                     limits=workspaces.Limits(inloox_requests_per_second=0))
    config = {"INLOOX_TIMEOUT": "2", "OUTBOUND_ALLOW": "", "RULES_ENV": "", "DELIVERY_RETRY_SECONDS": ""}
    return build_context(config, workspace, redis.Redis.from_url(redis_url)).client


def test_a_lone_surrogate_in_an_answer_is_read_as_the_replacement_character(server, redis_url):
    """Issue 19's poison from the other side: a self-hosted InLoox (or a .NET string cut inside an emoji)
    may send "\\ud83d" alone, legal JSON that no UTF-8 can carry. Read as it came, it went on into events,
    runs and writes: a write carrying it back is refused (the sandbox answers 400), and everything that
    encodes it as UTF-8 on the way must think of it. Read as a webhook is, it becomes U+FFFD at the door."""
    server.reply("GET", "Task", body='{"value": [{"Name": "Done \\ud83d", "Emoji": "\\ud83d\\ude00"}]}')
    assert list(_the_workers_client(server, redis_url).query("Task")) == [{"Name": "Done \ufffd", "Emoji": "😀"}]


def test_an_answer_nested_past_the_limit_is_an_error_that_says_so(server, redis_url):
    """Python's parser takes ~1,000 levels, and what walks the data afterwards (conditions, templates,
    copies) recurses too: an answer is held to the depth a webhook is."""
    server.reply("GET", "Task", body='{"value": [{"Name": ' + "[" * 100 + "]" * 100 + "}]}")
    with pytest.raises(HTTPStatusError, match="not JSON: the answer nests deeper than 64 levels") as caught:
        list(_the_workers_client(server, redis_url).query("Task"))
    assert not caught.value.retryable


class Socks5Proxy:
    """A SOCKS5 proxy without authentication, CONNECT only: what PySocks speaks for `socks5://` proxies."""

    def __init__(self):
        self.connects: list[tuple[str, int]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._open: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._open.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket):
        try:
            _, methods = client.recv(2)
            client.recv(methods)
            client.sendall(b"\x05\x00")  # no authentication
            _, command, _, kind = client.recv(4)
            if kind == 1:
                host = socket.inet_ntoa(client.recv(4))
            elif kind == 3:
                host = client.recv(client.recv(1)[0]).decode()
            else:
                host = socket.inet_ntop(socket.AF_INET6, client.recv(16))
            port = int.from_bytes(client.recv(2), "big")
            self.connects.append((host, port))
            target = socket.create_connection((host, port))
            self._open.append(target)
            client.sendall(b"\x05\x00\x00\x01" + bytes(6))
            threading.Thread(target=self._pipe, args=(target, client), daemon=True).start()
            self._pipe(client, target)
        except OSError:
            pass

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self):
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def socks_proxy(monkeypatch):
    _clear_proxy_settings(monkeypatch)
    proxy = Socks5Proxy()
    monkeypatch.setenv("HTTP_PROXY", f"socks5://127.0.0.1:{proxy.port}")
    yield proxy
    proxy.stop()


def test_a_socks_proxy_named_in_the_environment_carries_the_requests(server, socks_proxy):
    server.reply("GET", "Task", body=_page([{"Name": "through SOCKS"}]))
    with Client(server.url, TOKEN, timeout=(2, 2)) as client:
        assert list(client.query("Task")) == [{"Name": "through SOCKS"}]
    assert socks_proxy.connects == [("127.0.0.1", server.httpd.server_port)]
