"""The outbound guard: rules may only send to public addresses, unless a host is allow-listed."""
from __future__ import annotations

import pytest

from workers.outbound import OutboundPolicy, OutboundRefused, http, notify


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "10.1.2.3", "172.16.0.9", "192.168.1.1",
                                  "169.254.169.254", "::1", "0.0.0.0"])
def test_private_loopback_and_link_local_hosts_are_refused(host):
    with pytest.raises(OutboundRefused, match="non-public address"):
        OutboundPolicy().check_host(host)


def test_a_public_address_is_allowed():
    OutboundPolicy().check_host("93.184.216.34")


def test_an_allow_listed_host_may_be_private():
    OutboundPolicy.from_setting("127.0.0.1, localhost").check_host("localhost")


def test_notify_refuses_a_private_json_webhook_before_sending():
    with pytest.raises(OutboundRefused, match="127.0.0.1 resolves to 127.0.0.1"):
        notify(OutboundPolicy(), "json://127.0.0.1:9/hook", "hello")


def test_notify_refuses_an_unknown_scheme():
    with pytest.raises(OutboundRefused, match="not a notification URL"):
        notify(OutboundPolicy(), "gopher://example.com/x", "hello")


def test_http_refuses_other_schemes():
    with pytest.raises(OutboundRefused, match="only http and https"):
        http(OutboundPolicy(), "GET", "file:///etc/passwd")
