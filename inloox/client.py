"""The InLoox OData client: the only code that speaks HTTP to InLoox.

Requests go out through urllib3 directly, not `requests`: a poller of 1,000 idle workspaces sends ~60
GETs a second, and `requests.Session.request` (preparing, merging settings, hooks, adapters) was a
third of its CPU. Connections are shared per process, through the environment's proxy if it names
one (`inloox.connections`); paths are relative to the base URL (Cloud `https://app.inloox.com/api/odata/`,
self-hosted `https://HOST/api/v1/odata/`), the token is in the `x-api-key` header. Redirects are never
followed and `@odata.nextLink` is only followed to the base URL's own origin, because the token travels
with every request; nothing is retried automatically (the worker decides from the error's class).
urllib3's exceptions are translated to `inloox.errors` in one place, `_translated()`; the token is
redacted from everything an error keeps.
"""
from __future__ import annotations

import codecs
import contextlib
import functools
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import quote, urljoin, urlsplit

import urllib3
import urllib3.exceptions

from inloox import awaited, deadlines, together
from inloox.connections import exchanges, route_of, shared_pool
from inloox.errors import (
    EXCERPT_CHARS, WRITE_METHODS, HTTPStatusError, InLooxError, InvalidArguments, OutcomeUnknown, TransportError,
    UnexpectedRedirect, parse_error_body, parse_retry_after, status_error_class,
)
from inloox.metadata import EntitySet, Metadata, load_metadata
from inloox.query import (
    Filter, function_arguments, identifier, key_predicate, orderby_option, qualified_name, render_filter,
    select_option, top_option,
)

DEFAULT_TIMEOUT = (5.0, 30.0)  # seconds to connect; seconds for a whole answer (each read within it)
# An answer's body is read up to this size, decompressed. A workspace's InLoox URL may be a server its
# customer runs (self-hosted InLoox) and one worker process serves many workspaces: an answer of a few
# megabytes of gzip that inflate to gigabytes would otherwise take that process, and every customer on
# it, down. A page of 100 rows is a few hundred kilobytes; many threads may each hold this much at once.
MAX_ANSWER_BYTES = 8 * 1024 * 1024
# Pages one query follows through @odata.nextLink: 1,000,000 rows at InLoox's 100 a page, ten times a
# large account's whole task list (100,000 tasks: the 1,000 pages a baseline, sweep or scan reads).
# A server whose every page links to one never read before (a skiptoken counting up) would otherwise
# hold the reading thread for good, and a poll that keeps its rows would grow until its process died.
MAX_PAGES = 10_000
_READ_CHUNK = 256 * 1024  # decompressed bytes per read: urllib3's decoders inflate no more than asked
DEFAULT_POOL_SIZE = 10  # connections kept open: size it to the number of threads sharing the client
NAMESPACE = "Default"  # where InLoox's bound actions and functions live
REDACTED = "***"
_QUERY_SAFE = "$',():/@"  # kept readable in URLs; everything else in a value is percent-encoded
# What every request says besides its key; compressed answers as requests asked for them (a poll's
# baseline reads every row of a set).
_READ_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0",
                 "Accept-Encoding": urllib3.util.make_headers(accept_encoding=True)["accept-encoding"]}
_WRITE_HEADERS = {**_READ_HEADERS, "Content-Type": "application/json"}

log = logging.getLogger(__name__)


class _ApiKey:
    """Puts the token in `x-api-key`; shows as `***`, refuses to be pickled, redacts it from text."""

    def __init__(self, token: str):
        if not (isinstance(token, str) and token and token.isascii() and token.isprintable()
                and token == token.strip()):
            # Checked here because a header check further down would put the value in its message.
            raise ValueError("the InLoox token must be non-empty printable ASCII, without spaces at its ends")
        self._token = token

    def headers(self, others: Mapping[str, str]) -> dict[str, str]:
        """`others` plus the key, as a new dict for one request."""
        return {**others, "x-api-key": self._token}

    def __repr__(self) -> str:
        return f"x-api-key={REDACTED}"

    def __reduce__(self):
        raise TypeError("the InLoox token cannot be pickled")

    def redact(self, text: str | None) -> str | None:
        """`text` with every occurrence of the token (plain or URL-encoded) replaced by `***`."""
        if not text:
            return text
        for form in {self._token, quote(self._token, safe="")}:
            text = text.replace(form, REDACTED)
        return text


