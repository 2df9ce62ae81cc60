"""web/arrival.py: a request's arrival is stamped when its own first bytes come."""
from __future__ import annotations

import time

from waitress.adjustments import Adjustments

from web.arrival import StampedParser

REQUEST = b"POST /chat/slack HTTP/1.1\r\nHost: engine\r\nContent-Length: 2\r\n\r\nhi"


def feed(parser: StampedParser, data: bytes) -> None:
    """As waitress's channel does: what the parser did not consume is given to it again."""
    while data and not parser.completed:
        data = data[parser.received(data):]


def test_blank_lines_before_a_request_do_not_date_it():
    """A client may send CRLF after a request (RFC 9112 2.2; waitress skips them): on a keep-alive connection they
    start the next request's parser, which stamped the next request, perhaps minutes later, with their time. A chat
    command that came so was refused as having waited past the chat's patience, each time it was sent again."""
    parser = StampedParser(Adjustments())
    feed(parser, b"\r\n")
    time.sleep(0.2)
    before = time.monotonic()
    feed(parser, REQUEST)
    assert parser.completed and not parser.empty and parser.error is None
    assert parser.arrived >= before


def test_a_request_is_dated_by_its_first_bytes_not_its_last():
    sent = time.monotonic()
    parser = StampedParser(Adjustments())  # waitress makes it as the first bytes come
    feed(parser, REQUEST[:10])
    time.sleep(0.1)
    rest = time.monotonic()
    feed(parser, REQUEST[10:])
    # By order, not by a time bound (a busy machine may take any time between two lines).
    assert parser.completed and sent <= parser.arrived < rest
