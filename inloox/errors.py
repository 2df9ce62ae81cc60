"""What can go wrong talking to InLoox, as one tree of exceptions, and how to read an error response.

Modeled on httpx's `_exceptions.py`. Every error says what was asked (`method`, `url`) and, when a
response came back, what InLoox answered (`status`, `odata_code`, `message`). `retryable` tells the
worker whether sending the same request again is safe; `retry_after` (seconds) when InLoox said when;
`unavailable` that InLoox itself could not be reached or said it is down (no connection, 502/503/504),
which says nothing about the request: the worker does not count it as a failed attempt.
The API token never appears in any of them: the client redacts it before building one.

    InLooxError                      .method .url .status .odata_code .message .retry_after
    ├── Throttled                    our own shared rate limit said wait; nothing sent    retryable
    ├── InvalidArguments             what was asked cannot be a request (a key that is no  not retryable
    │                                GUID); nothing sent; also a ValueError
    ├── TransportError               no response (connect failure, read timeout, reset)   retryable
    │                                (unavailable: could not connect)
    │   └── OutcomeUnknown           a write was sent but no answer came back             NOT retryable
    └── HTTPStatusError              a response came back; .response_excerpt .details
        ├── UnexpectedRedirect (3xx) .location; never followed (the token must not move)  not retryable
        ├── RequestTimeout (408)     the server gave up waiting for our request           retryable
        ├── RateLimited (429)        .retry_after                                         retryable
        ├── ServerError (5xx)        retryable (and unavailable) for 502/503/504 only
        └── ClientError (4xx)                                                             not retryable
            ├── AuthError (401/403)   ├── NotFound (404)
            ├── Conflict (409/412)    └── InvalidRequest (400, OData error details)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime

EXCERPT_CHARS = 500
WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})


class InLooxError(Exception):
    """Base of every InLoox client error; `str()` is one line naming status, method and URL.

    Raised as itself for protocol surprises (a nextLink to another origin); not safe to retry.
    """

    retryable = False
    unavailable = False

    def __init__(self, text: str, *, method: str | None = None, url: str | None = None,
                 status: int | None = None, odata_code: str | None = None,
                 message: str | None = None, retry_after: float | None = None):
        super().__init__(text)
        self.method = method
        self.url = url
        self.status = status
        self.odata_code = odata_code
        self.message = message if message is not None else text
        self.retry_after = retry_after
        # How long the request took from its send (past the client's own waits: the request budget) to its
        # answer; None when no answer came. Set by the client.
        self.seconds: float | None = None


class Throttled(InLooxError):
    """Our own shared rate limit said wait, so nothing was sent; safe to retry after `retry_after` seconds.

    Raised by the client's `throttle` hook (see `workers/throttle.py`), never by InLoox: `status` is None.
    """

    retryable = True


class InvalidArguments(InLooxError, ValueError):
    """What a caller asked cannot be put into a request (a key that is no GUID, a name that is no identifier,
    a value with no OData literal), so nothing was sent; not retryable: the same arguments fail the same way.

    The values often come from outside (a webhook's body rendered into a step's key): the caller's error to
    report, as InLoox's own 400 would be. A ValueError too, for callers that check arguments so.
    """


class TransportError(InLooxError):
    """No response came back (connection refused or reset, timeout); safe to retry."""

    retryable = True


class OutcomeUnknown(TransportError):
    """A write was sent but its answer was lost (read timeout, connection dropped); NOT safe to retry.

    InLoox may or may not have applied it. The caller must check whether the write landed (read the
    entity back, or look for its idempotency marker) before sending it again.
    """

    retryable = False


class HTTPStatusError(InLooxError):
    """InLoox answered with an error (or unreadable) response; not safe to retry unless a subclass says so.

    `response_excerpt` is the start of the body and `details` its per-field errors, both redacted.
    """

    def __init__(self, text: str, *, response_excerpt: str = "", details: tuple = (), **fields):
        super().__init__(text, **fields)
        self.response_excerpt = response_excerpt
        self.details = details


class UnexpectedRedirect(HTTPStatusError):
    """A 3xx answer, naming `location`; never followed (the token would travel along); not retryable."""

    def __init__(self, text: str, *, location: str | None = None, **fields):
        super().__init__(text, **fields)
        self.location = location


class RequestTimeout(HTTPStatusError):
    """408: the server gave up waiting for the request, so it did nothing; safe to retry."""

    retryable = True


class RateLimited(HTTPStatusError):
    """429: too many requests; safe to retry after `retry_after` seconds (None if not given)."""

    retryable = True


class ServerError(HTTPStatusError):
    """5xx. 502/503/504 are safe to retry; other 5xx (500…) may have half-happened, so are not."""

    @property
    def retryable(self) -> bool:
        return self.status in (502, 503, 504)

    @property
    def unavailable(self) -> bool:
        return self.retryable


class ClientError(HTTPStatusError):
    """4xx: the request itself is wrong or not allowed; not retryable, it would get the same answer."""


class AuthError(ClientError):
    """401/403: the token is missing, wrong, revoked, or its user may not do this."""


class NotFound(ClientError):
    """404: no such entity set, entity or operation."""


class Conflict(ClientError):
    """409/412: the entity's state forbids the change."""


