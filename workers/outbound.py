"""Requests to the world outside InLoox (notifications, `http` steps, chat replies), through the outbound guard.

A rule may send to any URL its author writes, so every request is made inside `egress.guarded`:
each connection, Apprise's and each redirect hop included, goes only to public addresses unless
its host is on OUTBOUND_ALLOW (for local development and tests). `http` steps never follow
redirects; Apprise services may, through the guard. Notification URLs carry their service's
credentials: messages name a URL only through `redact_url`, and `redacted` cleans what is shown.

The answer to an `http` step, a chat reply or a delivery comes from a server the customer chose,
read by a worker that many customers share: `send` reads at most MAX_ANSWER_BYTES of it (once
decompressed) and all of it within the policy's timeout, or gives up; so do Apprise's services
inside `notify`, over HTTP and SMTP.
"""
from __future__ import annotations

import contextvars
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from engine.actions import UNGUARDED_NOTIFY_SCHEMES
from inloox import deadlines
from workers import egress

if TYPE_CHECKING:
    import requests

REDACTED = "***"
# An answer is only shown (in a trace, text cut to 10,000 characters) or kept as a step's output,
# so 1 MiB is far more than any webhook or chat API sends back, and small enough that a worker
# holding one per thread does not notice. Counted after decompression: a 1 MB gzip can hold 1 GB.
MAX_ANSWER_BYTES = 1024 * 1024
_CHUNK = 64 * 1024  # urllib3 decompresses at most this much per read, whatever arrived
# Query parameters and headers whose values are credentials (token=, apikey=, sig=, Authorization …).
_SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|sig|auth|code|session|cookie|cred", re.IGNORECASE)
_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s\"'<>]*[^\s\"'<>.,;:!?)\]]", re.IGNORECASE)  # not a closing "." or ","


class OutboundRefused(Exception):
    """The destination is not allowed (private address, unknown scheme) or did not answer well.

    `refused`: the guard (or a rule about schemes) stopped it, so trying again cannot help.
    """

    def __init__(self, message: str, *, refused: bool = False):
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class OutboundPolicy:
    """Hosts that may be private (exact host names or IP literals), and the request timeout."""

    allow: frozenset[str] = frozenset()
    timeout: float = 10.0

    @classmethod
    def from_setting(cls, hosts: str, timeout: float = 10.0) -> "OutboundPolicy":
        """From a comma-separated OUTBOUND_ALLOW value."""
        return cls(frozenset(h.strip().lower() for h in hosts.split(",") if h.strip()), timeout)


def notify(policy: OutboundPolicy, url: str, text: str, title: str = "") -> None:
    """Send one notification through Apprise (Slack, Teams, email, JSON webhook …)."""
    import apprise  # here, not at the top: only a worker sending a notification needs it (~25 MB)

    scheme = _scheme(url)
    if scheme in UNGUARDED_NOTIFY_SCHEMES:
        raise OutboundRefused(f"{scheme}:// notifications are refused: their transport is not HTTP or SMTP, "
                              "which the outbound guard cannot check")
    sender = apprise.Apprise()
    if not sender.add(url):
        raise OutboundRefused(f"Apprise cannot send to {redact_url(url)} (an unknown scheme or a malformed URL)")
    service = next(iter(sender))
    # Apprise stops waiting for its service after `timeout` but leaves it running on one of its few pool
    # threads, reading whatever the server sends for as long as it sends it; the deadline (whose context
    # those threads copy) shuts the service's sockets when time is up, so that it ends too. Its services
    # read their answers whole; inside the deadline requests reads them within the limits (`_read_answer`).
    with egress.guarded(policy.allow) as guard, _Deadline(policy.timeout) as deadline:
        delivered = sender.notify(body=text, title=title or "", timeout=policy.timeout)
    if guard.refusals:  # Apprise reports a refused connection only as "not delivered"
        raise OutboundRefused(f"refused: {guard.refusals[0]}")
    if not delivered:
        why = f": {deadline.answer_refused}" if deadline.answer_refused else ""
        raise OutboundRefused(f"the {type(service).__name__} notification was not delivered{why}")


