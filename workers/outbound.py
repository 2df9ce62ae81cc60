"""Requests to the world outside InLoox (notifications, `http` steps), with the SSRF guard on them.

A rule may send to any URL its author writes, so each destination must resolve to public
addresses, unless its host is on OUTBOUND_ALLOW (for local development and tests). Redirects
are never followed: a public host could otherwise bounce us to 169.254.169.254 or localhost.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

# Apprise services whose host the rule author chooses; every other Apprise service posts to the
# service's own fixed host (hooks.slack.com, …), so the URL's "host" part is a token there.
_HOSTED_SCHEMES = {"json", "jsons", "xml", "xmls", "form", "forms", "http", "https"}


class OutboundRefused(Exception):
    """The destination is not allowed (private address, unknown scheme) or did not answer well."""


@dataclass(frozen=True)
class OutboundPolicy:
    """Hosts that may be private (exact host names or IP literals), and the request timeout."""

    allow: frozenset[str] = frozenset()
    timeout: float = 10.0

    @classmethod
    def from_setting(cls, hosts: str, timeout: float = 10.0) -> "OutboundPolicy":
        """From a comma-separated OUTBOUND_ALLOW value."""
        return cls(frozenset(h.strip().lower() for h in hosts.split(",") if h.strip()), timeout)

    def check_host(self, host: str | None) -> None:
        """Raise OutboundRefused unless `host` is allowed or resolves only to public addresses."""
        if not host:
            raise OutboundRefused("the URL has no host")
        if host.lower() in self.allow:
            return
        for address in _addresses(host):
            if not ipaddress.ip_address(address).is_global:
                raise OutboundRefused(f"{host} resolves to {address}, a non-public address "
                                      "(add the host to OUTBOUND_ALLOW to permit it)")


def _addresses(host: str) -> Iterable[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise OutboundRefused(f"cannot resolve {host}: {exc}") from exc


def notify(policy: OutboundPolicy, url: str, text: str, title: str = "") -> None:
    """Send one notification through Apprise (Slack, Teams, email, JSON webhook …)."""
    import apprise  # here, not at the top: only a worker sending a notification needs it (~25 MB)

    sender = apprise.Apprise()
    if not sender.add(url):
        raise OutboundRefused(f"not a notification URL Apprise knows: {_scheme(url)}://…")
    service = next(iter(sender))
    if _scheme(url) in _HOSTED_SCHEMES:
        policy.check_host(getattr(service, "host", None))
    if not sender.notify(body=text, title=title or "", timeout=policy.timeout):
        raise OutboundRefused(f"the {type(service).__name__} notification was not delivered")


def http(policy: OutboundPolicy, method: str, url: str, *, headers: dict | None = None, body=None) -> dict:
    """Send one HTTP request; returns status and (JSON or text) body. Raises for 4xx/5xx."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise OutboundRefused(f"only http and https URLs may be called, not {parts.scheme!r}")
    policy.check_host(parts.hostname)
    try:
        response = requests.request(method, url, headers=headers or {}, json=body, timeout=policy.timeout,
                                    allow_redirects=False)
    except requests.RequestException as exc:
        raise OutboundRefused(f"{method} {parts.scheme}://{parts.hostname}… failed: {type(exc).__name__}") from exc
    if response.status_code >= 300:
        raise OutboundRefused(f"{method} {parts.scheme}://{parts.hostname}… answered {response.status_code}")
    try:
        content = response.json()
    except ValueError:
        content = response.text[:10_000]
    return {"status": response.status_code, "body": content}


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""