class InvalidRequest(ClientError):
    """400: InLoox rejected the request; `odata_code`, `message` and `details` say why."""


_BY_STATUS = {400: InvalidRequest, 401: AuthError, 403: AuthError, 404: NotFound,
              408: RequestTimeout, 409: Conflict, 412: Conflict, 429: RateLimited}
_BY_CLASS = {3: UnexpectedRedirect, 4: ClientError, 5: ServerError}


def status_error_class(status: int) -> type[HTTPStatusError]:
    """The most specific error class for an HTTP status."""
    return _BY_STATUS.get(status) or _BY_CLASS.get(status // 100, HTTPStatusError)


@dataclass(frozen=True)
class ErrorBody:
    """What an error response body says: code (OData only), message and per-field details."""

    code: str | None = None
    message: str | None = None
    details: tuple[dict, ...] = field(default=())


def parse_error_body(text: str) -> ErrorBody:
    """Read an OData error, an RFC 7807 problem, or plain text; never raises."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return ErrorBody(message=_first_line(text))
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return _odata_error(body["error"])
    if isinstance(body, dict) and ("title" in body or "detail" in body):
        return _problem(body)
    return ErrorBody(message=_first_line(text))


def _odata_error(error: dict) -> ErrorBody:
    message = error.get("message")
    if isinstance(message, dict):  # OData v3 shape: {"lang": "en-US", "value": "…"}
        message = message.get("value")
    details = tuple(
        {"code": d.get("code"), "message": d.get("message"), "target": d.get("target")}
        for d in error.get("details") or () if isinstance(d, dict)
    )
    code = error.get("code")
    return ErrorBody(str(code) if code else None, _text_or_none(message), details)


def _problem(body: dict) -> ErrorBody:
    details = tuple(
        {"code": None, "message": str(msg), "target": target}
        for target, messages in (body.get("errors") or {}).items()
        for msg in (messages if isinstance(messages, list) else [messages])
    ) if isinstance(body.get("errors"), dict) else ()
    message = _text_or_none(body.get("detail")) or _text_or_none(body.get("title"))
    if details:
        listed = "; ".join(f"{d['target']}: {d['message']}" for d in details)
        message = f"{message}: {listed}" if message else listed
    return ErrorBody(None, message, details)


def _text_or_none(value) -> str | None:
    return str(value) if value not in (None, "") else None


def _first_line(text: str) -> str | None:
    stripped = text.strip()
    return stripped.splitlines()[0][:EXCERPT_CHARS] if stripped else None


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        return _seconds_until(value, now)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _seconds_until(http_date: str, now: datetime) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        return None
    return max(0.0, (when - now).total_seconds())