def http(policy: OutboundPolicy, method: str, url: str, *, headers: dict | None = None, body=None) -> dict:
    """Send one HTTP request; returns status and (JSON or text) body. Raises for 3xx/4xx/5xx."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise OutboundRefused(f"only http and https URLs may be called, not {parts.scheme!r}")
    target = redact_url(url)
    try:
        response = send(policy, method, url, headers=headers or {}, json=body)
    except OutboundRefused as exc:
        raise OutboundRefused(f"{method} {target} {exc}", refused=exc.refused) from exc
    if response.status_code >= 300:
        raise OutboundRefused(f"{method} {target} answered {response.status_code}")
    try:
        content = response.json()
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        content = response.text[:10_000]
    return {"status": response.status_code, "body": content}


def send(policy: OutboundPolicy, method: str, url: str, *, answer_bytes: int = MAX_ANSWER_BYTES,
         **kwargs) -> requests.Response:
    """One HTTP request through the outbound guard, redirects not followed, whatever its status.

    The body is read here (`.content`, `.json()` and `.text` work as usual), at most `answer_bytes`
    of it, and the whole answer within `policy.timeout` seconds. `answer_bytes=0`: only the status
    and headers matter (a delivery), the body is left unread and the connection closed.
    Raises OutboundRefused when there is no such answer: `refused` when the guard stopped the connection.
    """
    import requests  # here, not at the top: most processes never send one, and it costs each ~4 MB

    with egress.guarded(policy.allow) as guard, _Deadline(policy.timeout) as deadline, requests.Session() as session:
        try:
            response = session.request(method, url, timeout=policy.timeout, allow_redirects=False, stream=True,
                                       **kwargs)
            response._content = _body(response, deadline, answer_bytes)  # where requests keeps a body it read
            return response
        except requests.RequestException as exc:
            if guard.refusals:
                raise OutboundRefused(f"refused: {guard.refusals[0]}", refused=True) from exc
            if deadline.passed():  # the connection was cut because time was up: say so, not "ConnectionError"
                raise deadline.refusal() from exc
            raise OutboundRefused(f"failed: {type(exc).__name__}") from exc


def _body(response: requests.Response, deadline: _Deadline, limit: int) -> bytes:
    """The decompressed body, read a chunk at a time; the connection is closed unless it was read to the end."""
    body = bytearray()
    try:
        if limit == 0:
            return b""
        for chunk in response.iter_content(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise OutboundRefused(f"answered with a body over {_size(limit)}")
            deadline.check()
        deadline.check()  # a body that lasts until the connection closes ends early when time is up
    finally:
        response.close()  # read to the end, the connection goes back to the pool; else it is closed
    return bytes(body)


def _size(limit: int) -> str:
    return f"{limit // 1024 // 1024} MiB" if limit % (1024 * 1024) == 0 else f"{limit:,} bytes"


class _Deadline:
    """The time by which a whole answer must have arrived, counted from before connecting.

    requests' timeout bounds each wait on the socket, not their sum: a server sending a byte just
    within it holds the thread as long as it likes, in the headers as well as the body. Giving
    each read the time left would not do: one read of http.client (a header line, a chunk, 64 KiB
    of body) waits on the socket many times. So the request's sockets go on the process's watch
    list (`inloox.deadlines`, which cuts InLoox's answers off too), which shuts them when time is
    up, and a read waiting on one returns at once, over http or https. urllib3 opens them out of our
    sight; the audit event of each connect sees every one (a proxy's too). We keep a duplicate of
    each descriptor: shutting it down ends the connection, and unlike the original it is not closed
    (and its number reused elsewhere) while the watcher may act on it.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._watched: list[tuple[int, socket.socket]] = []  # (ticket, the duplicate)
        self._ended = False
        self.answer_refused = ""  # why `_read_answer` stopped reading an answer, if it did

    def __enter__(self) -> "_Deadline":
        _install()
        self._token = _deadline.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _deadline.reset(self._token)
        late = self.passed()  # Apprise gives up at its timeout and leaves its service reading on a thread of its own
        with self._lock:  # Apprise's threads keep this deadline in their context: none adds a socket now
            self._ended = True
            for ticket, sock in self._watched:
                if deadlines.unwatch(ticket) and late:  # not shut by the watcher yet: now, not at its next look
                    _shut(sock)
                sock.close()  # a watcher shutting it meanwhile meets a closed socket object: EBADF, nothing else

    def passed(self) -> bool:
        return time.monotonic() >= self.at

    def refusal(self) -> OutboundRefused:
        return OutboundRefused(f"did not finish answering within {self.seconds:g} s")

    def check(self) -> None:
        if self.passed():
            raise self.refusal()

    def watch(self, sock: socket.socket) -> None:
        try:
            copy = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except OSError:
            return  # not a socket we can hold (already closed): nothing to wait on either
        with self._lock:
            if self._ended:  # an abandoned Apprise service connecting again after notify() gave up on it
                if self.passed():
                    _shut(copy)
                copy.close()
                return
            # A connection started after time was up (another address of the host) is shut at the next look.
            self._watched.append((deadlines.watch(self.at, copy), copy))


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected (yet, or any more): no read waits on it


_deadline: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar("outbound_deadline", default=None)
_install_lock = threading.Lock()
_installed = False


def _install() -> None:
    global _installed
    with _install_lock:
        if not _installed:
            sys.addaudithook(_audit)
            _read_answers_within_limits()
            _read_smtp_replies_within_limits()
            _installed = True


def _read_answers_within_limits() -> None:
    """Every requests session made from now on reads an answer inside a deadline through `_read_answer`.

    Apprise's services call `requests.post` and friends, which read the whole body before returning
    (no `stream`), decompressed, however long. A response hook runs before that read, and requests
    gives every new session its hooks from `default_hooks()`: adding ours there reaches each service
    without touching Apprise. Outside a deadline, and for a request that streams (ours, which reads
    its own body), the hook does nothing.
    """
    import requests.sessions

    plain = requests.sessions.default_hooks

    def default_hooks() -> dict:
        hooks = plain()
        hooks["response"].append(_read_answer)
        return hooks

    requests.sessions.default_hooks = default_hooks


def _read_smtp_replies_within_limits() -> None:
    """Inside a deadline, an SMTP connection's replies are read through `_SmtpReplies`: MAX_ANSWER_BYTES in all.

    smtplib reads a reply's lines until one without "-" after its code, however many there are: a mail
    server sending "220-…" lines without end filled a worker's memory at the network's pace (443 MB in 3 s,
    tests/integration/test_outbound.py). smtplib makes its reply stream in `getreply` when it has none
    (at the first reply, and again after STARTTLS), so this `getreply` hands it a bounded one first;
    SMTP_SSL and LMTP inherit it. Outside a deadline, nothing changes.
    """
    import smtplib

    plain = smtplib.SMTP.getreply

    def getreply(self):
        deadline = _deadline.get()
        if deadline is not None and self.file is None and self.sock is not None:
            self.file = _SmtpReplies(self.sock.makefile("rb"), deadline)
        return plain(self)

    smtplib.SMTP.getreply = getreply


class _SmtpReplies:
    """One SMTP connection's replies as smtplib reads them (`readline`, `close`), refused past MAX_ANSWER_BYTES."""

    def __init__(self, file, deadline: _Deadline):
        self._file, self._deadline, self._read = file, deadline, 0

    def readline(self, size: int = -1) -> bytes:
        line = self._file.readline(size)
        self._read += len(line)
        if self._read > MAX_ANSWER_BYTES:
            self._deadline.answer_refused = f"answered with replies over {_size(MAX_ANSWER_BYTES)}"
            raise OSError(self._deadline.answer_refused)  # smtplib closes the connection: SMTPServerDisconnected
        return line

    def close(self) -> None:
        self._file.close()


def _read_answer(response: requests.Response, *, stream: bool = False, **_) -> None:
    """Read the body of an answer now, within the deadline's limits, where requests would read it whole."""
    import requests

    deadline = _deadline.get()
    if deadline is None or stream:
        return
    try:
        response._content = _body(response, deadline, MAX_ANSWER_BYTES)  # where requests keeps a body it read
    except OutboundRefused as exc:
        deadline.answer_refused = str(exc)
        raise requests.RequestException(str(exc)) from None  # what Apprise's services take for a failed request
    except requests.RequestException:
        if deadline.passed():  # the watcher cut the connection
            deadline.answer_refused = str(deadline.refusal())
        raise


def _audit(event: str, args: tuple) -> None:
    """Hand each socket connecting inside `send` or `notify` to its deadline (args: the socket, the address)."""
    if event == "socket.connect" and (deadline := _deadline.get()) is not None:
        deadline.watch(args[0])


def redact_url(url: str) -> str:
    """`url` with what may be a credential replaced by ***: user and password, path, secret query values.

    The host stays when it looks like one (it has a dot, or is an IPv6 literal), so that a person
    can still tell targets apart; Apprise's service URLs put tokens where the host goes
    (slack://TokenA/TokenB/TokenC), and those have neither.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return f"{_scheme(url)}://{REDACTED}"
    shown = host if "." in host or ":" in host else REDACTED if host else ""
    netloc = ((f"{REDACTED}@" if "@" in parts.netloc else "") + (f"[{shown}]" if ":" in shown else shown)
              + (f":{port}" if port else ""))
    path = f"/{REDACTED}" if parts.path.strip("/") else parts.path
    query = urlencode([(k, REDACTED if _SECRET_NAME.search(k) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="@*", quote_via=quote)
    return urlunsplit((parts.scheme, netloc, path, query, REDACTED if parts.fragment else ""))


def redacted(value):
    """`value` (a step's request, a plan, a report) with every URL redacted, and secret-looking headers."""
    if isinstance(value, str):
        return _URL.sub(lambda found: redact_url(found.group()), value)
    if isinstance(value, list):
        return [redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted_headers(v) if k == "headers" and isinstance(v, dict) else redacted(v)
                for k, v in value.items()}
    return value


def _redacted_headers(headers: dict) -> dict:
    return {name: REDACTED if _SECRET_NAME.search(str(name)) else redacted(v) for name, v in headers.items()}


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""