@dataclass(frozen=True)
class _Answer:
    """What InLoox answered to one request: its status line, headers and whole body (already read)."""

    status: int
    reason: str
    headers: Mapping[str, str]  # urllib3's HTTPHeaderDict: names are case-insensitive
    body: bytes

    @cached_property
    def text(self) -> str:
        """The body decoded by its declared charset (UTF-8 when none or an unknown one), never raising."""
        return self.body.decode(_charset(self.headers.get("Content-Type", "")), errors="replace")


def _checked_arguments(request: Callable) -> Callable:
    """A request method whose arguments cannot make a request (query.py's ValueError: a key that is no GUID,
    a field that is no identifier) raises InvalidArguments, an InLooxError, before anything is sent.

    Such values often come from outside (a webhook's body in a step's key): a step that met a plain ValueError
    caught none of it, and its run stayed queued while its event was handled again and again.
    """
    @functools.wraps(request)
    def checked(self, *args, **kwargs):
        try:
            return request(self, *args, **kwargs)
        except InLooxError:
            raise
        except ValueError as exc:  # only the arguments' checks raise it: answers become InLooxErrors
            raise InvalidArguments(f"{request.__name__} not sent: {str(exc)[:EXCERPT_CHARS]}") from exc
    return checked


class Client:
    """One InLoox account over OData: reads (paged lazily), writes, bound operations, typed errors."""

    def __init__(self, base_url: str, token: str, *, timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
                 pool_size: int = DEFAULT_POOL_SIZE, metadata: Metadata | None = None,
                 on_response: Callable[[str, int | None], None] | None = None,
                 throttle: Callable[[str], None] | None = None,
                 on_received: Callable[[int], None] | None = None,
                 parse: Callable[[str], Any] = json.loads, max_pages: int = MAX_PAGES):
        """`on_response(method, status)` is called after every request (status None: no answer came).

        `throttle(method)` is called right before every request; it may sleep, or raise
        `inloox.errors.Throttled`, which then propagates with nothing sent and nothing observed.
        `on_received(size)` is called with the size in bytes of every answer's body (decompressed).
        `parse(text)` turns an answer's text into data; a ValueError from it (its message is kept) makes the
        answer one that is not JSON. The workers pass `engine.bodies`' parser, which holds an answer to
        the limits a webhook's body meets (depth, lone surrogates); the engine is not this package's to import.
        `max_pages`: how many pages one query follows before it raises InLooxError.
        """
        self.base_url = _normalized_base_url(base_url)
        self.on_response = on_response
        self.throttle = throttle
        self.on_received = on_received
        self._parse = parse
        self.max_pages = max_pages
        self.timeout = _checked_timeout(timeout)
        self.metadata = metadata if metadata is not None else load_metadata()
        self._api_key = _ApiKey(token)
        # The whole answer within the read timeout (a run's lease counts on it): `total` makes urllib3 wait
        # no longer than that for each read of the status line and headers, `deadlines` cuts them off when
        # it has passed, and `_body` reads the rest within what is then left.
        self._urllib3_timeout = urllib3.Timeout(connect=self.timeout[0], read=self.timeout[1], total=self.timeout[1])
        self._route = route_of(self.base_url)  # the environment, read once per client
        self._pool_size = pool_size
        self._pool: urllib3.PoolManager | None = None  # taken on the first request (see `_connections`)
        self._closed = False

    def __repr__(self) -> str:
        return f"<inloox.Client {self.base_url} {self._api_key!r}>"

    def __reduce__(self):
        raise TypeError("an inloox.Client cannot be pickled (it holds a token); pass its settings instead")

    def close(self) -> None:
        """Send nothing more; the pooled connections stay with the process's other clients (`shared_pool`)."""
        self._closed = True
        self._pool = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # Reads

    @_checked_arguments
    def query(self, entity_set: str, *, filter: Filter | None = None, select: list[str] | None = None,
              orderby: str | list[str] | None = None, top: int | None = None) -> Iterator[dict]:
        """Rows of `entity_set`, fetched lazily page by page through `@odata.nextLink`.

        Arguments are checked now; requests are sent as the iterator is consumed.
        """
        options = {"$filter": self._filter_text(entity_set, filter), "$select": select_option(select),
                   "$orderby": orderby_option(orderby), "$top": top_option(top)}
        return self._rows(self._url(identifier(entity_set), options), top)

    @_checked_arguments
    def count(self, entity_set: str, filter: Filter | None = None) -> int:
        """How many rows of `entity_set` match `filter` (the `/$count` segment)."""
        options = {"$filter": self._filter_text(entity_set, filter)}
        url = self._url(f"{identifier(entity_set)}/$count", options)
        response = self._send("GET", url)
        if not response.text.strip().isdigit():
            raise self._status_error("GET", url, response, "answered with something that is not a count")
        return int(response.text)

    @_checked_arguments
    def get(self, entity_set: str, key, *, select: list[str] | None = None) -> dict:
        """One entity by key; raises NotFound if there is none."""
        url = self._url(self.entity_path(entity_set, key), {"$select": select_option(select)})
        return _without_context(self._json("GET", url))

    def me(self) -> dict:
        """The user the token belongs to (`UserInfo/Me()`)."""
        url = self._url("UserInfo/Me()")
        result = _unwrapped(self._json("GET", url))  # Me() is declared to return a collection of one
        user = result[0] if isinstance(result, list) and result else result
        if not isinstance(user, dict):
            raise InLooxError(f"GET {self._shown(url)} returned no user", method="GET", url=self._shown(url))
        return _without_context(user)

    # Writes

    @_checked_arguments
    def create(self, entity_set: str, body: dict) -> dict:
        """POST a new entity; returns it as created, with its key.

        An answer that is not that entity (an empty body, an OData error inside a 201) says nothing of whether
        InLoox created it: OutcomeUnknown, as for a lost answer, so that the caller looks before sending again.
        """
        url = self._url(identifier(entity_set))
        created = _without_context(self._json("POST", url, body))
        if not _is_entity(created, self.metadata.entity_set(identifier(entity_set))):
            shown = self._shown(url)
            raise OutcomeUnknown(f"the answer to POST {shown} is not the created {entity_set}, which may or may not "
                                 f"have been created: {self._api_key.redact(repr(created))[:EXCERPT_CHARS]}",
                                 method="POST", url=shown)
        return created

    @_checked_arguments
    def update(self, entity_set: str, key, changes: dict) -> dict | None:
        """PATCH only `changes` onto an entity; returns the entity if InLoox sent it back."""
        result = self._json("PATCH", self._url(self.entity_path(entity_set, key)), changes)
        return _without_context(result) if result else None

    @_checked_arguments
    def delete(self, entity_set: str, key) -> None:
        """DELETE an entity (InLoox also deletes its children; there is no undo)."""
        self._send("DELETE", self._url(self.entity_path(entity_set, key)))

    @_checked_arguments
    def action(self, entity_set: str, key, name: str, params: dict | None = None) -> Any:
        """POST a bound action (`Task(<key>)/Default.AddNote`); key None binds to the whole set.

        Returns the result's `value` when it is wrapped in one, else the body (None if empty).
        """
        url = self._url(f"{self._binding_path(entity_set, key)}/{_operation_name(name)}")
        return _unwrapped(self._json("POST", url, params or {}))

    @_checked_arguments
    def function(self, entity_set: str, key, name: str, params: dict | None = None) -> Any:
        """GET a bound function (`Project(<key>)/Default.CopyProject()`); returns as `action()` does."""
        operation = self.metadata.operation(entity_set, name, collection=key is None)
        arguments = function_arguments(params or {}, operation.parameters if operation else ())
        url = self._url(f"{self._binding_path(entity_set, key)}/{_operation_name(name)}({arguments})")
        return _unwrapped(self._json("GET", url))

    # Keys and URLs

    def entity_path(self, entity_set: str, key) -> str:
        """`Task(<guid>)` or `CustomField(Name='…',ObjectId=<guid>)`, keys typed by the schema."""
        return f"{entity_set}({key_predicate(key, self.metadata.entity_set(identifier(entity_set)))})"

    def _binding_path(self, entity_set: str, key) -> str:
        return identifier(entity_set) if key is None else self.entity_path(entity_set, key)

    def _filter_text(self, entity_set: str, expr: Filter | None) -> str | None:
        return None if expr is None else render_filter(expr, self.metadata.entity_set(entity_set))

    def _url(self, path: str, options: dict | None = None) -> str:
        query = "&".join(f"{name}={quote(value, safe=_QUERY_SAFE)}"
                         for name, value in (options or {}).items() if value is not None)
        return self.base_url + path + (f"?{query}" if query else "")

    # Sending

    def _rows(self, url: str, limit: int | None) -> Iterator[dict]:
        yielded = 0
        read = set()  # every page's URL so far: a link back to any of them would page in a circle forever
        while url and (limit is None or yielded < limit):
            page = self._json("GET", url)
            read.add(url)
            rows = page.get("value") if isinstance(page, dict) else None
            # Every row an object: what reads a row takes it for an entity (a create's marker lookup adopts it as
            # the created one, for_each binds it as `item`), and a string there broke the batch it ran in.
            if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
                shown = self._shown(url)
                raise InLooxError(f"GET {shown}: expected a collection of entities, got "
                                  f"{self._api_key.redact(repr(rows))[:EXCERPT_CHARS]}", method="GET", url=shown)
            for row in rows[:None if limit is None else limit - yielded]:
                yielded += 1
                yield row
            url = self._next_link(page, url, read)

    def _next_link(self, page: dict, current: str, read: set[str]) -> str | None:
        link = page.get("@odata.nextLink")
        if not link:
            return None
        if len(read) >= self.max_pages:
            shown = self._shown(current)
            raise InLooxError(f"refusing to follow @odata.nextLink from {shown}: the answer runs to more than "
                              f"{self.max_pages} pages", method="GET", url=shown)
        # Followed verbatim, as OData requires; only a relative link is resolved against the base URL.
        url = link if urlsplit(link).scheme else urljoin(self.base_url, link)
        if _origin(url) != _origin(self.base_url) or url in read:
            shown = self._shown(url)
            raise InLooxError(f"refusing to follow @odata.nextLink {shown} from {self._shown(current)}: "
                              "it leaves the InLoox base URL's origin or repeats a page already read",
                              method="GET", url=shown)
        return url

    def _json(self, method: str, url: str, body: dict | None = None) -> Any:
        response = self._send(method, url, body)
        if response.status == 204 or not response.body:
            return None
        try:
            return self._parse(response.text)
        except RecursionError:  # nested deeper than the parser goes
            complaint = "answered with a body that is not JSON"
        except ValueError as exc:
            complaint = f"answered with a body that is not JSON: {exc}"
        raise self._unreadable(method, url, response, complaint)

    def _unreadable(self, method: str, url: str, response: _Answer, complaint: str) -> InLooxError:
        """The error for a 2xx answer we cannot read. To a write it is as good as lost (OutcomeUnknown): InLoox
        said it did something, not what, and the caller must look before sending it again."""
        if method not in WRITE_METHODS:
            return self._status_error(method, url, response, complaint)
        shown, redact = self._shown(url), self._api_key.redact
        return OutcomeUnknown(redact(f"{response.status} {response.reason} from {method} {url}: {complaint}; it may "
                                     "or may not have been applied"), method=method, url=shown)

    def _send(self, method: str, url: str, body: dict | None = None) -> _Answer:
        shown = self._shown(url)
        payload = _encoded(body, method, shown)  # before the throttle: a body we refuse is no request
        awaiting = self._route.proxy is None and together.awaiting()
        if awaiting:
            awaited.ready(self._route)  # before the throttle too: a slot taken is sent at once
        if self.throttle is not None:
            self.throttle(method)  # outside the try below: a refusal here is not a request
        started = time.monotonic()
        headers = self._api_key.headers(_READ_HEADERS if payload is None else _WRITE_HEADERS)
        try:
            with _translated(method, shown, self._api_key.redact):
                if awaiting:
                    answer, whole = self._awaited(method, url, payload, headers, started)
                else:
                    # Run together through a proxy: urllib3 on a thread of its own (together.blocking), so that a
                    # slow proxy or InLoox holds up none of the batch's other calls; else here, as always.
                    answer, whole = together.blocking(lambda: self._exchange(method, url, payload, headers, started))
        except InLooxError:
            self._observe(method, None)
            raise
        self._observe(method, answer.status)
        if self.on_received is not None:
            self.on_received(len(answer.body))
        log.debug("%s %s -> %d in %.0f ms", method, shown, answer.status, (time.monotonic() - started) * 1000)
        if not whole:
            # Not retryable, whatever the status: the same request would be answered the same way. But a 2xx to a
            # write says InLoox did something, not what: as good as lost (OutcomeUnknown), as an unreadable one is.
            complaint = f"answered with a body over {MAX_ANSWER_BYTES} bytes (decompressed), which is not read"
            if 200 <= answer.status < 300:
                raise _took(self._unreadable(method, url, answer, complaint), started)
            raise _took(self._status_error(method, url, answer, complaint), started)
        if not 200 <= answer.status < 300:
            raise _took(self._status_error(method, url, answer), started)
        return answer

    def _exchange(self, method: str, url: str, payload: bytes | None, headers: dict,
                  started: float) -> tuple[_Answer, bool]:
        """The request through urllib3 on this thread: its answer, and whether its body is whole."""
        # exchange(): the whole answer is read inside it
        with exchanges.exchange(), deadlines.until(started + self.timeout[1]):
            response = self._connections().urlopen(
                method, url, body=payload, headers=headers, timeout=self._urllib3_timeout, retries=False,
                redirect=False, preload_content=False)
            content, whole = _body(response, started, self.timeout[1])
        return _Answer(response.status, response.reason or "", response.headers, content), whole

    def _awaited(self, method: str, url: str, payload: bytes | None, headers: dict,
                 started: float) -> tuple[_Answer, bool]:
        """The request awaited on this thread's loop, beside the other calls run together (inloox/together.py)."""
        status, reason, answer_headers, content, whole = together.wait_for(awaited.exchange(
            method, url, payload, headers, self._route, self.timeout, most=MAX_ANSWER_BYTES, chunk=_READ_CHUNK))
        return _Answer(status, reason, answer_headers, content if whole else content[:EXCERPT_CHARS]), whole

    def _connections(self) -> urllib3.PoolManager:
        """The process's shared pool for this client's route, taken on first use (`shared_pool`).

        Taken here rather than in `__init__` so that a proxy setting urllib3 cannot use fails each
        request with "could not send", as it did with requests, instead of failing the client's creation.
        """
        if self._closed:
            raise InLooxError("could not send: the InLoox client is closed")
        if self._pool is None:
            self._pool = shared_pool(self._pool_size, self._route)
        return self._pool

    def _observe(self, method: str, status: int | None) -> None:
        if self.on_response is not None:
            self.on_response(method, status)

    def _status_error(self, method: str, url: str, response: _Answer,
                      complaint: str | None = None) -> HTTPStatusError:
        """The error for a non-2xx answer, or for a 2xx one we cannot read (`complaint`); token redacted."""
        redact, status = self._api_key.redact, response.status
        parsed = parse_error_body(response.text)
        cls = HTTPStatusError if complaint else status_error_class(status)
        extra = {"location": redact(response.headers.get("Location"))} if cls is UnexpectedRedirect else {}
        if extra:
            complaint = f"redirects are not followed (Location: {extra['location']})"
        message = redact(complaint or parsed.message or response.reason or "")
        return cls(
            redact(f"{status} {response.reason} from {method} {url}: {message}"),
            method=method, url=redact(url), status=status, odata_code=redact(parsed.code), message=message,
            response_excerpt=redact(response.text)[:EXCERPT_CHARS],
            details=tuple({k: redact(v) for k, v in d.items()} for d in parsed.details),
            retry_after=parse_retry_after(response.headers.get("Retry-After"), datetime.now(timezone.utc)),
            **extra,
        )

    def _shown(self, url: str) -> str:
        return self._api_key.redact(url)


