"""One poll of one entity set: read what changed since the cursor, diff it, hand the events over.

Cost grows with the number of changes, not the account size: one request reads the rows whose
change timestamp is at or after the cursor (less a small overlap, for writes that commit late),
selecting only the key, the timestamp, the author and the watched fields; a second request reads
the changed entities in full for the rules. Each event is accepted in the same Redis transaction
that stores its entity's new snapshot, so a crash re-polls into duplicates, which intake drops.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import redis

from engine.diff import diff_snapshots
from engine.edm import parse_datetime
from engine.events import Event
from inloox import Client, eq, ge, or_
from inloox.changes import ChangeFeed
from inloox.metadata import load_metadata
from workers import guards, workspaces
from workers.intake import submit_event
from workers.snapshots import STAMP, SnapshotStore

log = logging.getLogger(__name__)

FETCH_CHUNK = 40  # keys per `or` filter when reading changed entities: keeps URLs well under 4 KB


@dataclass(frozen=True)
class PollSettings:
    """Tunables of every poll; defaults suit one InLoox account polled every few seconds."""

    overlap: timedelta = timedelta(seconds=5)
    flood_limit: int = 500
    dedup_ttl: int = 7 * 24 * 3600
    own_contact_id: str | None = None  # the engine's own InLoox user: its changes are "chained"


@dataclass
class PollResult:
    """What one poll did, for logs and the dashboard."""

    entity_set: str
    rows: int = 0
    accepted: list[str] = field(default_factory=list)
    duplicates: int = 0
    held: int = 0
    baseline: bool = False


def poll_once(client: Client, connection: redis.Redis, feed: ChangeFeed, fields: frozenset[str] | None,
              settings: PollSettings = PollSettings()) -> PollResult:
    """Poll `feed` once; `fields` are the fields rules watch (None: every field)."""
    store = SnapshotStore(connection, feed.entity_set, workspaces.current().prefix)
    watched = watched_fields(feed, fields)
    cursor = store.cursor()
    if cursor is None:
        return _baseline(client, store, feed, watched)
    since = parse_datetime(cursor) - settings.overlap
    rows = list(client.query(feed.view, filter=ge(feed.stamp, since), select=_select(feed, watched),
                             orderby=[feed.stamp, feed.column(feed.key)]))
    result = PollResult(feed.entity_set, rows=len(rows))
    found, quiet = _changes(feed, watched, rows, store.load(str(r[feed.column(feed.key)]) for r in rows))
    newest = _newest(cursor, rows, feed)
    if len(found) > settings.flood_limit:
        _hold(connection, feed, found, settings, result)
        quiet.update({c.key: c.snapshot for c in found})  # held changes count as seen
    else:
        _emit(client, connection, store, feed, found, settings, result)
    store.save_many(quiet, newest)
    return result


def watched_fields(feed: ChangeFeed, fields: frozenset[str] | None) -> list[str]:
    """The plain field names to snapshot: those asked for, or every field of the entity set."""
    entity_set = load_metadata().entity_set(feed.entity_set)
    names = fields if fields is not None else entity_set.properties
    return sorted(name for name in names if name in entity_set.properties and name != feed.key)


@dataclass(frozen=True)
class _Change:
    key: str
    kind: str  # created | updated
    changes: dict
    snapshot: dict
    row: dict


def _select(feed: ChangeFeed, watched: list[str]) -> list[str]:
    extra = [feed.changed_by] if feed.changed_by else []
    return [feed.column(feed.key), feed.stamp, *extra, *(feed.column(f) for f in watched)]


def _snapshot(feed: ChangeFeed, watched: list[str], row: dict) -> dict:
    return {STAMP: row.get(feed.stamp), **{f: row.get(feed.column(f)) for f in watched}}


def _changes(feed, watched, rows, snapshots) -> tuple[list[_Change], dict]:
    """Rows that changed a watched field (or are new), and the quiet rows' refreshed snapshots."""
    found, quiet = [], {}
    for row in rows:
        key = str(row[feed.column(feed.key)])
        new, old = _snapshot(feed, watched, row), snapshots.get(key)
        if old is None:
            found.append(_Change(key, "created", {}, new, row))
            continue
        # A field missing from the old snapshot was added to the rules since: learn it silently.
        changes = diff_snapshots(old, new, [f for f in watched if f in old])
        if changes:
            found.append(_Change(key, "updated", changes, new, row))
        elif old.get(STAMP) != new[STAMP] or set(old) != set(new):
            quiet[key] = new
    return found, quiet


def _emit(client, connection, store, feed, found, settings, result) -> None:
    entities = _fetch(client, feed, [c.key for c in found])
    hops = guards.hops_of(connection, feed.entity_set, [c.key for c in found])
    for change in found:
        event = _event(feed, change, entities.get(change.key, {}), settings, hops.get(change.key, 0))
        accepted = submit_event(
            connection, event, dedup_key=_seen_key(event),
            dedup_ttl=settings.dedup_ttl,
            also=lambda pipe, c=change: store.save(pipe, c.key, c.snapshot),
        )
        if accepted:
            result.accepted.append(event.id)
        else:
            result.duplicates += 1


