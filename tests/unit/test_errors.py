"""inloox.errors: the class for each status, what retrying means, and reading error bodies."""
from __future__ import annotations

import json
import pickle
from datetime import datetime, timezone

import pytest

from inloox.errors import (
    AuthError, ClientError, Conflict, HTTPStatusError, InLooxError, InvalidRequest, NotFound,
    OutcomeUnknown, RateLimited, RequestTimeout, ServerError, TransportError, UnexpectedRedirect,
    parse_error_body, parse_retry_after, status_error_class,
)

NOW = datetime(2025, 4, 1, 9, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("status, cls", [
    (301, UnexpectedRedirect), (302, UnexpectedRedirect), (307, UnexpectedRedirect),
    (400, InvalidRequest), (401, AuthError), (403, AuthError), (404, NotFound), (405, ClientError),
    (408, RequestTimeout), (409, Conflict), (412, Conflict), (422, ClientError), (429, RateLimited),
    (500, ServerError), (502, ServerError), (503, ServerError), (504, ServerError), (599, ServerError),
    (600, HTTPStatusError),
])
def test_each_status_gets_its_class(status, cls):
    assert status_error_class(status) is cls


@pytest.mark.parametrize("cls, status, retryable", [
    (RequestTimeout, 408, True), (RateLimited, 429, True),
    (ServerError, 502, True), (ServerError, 503, True), (ServerError, 504, True),
    (ServerError, 500, False), (ServerError, 501, False),
    (InvalidRequest, 400, False), (AuthError, 401, False), (NotFound, 404, False), (Conflict, 409, False),
    (UnexpectedRedirect, 302, False),
])
def test_retryable_follows_the_status(cls, status, retryable):
    assert cls("x", status=status).retryable is retryable


def test_transport_errors_are_retryable_but_an_unknown_outcome_is_not():
    assert TransportError("reset").retryable is True
    assert OutcomeUnknown("lost answer").retryable is False
    assert issubclass(OutcomeUnknown, TransportError)


def test_tree_matches_the_docstring():
    assert issubclass(TransportError, InLooxError) and issubclass(HTTPStatusError, InLooxError)
    for cls in (AuthError, NotFound, Conflict, InvalidRequest):
        assert issubclass(cls, ClientError)
    for cls in (ClientError, ServerError, RateLimited, RequestTimeout, UnexpectedRedirect):
        assert issubclass(cls, HTTPStatusError)


def test_an_error_keeps_what_was_asked_and_answered():
    err = InvalidRequest("400 Bad Request from POST u: bad", method="POST", url="u", status=400,
                         odata_code="InvalidField", message="bad", response_excerpt="{…}",
                         details=({"code": "c", "message": "m", "target": "Name"},))
    assert (err.method, err.url, err.status, err.odata_code, err.message) == ("POST", "u", 400, "InvalidField", "bad")
    assert str(err) == "400 Bad Request from POST u: bad"
    assert err.details[0]["target"] == "Name" and err.retry_after is None


def test_errors_survive_pickling_with_their_fields():
    err = RateLimited("429 Too Many Requests", method="GET", url="u", status=429, retry_after=3.0,
                      response_excerpt="slow down")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is RateLimited and copy.retry_after == 3.0 and copy.response_excerpt == "slow down"
    redirect = pickle.loads(pickle.dumps(UnexpectedRedirect("302", location="https://elsewhere/")))
    assert redirect.location == "https://elsewhere/"


def test_odata_error_body():
    body = json.dumps({"error": {"code": "InvalidField", "message": "Name is required",
                                 "details": [{"code": "Required", "message": "missing", "target": "Name"}]}})
    parsed = parse_error_body(body)
    assert parsed.code == "InvalidField" and parsed.message == "Name is required"
    assert parsed.details == ({"code": "Required", "message": "missing", "target": "Name"},)


def test_odata_v3_message_object():
    parsed = parse_error_body('{"error": {"code": "", "message": {"lang": "en-US", "value": "Nope"}}}')
    assert parsed.code is None and parsed.message == "Nope"


def test_problem_json_body_lists_field_errors():
    body = json.dumps({"type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
                       "title": "One or more validation errors occurred.", "status": 400,
                       "errors": {"Name": ["The Name field is required."], "WorkAmount": "must be >= 0"}})
    parsed = parse_error_body(body)
    assert parsed.code is None
    assert parsed.message == ("One or more validation errors occurred.: Name: The Name field is required.; "
                              "WorkAmount: must be >= 0")
    assert [d["target"] for d in parsed.details] == ["Name", "WorkAmount"]


def test_problem_json_prefers_detail_over_title():
    parsed = parse_error_body('{"title": "Conflict", "detail": "Task is locked", "status": 409}')
    assert parsed.message == "Task is locked" and parsed.details == ()


@pytest.mark.parametrize("text, message", [
    ("Service Unavailable", "Service Unavailable"),
    ("\n  upstream timed out\nsecond line", "upstream timed out"),
    ("", None),
    ("<html><body>Bad gateway</body></html>", "<html><body>Bad gateway</body></html>"),
    ("[1, 2]", "[1, 2]"),
    ('{"unexpected": true}', '{"unexpected": true}'),
])
def test_plain_text_and_unknown_bodies(text, message):
    parsed = parse_error_body(text)
    assert parsed.code is None and parsed.message == message


@pytest.mark.parametrize("header, seconds", [
    ("120", 120.0), (" 0 ", 0.0), ("1.5", 1.5),
    ("Tue, 01 Apr 2025 09:00:30 GMT", 30.0),
    ("Tue, 01 Apr 2025 08:59:00 GMT", 0.0),  # already past: retry now
    (None, None), ("", None), ("-5", None), ("soon", None), ("nan", None), ("inf", None),
])
def test_retry_after_is_seconds_or_an_http_date(header, seconds):
    assert parse_retry_after(header, NOW) == seconds
