"""The development inbox that stands in for Slack/Teams under `make run`."""
from __future__ import annotations

from app import create_app


def test_the_dev_inbox_keeps_messages_only_when_enabled(redis_url):
    off = create_app({"REDIS_URL": redis_url}).test_client()
    assert off.post("/dev/inbox", json={"title": "t"}).status_code == 404
    on = create_app({"REDIS_URL": redis_url, "DEV_INBOX": "1"}).test_client()
    assert on.post("/dev/inbox", json={"title": "Done", "message": "Booked"}).status_code == 201
    assert on.get("/dev/inbox").json == {"messages": [{"title": "Done", "message": "Booked"}]}
