"""The outbound guard's judgement of addresses, and its refusals before any packet is sent."""
from __future__ import annotations

import socket

import pytest

from workers import egress


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.0.0.2", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.1", "255.255.255.255", "192.0.2.1", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
    "::ffff:127.0.0.2", "::ffff:10.0.0.1", "64:ff9b::7f00:2", "2002:7f00:2::1", "2001:db8::1", "not an address",
])
def test_private_loopback_link_local_and_embedding_addresses_are_not_public(address):
    assert not egress.is_public(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:93.184.216.34"])
def test_public_addresses_are_public(address):
    assert egress.is_public(address)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "localhost", "[::1]", "0.0.0.0"])
def test_a_connection_to_a_private_host_is_refused_before_it_is_made(host):
    with egress.guarded() as guard, pytest.raises(egress.DestinationRefused, match="a non-public address"):
        socket.create_connection((host, 9), timeout=1)
    assert len(guard.refusals) == 1 and not guard.approved


def test_a_host_on_the_allow_list_is_approved_with_what_it_resolves_to():
    with egress.guarded(frozenset({"localhost"})) as guard:
        assert guard.addresses("localhost", 9) and guard.approved <= {"127.0.0.1", "::1"}
    with egress.guarded(frozenset({"localhost"})) as guard, pytest.raises(egress.DestinationRefused):
        guard.addresses("127.0.0.1", 9)  # the allow-list names hosts as written, not addresses


def test_inside_the_guard_a_socket_it_did_not_approve_is_refused():
    with egress.guarded() as guard:
        with socket.socket() as raw, pytest.raises(egress.DestinationRefused, match="did not check"):
            raw.connect(("127.0.0.2", 9))
        with socket.socket(socket.AF_UNIX) as local, pytest.raises(egress.DestinationRefused):
            local.connect("/dev/log")
    assert len(guard.refusals) == 2
