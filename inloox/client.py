"""The InLoox OData client: the only code that speaks HTTP to InLoox.

One `requests.Session` per `Client` (pooled, thread-safe for our use), paths relative to the base URL
(Cloud `https://app.inloox.com/api/odata/`, self-hosted `https://HOST/api/v1/odata/`), the token in the
`x-api-key` header. Redirects are never followed and `@odata.nextLink` is only followed to the base
URL's own origin, because the token travels with every request. requests' exceptions are translated to
`inloox.errors` in one place, `_translated()`; the token is redacted from everything an error keeps.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterator
from urllib.parse import quote, urljoin, urlsplit

import requests
import requests.adapters
import requests.auth
import urllib3.exceptions

from inloox.errors import (
    EXCERPT_CHARS, WRITE_METHODS, HTTPStatusError, InLooxError, OutcomeUnknown, TransportError,
    UnexpectedRedirect, parse_error_body, parse_retry_after, status_error_class,
)
from inloox.metadata import Metadata, load_metadata
from inloox.query import (
    Filter, function_arguments, identifier, key_predicate, orderby_option, qualified_name, render_filter,
    select_option, top_option,
)

DEFAULT_TIMEOUT = (5.0, 30.0)  # seconds to connect, seconds to wait for each read
DEFAULT_POOL_SIZE = 10  # connections kept open: size it to the number of threads sharing the client
NAMESPACE = "Default"  # where InLoox's bound actions and functions live
REDACTED = "***"
_QUERY_SAFE = "$',():/@"  # kept readable in URLs; everything else in a value is percent-encoded

log = logging.getLogger(__name__)


class _ApiKey(requests.auth.AuthBase):
    """Puts the token in `x-api-key`; shows as `***`, refuses to be pickled, redacts it from text."""

    def __init__(self, token: str):
        if not (isinstance(token, str) and token and token.isascii() and token.isprintable()
                and token == token.strip()):
            # Checked here because requests' own header check would put the value in its message.
            raise ValueError("the InLoox token must be non-empty printable ASCII, without spaces at its ends")
        self._token = token

    def __call__(self, request):
        request.headers["x-api-key"] = self._token
        return request

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


class Client:
    """One InLoox account over OData: reads (paged lazily), writes, bound operations, typed errors."""

    def __init__(self, base_url: str, token: str, *, timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
                 pool_size: int = DEFAULT_POOL_SIZE, metadata: Metadata | None = None,
                 on_response: Callable[[str, int | None], None] | None = None,
                 throttle: Callable[[str], None] | None = None):
        """`on_response(method, status)` is called after every request (status None: no answer came).

        `throttle(method)` is called right before every request; it may sleep, or raise
        `inloox.errors.Throttled`, which then propagates with nothing sent and nothing observed.
        """
        self.base_url = _normalized_base_url(base_url)
        self.on_response = on_response
        self.throttle = throttle
        self.timeout = _checked_timeout(timeout)
        self.metadata = metadata if metadata is not None else load_metadata()
        self._api_key = _ApiKey(token)
        self._session = _new_session(self._api_key, pool_size, self.base_url)

    def __repr__(self) -> str:
        return f"<inloox.Client {self.base_url} {self._api_key!r}>"

    def __reduce__(self):
        raise TypeError("an inloox.Client cannot be pickled (it holds a token); pass its settings instead")

    def close(self) -> None:
        """Let go of the session; the pooled connections stay with the process's other clients (`_shared_adapter`)."""
        self._session.adapters.clear()
        self._session.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # Reads

    def query(self, entity_set: str, *, filter: Filter | None = None, select: list[str] | None = None,
              orderby: str | list[str] | None = None, top: int | None = None) -> Iterator[dict]:
        """Rows of `entity_set`, fetched lazily page by page through `@odata.nextLink`.

        Arguments are checked now; requests are sent as the iterator is consumed.
        """
        options = {"$filter": self._filter_text(entity_set, filter), "$select": select_option(select),
                   "$orderby": orderby_option(orderby), "$top": top_option(top)}
        return self._rows(self._url(identifier(entity_set), options), top)

    def count(self, entity_set: str, filter: Filter | None = None) -> int:
        """How many rows of `entity_set` match `filter` (the `/$count` segment)."""
        options = {"$filter": self._filter_text(entity_set, filter)}
        url = self._url(f"{identifier(entity_set)}/$count", options)
        response = self._send("GET", url)
        if not response.text.strip().isdigit():
            raise self._status_error("GET", url, response, "answered with something that is not a count")
        return int(response.text)

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

    def create(self, entity_set: str, body: dict) -> dict:
        """POST a new entity; returns it as created (with its key), or {} if InLoox sent no body."""
        return _without_context(self._json("POST", self._url(identifier(entity_set)), body) or {})

    def update(self, entity_set: str, key, changes: dict) -> dict | None:
        """PATCH only `changes` onto an entity; returns the entity if InLoox sent it back."""
        result = self._json("PATCH", self._url(self.entity_path(entity_set, key)), changes)
        return _without_context(result) if result else None

    def delete(self, entity_set: str, key) -> None:
        """DELETE an entity (InLoox also deletes its children; there is no undo)."""
        self._send("DELETE", self._url(self.entity_path(entity_set, key)))

    def action(self, entity_set: str, key, name: str, params: dict | None = None) -> Any:
        """POST a bound action (`Task(<key>)/Default.AddNote`); key None binds to the whole set.

        Returns the result's `value` when it is wrapped in one, else the body (None if empty).
        """
        url = self._url(f"{self._binding_path(entity_set, key)}/{_operation_name(name)}")
        return _unwrapped(self._json("POST", url, params or {}))

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
        while url and (limit is None or yielded < limit):
            page = self._json("GET", url)
            rows = page.get("value") if isinstance(page, dict) else None
            if not isinstance(rows, list):
                shown = self._shown(url)
                raise InLooxError(f"GET {shown}: expected a collection", method="GET", url=shown)
            for row in rows[:None if limit is None else limit - yielded]:
                yielded += 1
                yield row
            url = self._next_link(page, url)

    def _next_link(self, page: dict, current: str) -> str | None:
        link = page.get("@odata.nextLink")
        if not link:
            return None
        # Followed verbatim, as OData requires; only a relative link is resolved against the base URL.
        url = link if urlsplit(link).scheme else urljoin(self.base_url, link)
        if _origin(url) != _origin(self.base_url) or url == current:
            shown = self._shown(url)
            raise InLooxError(f"refusing to follow @odata.nextLink {shown} from {self._shown(current)}: "
                              "it leaves the InLoox base URL's origin or repeats the page",
                              method="GET", url=shown)
        return url

    def _json(self, method: str, url: str, body: dict | None = None) -> Any:
        response = self._send(method, url, body)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:  # requests' JSONDecodeError is a ValueError
            raise self._status_error(method, url, response, "answered with a body that is not JSON") from None

    def _send(self, method: str, url: str, body: dict | None = None) -> requests.Response:
        if self.throttle is not None:
            self.throttle(method)  # outside the try below: a refusal here is not a request
        shown = self._shown(url)
        started = time.monotonic()
        try:
            with _translated(method, shown, self._api_key.redact):
                response = self._session.request(method, url, json=body, timeout=self.timeout,
                                                 allow_redirects=False)
        except InLooxError:
            self._observe(method, None)
            raise
        self._observe(method, response.status_code)
        log.debug("%s %s -> %d in %.0f ms", method, shown, response.status_code,
                  (time.monotonic() - started) * 1000)
        if not 200 <= response.status_code < 300:
            raise self._status_error(method, url, response)
        return response

    def _observe(self, method: str, status: int | None) -> None:
        if self.on_response is not None:
            self.on_response(method, status)

    def _status_error(self, method: str, url: str, response: requests.Response,
                      complaint: str | None = None) -> HTTPStatusError:
        """The error for a non-2xx answer, or for a 2xx one we cannot read (`complaint`); token redacted."""
        redact, status = self._api_key.redact, response.status_code
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


