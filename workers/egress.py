"""The outbound guard: inside `guarded(allow)`, a connection goes only to an address that was checked.

Rules are written by people who are not the operator, so a rule's URL may name any host. The check
sits where the connection is made, not in front of the call: a check before the call looks the
name up a second time (DNS rebinding) and reads the URL differently from the library that
connects (`http://127.0.0.2:80\\@allowed.example/` is "allowed.example" to urlsplit, 127.0.0.2 to
urllib3). So the guard replaces the two functions that resolve a name and connect,
`urllib3.util.connection.create_connection` (every `requests` call, Apprise's included) and
`socket.create_connection` (smtplib, for email): inside `guarded`, they resolve once, refuse unless
every answer is a public address (or the host is on OUTBOUND_ALLOW), and connect to exactly those
answers. Each hop of a redirect is a new connection, so it meets the guard too. Apprise runs its
services on threads that copy the caller's context, where the guard is found as well.

Anything else that opens a socket inside `guarded` (a transport with a resolver of its own, UDP)
is refused by an audit hook (PEP 578) unless it connects to an address the guard approved, so a
transport nobody thought of fails closed. Outside `guarded` nothing changes: the InLoox client,
Redis and RQ connect as before. The replacements are installed once per process, on first use.
"""
from __future__ import annotations

import contextvars
import functools
import ipaddress
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import urllib3.util.connection

# IPv6 ranges that carry an IPv4 address inside (NAT64, 6to4): where they lead depends on gateways
# we cannot see, so they are refused rather than judged by the address they embed.
_EMBEDDING = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"),
              ipaddress.ip_network("2002::/16"))
# Audit events of a socket reaching out (args: the socket, the address).
_REACHING = frozenset({"socket.connect", "socket.sendto", "socket.sendmsg"})


class DestinationRefused(ConnectionRefusedError):
    """The guard refused a destination. An OSError, so each library reports it as a failed connection."""


@dataclass
class Guard:
    """One guarded stretch of work: the hosts allowed to be private, what was approved, what was refused."""

    allow: frozenset[str]
    approved: set[str] = field(default_factory=set)
    refusals: list[str] = field(default_factory=list)

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`: all of its answers, once each is found acceptable."""
        name = host.strip("[]").lower()
        answers = list(dict.fromkeys(a[4][0] for a in _resolve(name, port)))
        if name not in self.allow:
            for address in answers:
                if not is_public(address):
                    raise self.refuse(f"{host} resolves to {address}, a non-public address "
                                      "(add the host to OUTBOUND_ALLOW to permit it)")
        self.approved.update(answers)
        return answers

    def refuse(self, reason: str) -> DestinationRefused:
        """Record a refusal (libraries may swallow the exception); returns the exception to raise."""
        self.refusals.append(reason)
        return DestinationRefused(reason)


def _resolve(name: str, port: int) -> list[tuple]:
    """`socket.getaddrinfo` for a stream; a name that is none (an empty label, one over 63 characters) is not found.

    Python's resolver encodes the name first and raises UnicodeError for those, which no library takes for a failed
    connection: a subscriber's host with a typo (`hooks..example.com`) crashed every delivery job (urllib3's own
    create_connection, which the guard replaces, checks this itself). As a lookup that failed, it is an OSError.
    """
    try:
        return socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM)
    except UnicodeError:
        raise socket.gaierror(socket.EAI_NONAME, f"{name} is not a host name (an empty label, or one too long)") from None


_active: contextvars.ContextVar[Guard | None] = contextvars.ContextVar("outbound_guard", default=None)
_install_lock = threading.Lock()
_installed = False


@contextmanager
def guarded(allow: frozenset[str] = frozenset()) -> Iterator[Guard]:
    """Within the block (and threads started with a copy of its context), connections are guarded."""
    _install()
    guard = Guard(frozenset(h.strip("[]").lower() for h in allow))
    token = _active.set(guard)
    try:
        yield guard
    finally:
        _active.reset(token)


def is_public(address: str) -> bool:
    """True for an ordinary public unicast address (an IPv4-mapped IPv6 one is judged by its IPv4)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast and not any(ip in net for net in _EMBEDDING)


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        urllib3.util.connection.create_connection = _guarding(urllib3.util.connection.create_connection)
        socket.create_connection = _guarding(socket.create_connection)
        sys.addaudithook(_audit)
        _installed = True


def _guarding(create_connection):
    """`create_connection`, but inside `guarded` it connects only to the guard's addresses for the host."""
    @functools.wraps(create_connection)
    def guarded_create_connection(address, *args, **kwargs):
        guard = _active.get()
        if guard is None:
            return create_connection(address, *args, **kwargs)
        host, port = address[0], address[1]
        error: OSError | None = None
        for checked in guard.addresses(host, port):
            try:
                return create_connection((checked, port), *args, **kwargs)  # a literal: no second lookup
            except OSError as exc:
                error = exc
        raise error or DestinationRefused(f"{host} has no address")
    return guarded_create_connection


def _audit(event: str, args: tuple) -> None:
    """Refuse, inside `guarded`, a socket that reaches an address the guard did not approve."""
    if event not in _REACHING:
        return
    guard = _active.get()
    if guard is None or args[1] is None:  # sendmsg on a connected socket names no address
        return
    address = args[1]
    host = address[0] if isinstance(address, tuple) else str(address)
    if host not in guard.approved:
        raise guard.refuse(f"a connection to {host} that the outbound guard did not check "
                           "(a transport with its own resolver or sockets)")