def _event(feed: ChangeFeed, change: _Change, entity: dict, settings: PollSettings, hops: int = 0) -> Event:
    stamp = change.row.get(feed.stamp)
    actor = str(change.row.get(feed.changed_by) or "") if feed.changed_by else ""
    chained = bool(actor) and actor == settings.own_contact_id
    return Event(
        source="inloox", kind=change.kind, entity_set=feed.entity_set, key=change.key,
        occurred_at=parse_datetime(stamp),
        id=f"inloox:{feed.entity_set}:{change.key}:{stamp}:{change.kind}:{','.join(sorted(change.changes))}",
        changes=change.changes, entity=entity or _plain(feed, change.row),
        actor={"ContactId": actor} if actor else {},
        chained=chained, payload={"hops": hops} if chained else {},
    )


def _fetch(client: Client, feed: ChangeFeed, keys: list[str]) -> dict[str, dict]:
    """The changed entities in full from the plain entity set, a chunk of keys per request."""
    entities = {}
    for start in range(0, len(keys), FETCH_CHUNK):
        chunk = keys[start:start + FETCH_CHUNK]
        for row in client.query(feed.entity_set, filter=or_(*(eq(feed.key, k) for k in chunk))):
            entities[str(row[feed.key])] = row
    return entities


def _plain(feed: ChangeFeed, row: dict) -> dict:
    return {name: value for column, value in row.items() if (name := feed.field(column)) is not None}


def _hold(connection, feed, found, settings, result) -> None:
    """Too many changes at once (a bulk edit or an import): keep them for a person to release."""
    key = workspaces.key(f"poll:{feed.entity_set}:held")
    events = [_event(feed, c, {}, settings).to_dict() for c in found]
    with connection.pipeline() as pipe:
        pipe.rpush(key, *(json.dumps(e, default=str) for e in events))
        pipe.execute()
    result.held = len(found)
    log.warning("poll %s: %d changes held (flood limit %d); nothing was run",
                feed.entity_set, len(found), settings.flood_limit)


def sweep_deleted(client: Client, connection: redis.Redis, feed: ChangeFeed,
                  settings: PollSettings = PollSettings()) -> PollResult:
    """Find deleted entities (invisible to a timestamp poll) by listing every key; emit `deleted`."""
    store = SnapshotStore(connection, feed.entity_set, workspaces.current().prefix)
    # Known keys first: an entity created after this line cannot be mistaken for a deleted one.
    known = store.keys()
    existing = {str(row[feed.key]) for row in client.query(feed.entity_set, select=[feed.key])}
    result = PollResult(feed.entity_set, rows=len(existing))
    for key, snapshot in store.load(sorted(known - existing)).items():
        if snapshot is None:
            continue
        event = Event(
            source="inloox", kind="deleted", entity_set=feed.entity_set, key=key,
            occurred_at=_instant(snapshot.get(STAMP) or ""), id=f"inloox:{feed.entity_set}:{key}:deleted",
            entity={f: v for f, v in snapshot.items() if f != STAMP},
        )
        if submit_event(connection, event, dedup_key=_seen_key(event),
                        dedup_ttl=settings.dedup_ttl,
                        also=lambda pipe, k=key: store.forget(pipe, k)):
            result.accepted.append(event.id)
    return result


def _baseline(client, store, feed, watched) -> PollResult:
    """First poll: remember every row as it is now and fire nothing."""
    rows = list(client.query(feed.view, select=_select(feed, watched), orderby=[feed.stamp]))
    snapshots = {str(r[feed.column(feed.key)]): _snapshot(feed, watched, r) for r in rows}
    store.save_many(snapshots, _newest(None, rows, feed) or "1970-01-01T00:00:00Z")
    return PollResult(feed.entity_set, rows=len(rows), baseline=True)


def _newest(cursor: str | None, rows: list[dict], feed: ChangeFeed) -> str | None:
    """The latest of the cursor and the rows' timestamps (compared as instants, kept as text)."""
    stamps = [s for s in (cursor, *(r.get(feed.stamp) for r in rows)) if s]
    return max(stamps, key=_instant) if stamps else None


def _instant(stamp: str) -> datetime:
    return parse_datetime(stamp) or datetime.min.replace(tzinfo=timezone.utc)


def _seen_key(event: Event) -> str:
    """The event's dedup claim in the current workspace."""
    return workspaces.key("poll:seen:" + hashlib.sha256(event.id.encode()).hexdigest()[:32])


def release_held(connection: redis.Redis, entity_set: str, settings: PollSettings = PollSettings()) -> int:
    """Hand a held flood's events to intake after all (a person decided); returns how many."""
    key = workspaces.key(f"poll:{entity_set}:held")
    released = 0
    while (raw := connection.lpop(key)) is not None:
        event = Event.from_dict(json.loads(raw))
        released += submit_event(connection, event, dedup_key=_seen_key(event),
                                 dedup_ttl=settings.dedup_ttl)
    return released
