"""A refused Standard Webhooks delivery says what to send instead: the sender's only clue is the 401's text."""
import time
from datetime import datetime, timezone

import pytest
from standardwebhooks import Webhook

from web.signatures import SignatureError, verify_standard_webhook

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'{"status": "paid"}'


def signed(at: float | None = None, secret: str = SECRET, body: bytes = BODY) -> dict:
    at = time.time() if at is None else at
    when = datetime.fromtimestamp(int(at), tz=timezone.utc)
    return {"webhook-id": "msg_1", "webhook-timestamp": str(int(at)),
            "webhook-signature": Webhook(secret).sign("msg_1", when, body.decode())}


def refusal(headers: dict, body: bytes = BODY) -> str:
    with pytest.raises(SignatureError) as caught:
        verify_standard_webhook(body, headers, [SECRET])
    return str(caught.value)


def test_a_correct_signature_is_accepted():
    verify_standard_webhook(BODY, signed(), [SECRET])


def test_an_unsigned_request_is_told_which_headers_and_how_to_sign():
    # The library's own words were "Missing required headers".
    words = refusal({})
    assert words.startswith("missing webhook-id, webhook-timestamp, webhook-signature headers: ")
    assert "HMAC-SHA256 of '<webhook-id>.<webhook-timestamp>.<body>'" in words
    assert "docs/rules.md" in words


def test_one_missing_or_empty_header_is_named():
    assert refusal({**signed(), "webhook-signature": ""}).startswith("missing webhook-signature header: ")
    headers = signed()
    del headers["webhook-id"]
    assert refusal(headers).startswith("missing webhook-id header: ")


@pytest.mark.parametrize("headers, body, words", [
    (signed(secret="whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA=="), BODY, "no signature matches this body"),
    (signed(), b'{"status": "open"}', "no signature matches this body"),
    (signed(at=time.time() - 600), BODY, "more than 5 minutes old"),
    (signed(at=time.time() + 600), BODY, "more than 5 minutes ahead"),
    ({**signed(), "webhook-timestamp": "yesterday"}, BODY, "not a number of seconds since 1970"),
    ({**signed(), "webhook-signature": "garbage"}, BODY, "malformed signature headers: webhook-signature is v1,"),
])
def test_each_refusal_says_what_to_change(headers, body, words):
    assert words in refusal(headers, body)