def _encoded(body: dict | None, method: str, url: str) -> bytes | None:
    """`body` as JSON bytes; NaN and Infinity are refused (they are not JSON) before anything is sent."""
    if body is None:
        return None
    try:
        return json.dumps(body, allow_nan=False).encode()
    except ValueError as exc:
        raise InLooxError(f"could not send {method} {url}: {exc}", method=method, url=url) from exc


@contextlib.contextmanager
def _translated(method: str, url: str, redact):
    """Turn urllib3's exceptions into `inloox.errors` (the one place that knows them)."""
    try:
        yield
    except (urllib3.exceptions.HTTPError, awaited.NothingSent, awaited.AnswerLost) as exc:
        raise _transport_error(exc, method, url, redact) from exc


# With retries=False urllib3 raises the original error, never MaxRetryError. The transport never sends
# a request twice: a write whose answer was lost is an OutcomeUnknown, which the run settles by looking
# for its write in InLoox. (libcurl, for one, resends a POST when a reused keep-alive connection closes
# without an answer, and returns the second answer as the only one: bench/RESULTS.md section 24.)
# Nothing reached InLoox: the connection (or the one to the proxy, or TLS) could not be set up.
_NOTHING_SENT = (urllib3.exceptions.ConnectTimeoutError,  # includes NewConnectionError: refused, DNS
                 urllib3.exceptions.ProxyError, urllib3.exceptions.SSLError, awaited.NothingSent)
