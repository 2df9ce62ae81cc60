"""One scan of an entity set InLoox records no change time for: read it whole, compare, hand the events over.

A scan reads every row of the set, the key and the watched fields only (`$select`), PAGE_SIZE rows
a request, following @odata.nextLink, and compares each row with its snapshot from the previous
scan: a new key is `created`, a changed watched field `updated`, a key no longer listed `deleted`.
A missing key is first looked up again by key, because a page boundary that moved under a delete
elsewhere can hide a row that still exists; the first scan (the baseline) reads the set twice, for
the same reason. Events carry `changes` exactly as the change feeds' do
(workers/poller/poll.py) and go through the same intake: the first scan is a silent baseline, more changes
than the flood limit are held for a person, and each event is accepted in the transaction that
stores its entity's new snapshot. Nothing is kept of a scan whose lease was lost on the way.

Our own writes: scanned sets have no column naming who changed a row, so a change is ours when
the worker left a note of its write on that entity (workers/guards.py) after the previous scan
started: a write noted before that was in the previous scan's read already. The event is then
`chained`, with the note's hop count, and the note is used up with it, so that a person's next
change to the same entity counts as theirs. On these sets the worker notes an update, delete or
action before sending it (workers/jobs.py), so a scan never reads our write before its note; a
create's key is known only from InLoox's answer, so its note follows the write.

Cost per scan: one request per PAGE_SIZE rows whatever changed, plus one per FETCH_CHUNK changed
entities (read in full for the rules) and one per FETCH_CHUNK missing keys (looked up again).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterable

import redis

from engine.diff import diff_snapshots
from engine.events import Event, id_part
from inloox import Client, and_, eq, or_
from inloox.changes import PAGE_SIZE, Scan
from workers import guards, workspaces
from workers.intake import submit_event
from workers.poller.poll import (
    FETCH_CHUNK, PollResult, PollSettings, deleted_event, hold_flood, readable_row, seen_key, selection,
    watched_fields,
)
from workers.poller.snapshots import SnapshotStore


class LeaseLost(Exception):
    """Another poller holds the workspace now: the scan stopped and kept nothing."""


@dataclass(frozen=True)
class _Change:
    key: str
    kind: str  # created | updated | deleted
    changes: dict
    snapshot: dict  # the new one; for a deleted entity, its last


def scan_once(client: Client, connection: redis.Redis, scan: Scan, fields: frozenset[str] | None,
              settings: PollSettings = PollSettings(), *, now: datetime,
              keep_lease: Callable[[], bool] = lambda: True) -> PollResult:
    """Scan `scan.entity_set` once, as of `now` (when it starts); `fields` are the watched ones (None: all).

    `keep_lease()` is asked after every page and before anything is stored; when it answers False
    the scan raises LeaseLost.
    """
    # A one-part key is the hash field already: its snapshots need not store it again.
    store = SnapshotStore(connection, scan.entity_set, workspaces.current().prefix,
                          key_field=scan.key[0] if len(scan.key) == 1 else None)
    watched = watched_fields(scan.entity_set, fields, exclude=scan.key)
    previous = store.cursor()  # when the previous complete scan started
    baseline = previous is None
    known = store.keys()  # before reading: a row created during the scan is never taken for a deleted one
    rows = _read(client, scan, watched, keep_lease)
    if baseline:
        # Read twice, every row either read found kept (the second's when both did): on a server that pages by
        # $skip, a row deleted from a page read already makes the row behind it slide into that page, unseen; with no
        # snapshot, the next scan would take it for a created entity (`on: created` rules write for it). A later scan
        # looks up again what it misses; the first has nothing to look up against. Paid once per set.
        rows |= _read(client, scan, watched, keep_lease)
    snapshots = {key: _snapshot(scan, watched, row) for key, row in rows.items()}
    if baseline:
        _keep(keep_lease)
        store.save_many(snapshots, now.isoformat())
        return PollResult(scan.entity_set, rows=len(rows), baseline=True)
    result = PollResult(scan.entity_set, rows=len(rows))
    found, quiet = _changes(watched, snapshots, store.load(snapshots))
    found += _deleted(client, scan, store.load(sorted(known - rows.keys())))
    _keep(keep_lease)
    if len(found) > settings.flood_limit:
        held = [_event(scan, c, c.snapshot, now, 0, previous) for c in found]
        result.held = hold_flood(connection, scan.entity_set, held, settings.flood_limit, keep=settings.held_keep)
        quiet.update({c.key: c.snapshot for c in found if c.kind != "deleted"})  # held changes count as seen
        store.save_many(quiet, now.isoformat(), forget=[c.key for c in found if c.kind == "deleted"])
        return result
    ours = _ours(connection, scan, [c.key for c in found], since=datetime.fromisoformat(previous))
    _emit(client, connection, store, scan, found, ours, settings, result, now=now, previous=previous,
          complete=fields is None)
    store.save_many(quiet, now.isoformat())
    return result


def _keep(keep_lease: Callable[[], bool]) -> None:
    if not keep_lease():
        raise LeaseLost("the workspace's poll lease was lost during a scan; nothing of it was kept")


def _read(client: Client, scan: Scan, watched: list[str], keep_lease) -> dict[str, dict]:
    """Every row by key text, page by page (ordered by key, so that paging is stable)."""
    rows = {}
    for count, row in enumerate(client.query(scan.entity_set, select=selection([*scan.key, *watched]),
                                             orderby=list(scan.key)), start=1):
        rows[_key_text(scan, count, row)] = row
        if count % PAGE_SIZE == 0:
            _keep(keep_lease)
    return rows


def _snapshot(scan: Scan, watched: list[str], row: dict) -> dict:
    # The key's parts are kept too: a deleted entity is looked up again by them, and they are
    # the deleted event's entity.
    return {**{k: row[k] for k in scan.key}, **{f: row.get(f) for f in watched}}


def _changes(watched: list[str], snapshots: dict, previous: dict) -> tuple[list[_Change], dict]:
    """Entities that are new or changed a watched field, and the quiet ones whose snapshot must be rewritten."""
    found, quiet = [], {}
    for key, new in snapshots.items():
        old = previous.get(key)
        if old is None:
            found.append(_Change(key, "created", {}, new))
            continue
        # A field missing from the old snapshot was added to the rules since: learn it silently.
        changes = diff_snapshots(old, new, [f for f in watched if f in old])
        if changes:
            found.append(_Change(key, "updated", changes, new))
        elif set(old) != set(new):
            quiet[key] = new
    return found, quiet


def _deleted(client: Client, scan: Scan, missing: dict[str, dict | None]) -> list[_Change]:
    """The missing keys that are really gone (looked up again: paging may have skipped a row)."""
    candidates = {key: snapshot for key, snapshot in missing.items() if snapshot is not None}
    still_there = _read_keys(client, scan, candidates.values(), select=list(scan.key))
    return [_Change(key, "deleted", {}, snapshot) for key, snapshot in candidates.items() if key not in still_there]


def _read_keys(client: Client, scan: Scan, keys: Iterable[dict], *, select: list[str] | None = None) -> dict:
    """The rows with these keys (each a dict of the key's parts), FETCH_CHUNK keys per request."""
    keys, found = list(keys), {}
    for start in range(0, len(keys), FETCH_CHUNK):
        chunk = [and_(*(eq(k, parts[k]) for k in scan.key)) for parts in keys[start:start + FETCH_CHUNK]]
        for number, row in enumerate(client.query(scan.entity_set, filter=or_(*chunk), select=select), start=1):
            found[_key_text(scan, number, row)] = row
    return found


def _key_text(scan: Scan, number: int, row) -> str:
    """The key of a row read; a row that cannot be read fails the scan, which keeps nothing of it.

    Skipped, it would be missing from the scan, and its entity taken for a deleted one.
    """
    return scan.key_text(readable_row(row, scan.key, f"scan {scan.entity_set}: row {number} of an answer"))


def _ours(connection, scan: Scan, keys: list[str], *, since: datetime) -> dict[str, int]:
    """Entity key → hop count of our write noted since `since` (the changes we made ourselves)."""
    elapsed = time.time() - since.timestamp()
    return {key: hops for key, (hops, age) in guards.writes_of(connection, scan.entity_set, keys).items()
            if age <= elapsed}


def _emit(client, connection, store, scan, found, ours, settings, result, *, now, previous: str,
          complete: bool) -> None:
    # The rows read carry every field when every field is watched; else read the changed ones in full.
    changed = [c.snapshot for c in found if c.kind != "deleted"]
    entities = {scan.key_text(s): s for s in changed} if complete else _read_keys(client, scan, changed)
    for change in found:
        event = _event(scan, change, entities.get(change.key, change.snapshot), now, ours.get(change.key, 0),
                       previous)
        accepted = submit_event(connection, event, dedup_key=seen_key(event), dedup_ttl=settings.dedup_ttl,
                                also=lambda pipe, c=change, ours=event.chained: _store(pipe, store, scan, c, ours))
        if accepted:
            result.accepted.append(event.id)
        else:
            result.duplicates += 1


def _store(pipe, store: SnapshotStore, scan: Scan, change: _Change, ours: bool) -> None:
    """The event's bookkeeping, in its own transaction: the new snapshot, and the used-up note of our write."""
    if change.kind == "deleted":
        store.forget(pipe, change.key)
    else:
        store.save(pipe, change.key, change.snapshot)
    if ours:
        guards.forget_write(pipe, scan.entity_set, change.key)


def _event(scan: Scan, change: _Change, entity: dict, now: datetime, hops: int, previous: str) -> Event:
    """The event of one change; `occurred_at` is the start of the scan that saw it (InLoox keeps no time).

    Its id is one shell word (a composite key's quotes are escaped) and depends only on the change
    (what it changed from and to) and on the start of the last complete scan before it (`previous`),
    not on this scan's start: two scans that both read the entity before either stored it (two
    pollers holding the workspace for a while) make one event of one change, while the same values
    coming back after a complete scan are a change of their own.
    """
    seen = hashlib.sha256(json.dumps([change.changes, change.snapshot], sort_keys=True, default=str).encode())
    event_id = f"inloox:{scan.entity_set}:{id_part(change.key)}:scan@{previous}:{seen.hexdigest()[:12]}:{change.kind}"
    if change.kind == "deleted":
        return deleted_event(scan.entity_set, change.key, change.snapshot, now, event_id, hops)
    return Event(source="inloox", kind=change.kind, entity_set=scan.entity_set, key=change.key, occurred_at=now,
                 id=f"{event_id}:{','.join(sorted(change.changes))}", changes=change.changes, entity=entity,
                 chained=hops > 0, payload={"hops": hops} if hops else {})
