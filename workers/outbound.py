"""Requests to the world outside InLoox (notifications, `http` steps, chat replies), through the outbound guard.

A rule may send to any URL its author writes, so every request is made inside `egress.guarded`:
each connection, Apprise's and each redirect hop included, goes only to public addresses unless
its host is on OUTBOUND_ALLOW (for local development and tests). `http` steps never follow
redirects; Apprise services may, through the guard. Notification URLs carry their service's
credentials: messages name a URL only through `redact_url`, and `redacted` cleans what is shown.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from engine.actions import UNGUARDED_NOTIFY_SCHEMES
from workers import egress

if TYPE_CHECKING:
    import requests

REDACTED = "***"
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
    with egress.guarded(policy.allow) as guard:
        delivered = sender.notify(body=text, title=title or "", timeout=policy.timeout)
    if guard.refusals:  # Apprise reports a refused connection only as "not delivered"
        raise OutboundRefused(f"refused: {guard.refusals[0]}")
    if not delivered:
        raise OutboundRefused(f"the {type(service).__name__} notification was not delivered")


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
    except ValueError:
        content = response.text[:10_000]
    return {"status": response.status_code, "body": content}


def send(policy: OutboundPolicy, method: str, url: str, **kwargs) -> requests.Response:
    """One HTTP request through the outbound guard, redirects not followed, whatever its status.

    Raises OutboundRefused when there is no answer: `refused` when the guard stopped the connection.
    """
    import requests  # here, not at the top: most processes never send one, and it costs each ~4 MB

    with egress.guarded(policy.allow) as guard:
        try:
            return requests.request(method, url, timeout=policy.timeout, allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            if guard.refusals:
                raise OutboundRefused(f"refused: {guard.refusals[0]}", refused=True) from exc
            raise OutboundRefused(f"failed: {type(exc).__name__}") from exc


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