@contextlib.contextmanager
def _translated(method: str, url: str, redact):
    """Turn requests' exceptions into `inloox.errors` (the one place that knows them)."""
    try:
        yield
    except requests.exceptions.RequestException as exc:
        raise _transport_error(exc, method, url, redact) from exc


# The request went out but its answer did not (fully) come back.
_ANSWER_LOST = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)


def _transport_error(exc: Exception, method: str, url: str, redact) -> InLooxError:
    detail = redact(str(exc))[:EXCERPT_CHARS]
    if _nothing_sent(exc):
        error = TransportError(f"could not connect for {method} {url}: {detail}", method=method, url=url)
        if isinstance(exc, requests.exceptions.SSLError):
            error.retryable = False  # a certificate problem does not go away by itself
        return error
    if not isinstance(exc, _ANSWER_LOST):
        return InLooxError(f"could not send {method} {url}: {detail}", method=method, url=url)
    if method in WRITE_METHODS:
        return OutcomeUnknown(f"no answer to {method} {url}, which may or may not have been applied: "
                              f"{detail}", method=method, url=url)
    return TransportError(f"no answer to {method} {url}: {detail}", method=method, url=url)


def _nothing_sent(exc: Exception) -> bool:
    """True when the request cannot have reached InLoox (connect failed), so any method may be resent."""
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError)):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(exc, requests.exceptions.ConnectionError) and isinstance(
        reason, urllib3.exceptions.ConnectTimeoutError)  # includes NewConnectionError (refused, DNS)


def _new_session(api_key: _ApiKey, pool_size: int, base_url: str) -> requests.Session:
    session = requests.Session()
    # The environment's proxy and CA settings are read once, here, not on every request (requests
    # does that by default: about a quarter of a write's CPU went to scanning os.environ).
    settings = session.merge_environment_settings(base_url, {}, None, None, None)
    session.trust_env = False
    session.proxies, session.verify, session.cert = settings["proxies"], settings["verify"], settings["cert"]
    session.auth = api_key
    session.headers.update({"Accept": "application/json", "OData-MaxVersion": "4.0"})
    adapter = _shared_adapter(pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


_adapters: dict[int, requests.adapters.HTTPAdapter] = {}
_adapters_lock = threading.Lock()
HOSTS_KEPT = 64  # connection pools kept per adapter, one per InLoox host


def _shared_adapter(pool_size: int) -> requests.adapters.HTTPAdapter:
    """The process's connection pools, shared by every client of the same pool size.

    A hosted service runs hundreds of accounts on one InLoox host: with a pool per client, a poller
    kept a connection open per workspace (1,000 idle connections from one process, and servers that
    cap connections, as waitress does at 100, made the 101st workspace wait minutes for its first
    answer). Requests carry their own account's key (the session's auth), so sharing the connections
    of one host shares nothing else.
    """
    with _adapters_lock:
        adapter = _adapters.get(pool_size)
        if adapter is None:
            # No automatic retries: retrying is the worker's decision, made from the error's class.
            adapter = requests.adapters.HTTPAdapter(pool_connections=HOSTS_KEPT, pool_maxsize=pool_size,
                                                    max_retries=0)
            _adapters[pool_size] = adapter
        return adapter


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


def _unwrapped(result: Any) -> Any:
    return result["value"] if isinstance(result, dict) and "value" in result else result
