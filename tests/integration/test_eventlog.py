"""The event log on a real Valkey: accepted once, delivered, taken over, trimmed only when handled."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
import redis

from engine.events import Event
from workers import eventlog, workspaces
from workers.intake import submit_event

WORKSPACE = workspaces.Workspace("default", "http://unused/", "unused")


@pytest.fixture
def connection(redis_url):
    with workspaces.using(WORKSPACE):
        yield redis.Redis.from_url(redis_url)


def accept(connection, n: int) -> bool:
    event = Event("webhook", "forms", datetime.now(timezone.utc), id=f"webhook:forms:m{n}", payload={"n": n})
    return submit_event(connection, event, dedup_key=workspaces.key(f"hooks:seen:forms:m{n}"), dedup_ttl=60)


def test_an_event_is_accepted_once_and_read_back_whole(connection):
    assert accept(connection, 1) is True
    assert accept(connection, 1) is False  # the same delivery again

    [entry] = eventlog.waiting(connection, workspace="default")
    assert entry.event["id"] == "webhook:forms:m1" and entry.event["payload"] == {"n": 1}
    assert abs(entry.accepted_at - datetime.now(timezone.utc).timestamp()) < 60


def test_an_entry_a_worker_did_not_acknowledge_is_taken_over_by_another(connection):
    stream = eventlog.stream_key("default")
    eventlog.ensure_group(connection, stream)
    accept(connection, 1)
    [(_, entry)] = eventlog.read_new(connection, [stream], "worker-a", count=10, block_ms=None)

    assert eventlog.claim_stale(connection, stream, "worker-b", min_idle_ms=60_000, count=10) == []  # still fresh
    [(claimed, entry_id, deliveries)] = eventlog.claim_stale(connection, stream, "worker-b", min_idle_ms=0, count=10)
    assert claimed == entry and entry_id == entry.id and deliveries == 1
    eventlog.ack(connection, stream, [entry.id])
    assert eventlog.waiting(connection, workspace="default") == []


def test_trimming_never_drops_an_event_not_yet_handled(connection):
    stream = eventlog.stream_key("default")
    eventlog.ensure_group(connection, stream)
    for n in range(10):
        accept(connection, n)
    delivered = eventlog.read_new(connection, [stream], "worker-a", count=5, block_ms=None)
    eventlog.ack(connection, stream, [entry.id for _, entry in delivered[:3]])  # 3 handled, 2 in hand, 5 not read

    eventlog.trim(connection, stream, keep=0, max_age=0, approximate=False)

    left = [e.event["payload"]["n"] for e in eventlog.entries(connection, workspace="default")]
    assert left == list(range(3, 10))  # the handled ones went; the two in hand and the five unread stay
    assert eventlog.backlog(connection, workspace="default") == 7

    eventlog.ack(connection, stream, [entry.id for _, entry in delivered[3:]])
    for _, entry in eventlog.read_new(connection, [stream], "worker-a", count=10, block_ms=None):
        eventlog.ack(connection, stream, [entry.id])
    eventlog.trim(connection, stream, keep=2, max_age=86400, approximate=False)
    assert [e.event["payload"]["n"] for e in eventlog.entries(connection, workspace="default")] == [8, 9]