# The request went out but its answer did not (fully) come back: read timeout, reset or aborted
# connection (ProtocolError), a body cut short or that does not decompress.
_ANSWER_LOST = (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ProtocolError,
                urllib3.exceptions.IncompleteRead, urllib3.exceptions.InvalidChunkLength,
                urllib3.exceptions.DecodeError, awaited.AnswerLost)


def _transport_error(exc: Exception, method: str, url: str, redact) -> InLooxError:
    detail = redact(str(exc))[:EXCERPT_CHARS]
    if _nothing_sent(exc):
        error = TransportError(f"could not connect for {method} {url}: {detail}", method=method, url=url)
        if isinstance(exc, urllib3.exceptions.SSLError) or getattr(exc, "certificate", False):
            error.retryable = False  # a certificate problem does not go away by itself
        else:
            error.unavailable = True  # InLoox (or the way to it) is down, whatever the request
        return error
    if not isinstance(exc, _ANSWER_LOST):
        return InLooxError(f"could not send {method} {url}: {detail}", method=method, url=url)
    if method in WRITE_METHODS:
        return OutcomeUnknown(f"no answer to {method} {url}, which may or may not have been applied: "
                              f"{detail}", method=method, url=url)
    return TransportError(f"no answer to {method} {url}: {detail}", method=method, url=url)


