"""Outbound requests: refused schemes, the guard on notifications, and URLs redacted for records and pages."""
from __future__ import annotations

import json

import pytest

from engine import load_texts
from workers.outbound import OutboundPolicy, OutboundRefused, http, notify, redact_url, redacted


def test_notify_refuses_a_private_json_webhook_at_the_connection():
    with pytest.raises(OutboundRefused, match="refused: 127.0.0.1 resolves to 127.0.0.1"):
        notify(OutboundPolicy(), "json://127.0.0.1:9/hook", "hello")


def test_notify_refuses_an_unknown_scheme():
    with pytest.raises(OutboundRefused, match="Apprise cannot send to gopher://example.com/"):
        notify(OutboundPolicy(), "gopher://example.com/x", "hello")


@pytest.mark.parametrize("url", ["rsyslog://127.0.0.2", "irc://irc.example.com/#chan", "AMQP://broker.example/q"])
def test_notify_refuses_a_transport_the_guard_cannot_check(url):
    with pytest.raises(OutboundRefused, match="notifications are refused: their transport is not HTTP or SMTP"):
        notify(OutboundPolicy(), url, "hello")


def test_http_refuses_other_schemes():
    with pytest.raises(OutboundRefused, match="only http and https"):
        http(OutboundPolicy(), "GET", "file:///etc/passwd")


def _check(notify_url: str) -> list[str]:
    rule = {"id": "r", "when": [{"manual": True}], "then": [{"notify": notify_url, "body": "b"}]}
    return [e.format() for e in load_texts([("r.yaml", json.dumps(rule))]).errors]


@pytest.mark.parametrize("url", ["rsyslog://127.0.0.2", "ircs://{{ env.IRC_HOST }}/#ops", "syslog://"])
def test_rules_check_refuses_a_notification_the_guard_cannot_check(url):
    [error] = _check(url)
    assert "notifications are refused: their transport is not HTTP or SMTP" in error


@pytest.mark.parametrize("url", ["{{ env.TEAM_CHANNEL_URL }}", "json://hooks.example.com/x", "ntfy://ntfy.example/t",
                                 "mailto://u:p@example.com?smtp=mail.example.com", "slack://T1/B2/C3"])
def test_rules_check_accepts_notifications_the_guard_covers(url):
    assert _check(url) == []


@pytest.mark.parametrize("url,shown", [
    ("json://ann:hunter2@hooks.example.com:8080/x/y?token=abc&format=markdown",
     "json://***@hooks.example.com:8080/***?token=***&format=markdown"),
    ("https://hooks.slack.com/services/T000/B000/XXXXsecret", "https://hooks.slack.com/***"),
    ("slack://TokenA/TokenB/TokenC/#general", "slack://***/***#***"),
    ("mailto://ann:pw@example.com?smtp=mail.example.com&pass=pw2", "mailto://***@example.com?smtp=mail.example.com&pass=***"),
    ("https://x.example/?sig=s1&apikey=k1&secret=s2&password=p1&code=c1", 
     "https://x.example/?sig=***&apikey=***&secret=***&password=***&code=***"),
    ("json://[::1]:99/a", "json://[::1]:99/***"),
    ("https://example.com/", "https://example.com/"),
])
def test_redact_url_hides_credentials_and_keeps_the_host(url, shown):
    assert redact_url(url) == shown


def test_redacted_covers_urls_inside_text_and_secret_headers():
    request = {"url": "json://u:p4ss@h.example/x", "text": "see https://h.example/tok3n, thanks",
               "headers": {"Authorization": "Bearer abc", "X-Api-Key": "k", "Accept": "text/plain"}, "n": 1}
    assert redacted(request) == {"url": "json://***@h.example/***", "text": "see https://h.example/***, thanks",
                                 "headers": {"Authorization": "***", "X-Api-Key": "***", "Accept": "text/plain"},
                                 "n": 1}
