"""inloox.Client's `throttle` hook without a server: asked before every kind of request, and a refusal
(`Throttled`) comes out unchanged, with nothing sent and nothing reported to `on_response`.
"""
from __future__ import annotations

import pytest

from inloox import Client
from inloox.errors import InLooxError, Throttled

TOKEN = "ilx_SENTINELsentinelSENTINELsentinel01"
GUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
NOWHERE = "http://127.0.0.1:9/api/odata/"  # the discard port: a request that got out would fail to connect


class Refusing:
    """A throttle hook that refuses every request and remembers the methods it was asked about."""

    def __init__(self):
        self.asked = []
        self.error = Throttled("wait", retry_after=0.4)

    def __call__(self, method: str) -> None:
        self.asked.append(method)
        self.error.method = method
        raise self.error


@pytest.mark.parametrize("method, call", [
    ("GET", lambda c: next(c.query("Task"))),
    ("GET", lambda c: c.count("Task")),
    ("GET", lambda c: c.get("Task", GUID)),
    ("GET", lambda c: c.me()),
    ("POST", lambda c: c.create("Task", {"Name": "x"})),
    ("PATCH", lambda c: c.update("Task", GUID, {"Name": "y"})),
    ("DELETE", lambda c: c.delete("Task", GUID)),
    ("POST", lambda c: c.action("Task", GUID, "AddNote", {"Text": "n"})),
    ("GET", lambda c: c.function("Task", GUID, "GetStopwatch")),
])
def test_a_refused_request_raises_throttled_unchanged_and_is_not_counted(method, call):
    throttle, observed = Refusing(), []
    client = Client(NOWHERE, TOKEN, throttle=throttle, on_response=lambda m, s: observed.append((m, s)))
    with client, pytest.raises(Throttled) as caught:
        call(client)
    assert caught.value is throttle.error
    assert throttle.asked == [method]
    assert observed == []


def test_throttled_is_a_retryable_inloox_error_without_a_status():
    error = Throttled("wait", method="GET", retry_after=0.4)
    assert isinstance(error, InLooxError)
    assert error.retryable is True and error.status is None and error.retry_after == 0.4