def _body(response: urllib3.BaseHTTPResponse, started: float, seconds: float) -> tuple[bytes, bool]:
    """The answer's body, decompressed, and whether it is whole: read up to MAX_ANSWER_BYTES, all within
    `seconds` of `started` (time.monotonic()), else a lost answer (ProtocolError).

    urllib3's own read timeout is for each read of the socket, so a server sending a byte every few
    seconds held a thread (and a run past its lease) for as long as it liked; each read here may only
    wait for what is left. An answer cut short is closed with its connection, not pooled half read.
    """
    parts, size, deadline = [], 0, started + seconds
    plain = "Content-Encoding" not in response.headers  # else the decoder may still hold some of it
    try:
        while True:
            connection = response.connection  # None once the whole answer is read and the connection pooled
            if connection is not None and connection.sock is not None:  # more to read from the socket
                left = deadline - time.monotonic()
                if left <= 0:
                    raise urllib3.exceptions.ProtocolError(f"the answer did not end within {seconds:g} s")
                connection.sock.settimeout(left)
            try:
                chunk = response.read1(_READ_CHUNK)  # at most one read of the socket
            except urllib3.exceptions.ReadTimeoutError:
                raise urllib3.exceptions.ProtocolError(f"the answer did not end within {seconds:g} s") from None
            if not chunk:
                return b"".join(parts), True
            size += len(chunk)
            parts.append(chunk)
            if size > MAX_ANSWER_BYTES:
                response.close()
                response.release_conn()
                return b"".join(parts)[:EXCERPT_CHARS], False
            if plain and len(chunk) < _READ_CHUNK and response.connection is None:
                # The answer ended in this read (its connection went back to the pool) and nothing is left
                # to decompress: most answers, spared the read that would say so (~10 us a request).
                return chunk if len(parts) == 1 else b"".join(parts), True
    except BaseException:
        response.close()
        response.release_conn()
        raise


def _nothing_sent(exc: Exception) -> bool:
    """True when the request cannot have reached InLoox (connect failed), so any method may be resent."""
    return isinstance(exc, _NOTHING_SENT)


def _charset(content_type: str) -> str:
    """The charset a Content-Type declares, if Python knows it; else UTF-8 (what JSON must be)."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            with contextlib.suppress(LookupError):
                return codecs.lookup(value.strip().strip("\"'")).name
    return "utf-8"


def _normalized_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment \
            or parts.username or parts.password:
        raise ValueError(f"not an InLoox OData base URL: {base_url!r} (e.g. https://app.inloox.com/api/odata/)")
    return base_url if base_url.endswith("/") else base_url + "/"


def _origin(url: str) -> tuple:
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        port = None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def _checked_timeout(timeout) -> tuple[float, float]:
    pair = (timeout, timeout) if isinstance(timeout, (int, float)) else tuple(timeout)
    if len(pair) != 2 or not all(isinstance(t, (int, float)) and t > 0 for t in pair):
        raise ValueError(f"timeout must be seconds > 0 or a (connect, read) pair, not {timeout!r}")
    return float(pair[0]), float(pair[1])


def _operation_name(name: str) -> str:
    name = qualified_name(name)
    return name if "." in name else f"{NAMESPACE}.{name}"


def _without_context(entity: Any) -> Any:
    if isinstance(entity, dict):
        entity.pop("@odata.context", None)
    return entity


def _is_entity(answer: Any, entity_set: EntitySet | None) -> bool:
    """True when `answer` is an entity of `entity_set` (if the schema knows the set): an object with its key."""
    keys = entity_set.key if entity_set is not None else ()
    return isinstance(answer, dict) and all(answer.get(name) not in (None, "") for name in keys)


def _unwrapped(result: Any) -> Any:
    return result["value"] if isinstance(result, dict) and "value" in result else result


def _took(error: InLooxError, started: float) -> InLooxError:
    """`error` with the time its request took from its send to its answer (a slow 503 is read as a router's)."""
    error.seconds = time.monotonic() - started
    return error
