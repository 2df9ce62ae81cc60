"""One poll of one entity set's change feed: read what changed since the cursor, diff it, hand the events over.

Cost grows with the number of changes, not the account size: one request reads the rows whose
change timestamp is at or after the cursor (less a small overlap, for writes that commit late),
selecting only the key, the timestamps, the authors and the watched fields; a second request reads
the changed entities in full for the rules. A Dynamic view's row has a timestamp per joined table
(`TaskItem_UpdatedAt`, `Planning_UpdatedAt`, …): the rows where any watched table's stamp moved are
read, and the newest stamp is the row's. A field rules start watching is in no snapshot of a row
that did not change since, so the poll after it reads every row once and learns it silently. Each
event is accepted in the same Redis transaction that stores its entity's new snapshot, so a crash
re-polls into duplicates, which intake drops.
Sets without a change feed are scanned instead (workers/poller/scan.py), with the same events and rules.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import reprlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import redis

from engine.diff import diff_snapshots
from engine.edm import key_problem, parse_datetime, parse_instant
from engine.events import Event
from inloox import Client, InLooxError, InvalidArguments, InvalidRequest, ServerError, and_, eq, ge, gt, or_
from inloox.changes import PAGE_SIZE, ChangeFeed, Stamp
from inloox.metadata import load_metadata
from workers import guards, workspaces
from workers.intake import submit_event
from workers.poller.snapshots import STAMP, SnapshotStore

log = logging.getLogger(__name__)

FETCH_CHUNK = 40  # keys per `or` filter when reading changed entities: keeps URLs well under 4 KB
SELECT_LIMIT = 40  # more columns than this are read whole: a longer `$select` would make URLs too long
RUN_READS = 3  # reads of a run of rows with one change time, where InLoox cannot page it by key, before a poll fails


@dataclass(frozen=True)
class PollSettings:
    """Tunables of every poll; defaults suit one InLoox account polled every few seconds."""

    overlap: timedelta = timedelta(seconds=5)
    flood_limit: int = 500
    # Held changes kept per set (the newest): a flood waits for a person, and one who never comes let each bulk
    # edit or nightly import add its changes to the Redis every workspace shares, for good.
    held_keep: int = 10_000
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
    watched = watched_fields(feed.entity_set, fields, exclude=(feed.key,))
    stamps = feed.stamps(watched)
    cursor, covered = store.position()
    if cursor is None:
        return _baseline(client, store, feed, watched, stamps)
    since = parse_datetime(cursor) - settings.overlap
    # A snapshot holds the fields watched when its row was last read. A field rules watch since is
    # in none of the rows that did not change, which the filter would not read: the first change of
    # such a row would find no `from` and fire nothing. So every row is read once, to learn it.
    learning = covered is None or not set(watched) <= set(covered)
    answer = _read(client, feed, stamps, None if learning else or_(*(ge(s.column, since) for s in stamps)),
                   _select(feed, watched, stamps))
    recent, older = _split(feed, stamps, answer, since) if learning else (answer, [])
    rows, passed = _usable(feed, stamps, recent)
    result = PollResult(feed.entity_set, rows=len(answer))
    found, quiet = _changes(feed, watched, stamps, rows,
                            store.load(str(r[feed.column(feed.key)]) for r in rows))
    quiet.update(_learned(store, feed, watched, stamps, older,
                          besides={str(r[feed.column(feed.key)]) for r in rows}))
    newest = _newest(cursor, passed, stamps)
    # Recorded once every row was read right (a row skipped would keep a snapshot without the new fields).
    recorded = watched if watched != covered and (not learning or len(older) + len(rows) == len(answer)) else None
    if len(found) > settings.flood_limit:
        result.held = hold_flood(connection, feed.entity_set,
                                 [_event(feed, stamps, c, {}, settings) for c in found], settings.flood_limit,
                                 keep=settings.held_keep)
        quiet.update({c.key: c.snapshot for c in found})  # held changes count as seen
    else:
        _emit(client, connection, store, feed, stamps, found, settings, result)
    if quiet or newest != cursor or recorded:  # nothing moved: no write (an idle set's poll is a read and nothing else)
        store.save_many(quiet, newest, fields=recorded)
    return result


def watched_fields(entity_set: str, fields: frozenset[str] | None, *, exclude=()) -> list[str]:
    """The field names to snapshot: those asked for, or every field of the entity set; never `exclude` (the key).

    An open type (a Dynamic view) also has columns the metadata cannot list (custom fields, e.g.
    `Project_cf_2283e9e4_Budget`): named ones are kept, and "every field" means the listed ones.
    """
    meta = load_metadata().entity_set(entity_set)
    names = fields if fields is not None else meta.properties
    return sorted(name for name in names
                  if (name in meta.properties or meta.open_type) and name not in exclude)


@dataclass(frozen=True)
class _Change:
    key: str
    kind: str  # created | updated
    changes: dict
    snapshot: dict
    row: dict


def _select(feed: ChangeFeed, watched: list[str], stamps: tuple[Stamp, ...]) -> list[str] | None:
    """The columns to read; None (all of them) when a watched one is a custom field.

    A custom field's column exists only once the account has the field, and naming a column that
    does not exist in `$select` fails the whole read: reading every column instead, a field that
    appears later simply changes from None.
    """
    meta = load_metadata().entity_set(feed.view)
    if any(feed.column(f) not in meta.properties for f in watched):
        return None
    columns = [feed.column(feed.key)]
    for stamp in stamps:
        columns += [stamp.column] + ([stamp.changed_by] if stamp.changed_by else [])
    return selection([*columns, *(feed.column(f) for f in watched)])


def selection(columns: list[str]) -> list[str] | None:
    """`columns` once each for `$select`, or None (every column) when there are more than SELECT_LIMIT."""
    columns = list(dict.fromkeys(columns))
    return columns if len(columns) <= SELECT_LIMIT else None


def _read(client: Client, feed: ChangeFeed, stamps: tuple[Stamp, ...], where, select: list[str] | None) -> list[dict]:
    """The rows of a poll, in change-time order: each next page is asked for after the last row read, not through the
    server's nextLink: from its change time (`ge`: the rows of that instant come again, and are dropped), or, where
    that brings the same rows again (a page whose rows all share one change time: a bulk update's run of PAGE_SIZE rows
    or more), after its change time and key: `(stamp eq X and key gt K) or stamp gt X`, in the order of both.

    A server that pages by $skip (an offset) lists the rows as they are at each page: a row of a page read already that
    changes again meanwhile moves to the end, the rest slide back by one, and the row that slid into the page read
    already is never listed; the cursor went on past it, and its change was lost. Asked for after the last row read,
    the row that moved is read at the end and nothing slides. In key order (several stamps: a row's change time is the
    newest of its columns, which no $orderby can name) a row keeps its place when it changes, and the server's own
    paging is followed (a read of more than a page twice, for deletes); so it is for a change time that is no instant,
    and a page that brings no row not read already (a server that ignores the filter). Where InLoox cannot compare the
    keys (a GUID's `gt`, which OData 4.0 does not promise: a 400, or a 500 that is no outage; or a key that is no
    GUID), a run is read by itself (`_whole_run`) and the rows after it from its change time (`gt`).
    """
    def query(condition):
        return client.query(feed.view, filter=condition, select=select, orderby=_order(feed, stamps))

    pages = query(where)
    if len(stamps) != 1:
        # In key order a change moves no row, but a row deleted from a page read already makes the one behind it slide
        # into that page, unseen: a read of more than a page is read again, and a row either read found counts
        # (`_changes` keeps the newer of the two).
        rows = list(pages)
        return rows + list(query(where)) if len(rows) > PAGE_SIZE else rows
    stamp, key = stamps[0].column, feed.column(feed.key)

    def version(row: dict) -> tuple[str, str]:  # a row as read at one change time: read again, it is dropped
        return str(row.get(key)), str(row.get(stamp))

    def instant(row: dict) -> datetime | None:
        return parse_instant(row[stamp]) if isinstance(row.get(stamp), str) else None

    rows, seen, since, keyset = [], set(), None, True
    page = list(itertools.islice(pages, PAGE_SIZE))
    for _ in range(client.max_pages):
        fresh = [row for row in page if version(row) not in seen]
        rows += fresh
        seen.update(map(version, fresh))
        if len(page) < PAGE_SIZE:
            return rows
        last = instant(page[-1])
        if last is None or not fresh or (since is not None and last < since):
            return rows + [row for row in pages if version(row) not in seen]
        # `ge` the last change time brings this page's rows of it again: where they are the whole page, or the
        # previous page ended on it too, no row would be new, so the run goes on after the last row's key.
        run, at = last in (since, instant(page[0])), page[-1][stamp]
        since = last
        if run and keyset:
            try:
                pages = query(_within(where, or_(and_(eq(stamp, at), gt(key, page[-1][key])), gt(stamp, at))))
                page = list(itertools.islice(pages, PAGE_SIZE))
                continue
            except (InvalidArguments, InvalidRequest, ServerError) as error:  # the first: a key that is no GUID
                if error.retryable:
                    raise
                log.warning("%s: poll %s: %s refused to page after a change time and key (%s); the run of rows "
                            "changed at %s is read by itself", workspaces.current().name, feed.entity_set,
                            feed.view, error, at)
                keyset = False
        if run:
            whole = _whole_run(client, feed, at, select)
            rows += [row for row in whole if version(row) not in seen]
            seen.update(map(version, whole))
        pages = query(_within(where, gt(stamp, at) if run else ge(stamp, last)))
        page = list(itertools.islice(pages, PAGE_SIZE))
    raise InLooxError(f"a poll of {feed.view} runs to more than {client.max_pages} pages")


def _within(where, after):
    return after if where is None else and_(where, after)


def _whole_run(client: Client, feed: ChangeFeed, at: str, select: list[str] | None) -> list[dict]:
    """Every row of a one-stamp feed changed at `at`, for an InLoox that cannot page them after a key: read through
    its own paging, again until no row left them while they were read; raises InLooxError after RUN_READS reads.

    A row leaves a run when it changes again or is deleted, and none joins it (its change time is past). On a server
    that pages by $skip, a row that leaves a page read already makes the row behind it slide into that page, unseen,
    so a read counts only if as many rows are there before it, in it and after it.
    """
    condition = eq(feed.stamp, at)
    for _ in range(RUN_READS):
        before = client.count(feed.view, condition)
        rows = list(client.query(feed.view, filter=condition, select=select, orderby=[feed.column(feed.key)]))
        if len(rows) == before == client.count(feed.view, condition):
            return rows
    raise InLooxError(f"the rows of {feed.view} changed at {at} kept changing while they were read "
                      f"({RUN_READS} reads)", method="GET")


def _order(feed: ChangeFeed, stamps: tuple[Stamp, ...]) -> list[str]:
    """By the one stamp (then key), or by key alone when rows have several stamps to be newest by."""
    return [feed.stamp, feed.column(feed.key)] if len(stamps) == 1 else [feed.column(feed.key)]


def _usable(feed: ChangeFeed, stamps: tuple[Stamp, ...], rows) -> tuple[list[dict], list[dict]]:
    """The rows a poll can use, and those of them the cursor may move past; the others logged and skipped.

    A row that cannot be compared (not an object, no key, a change time that is no instant, or
    none at all: it was asked for by its change time) is one answer's fault: the set's
    other changes go on. Its own change is not seen, so the cursor must not pass it: a feed with one
    stamp is read in stamp order, so the rows before it may count; one read in key order (several
    stamps) keeps its cursor until InLoox answers the row right.
    """
    usable, passed, skipped = [], [], False
    for number, row in enumerate(rows, start=1):
        problem = row_problem(row, (feed.column(feed.key),), [s.column for s in stamps])
        if not problem and all(row.get(s.column) is None for s in stamps):
            problem = "it has no change time, though it was read for one"
        if problem:
            log.warning("%s: poll %s: row %d of %s skipped: %s", workspaces.current().name, feed.entity_set,
                        number, feed.view, problem)
            skipped = True
            continue
        usable.append(row)
        if not skipped:
            passed.append(row)
    return usable, passed if len(stamps) == 1 or not skipped else []


def row_problem(row, key: tuple[str, ...], stamps: list[str] = ()) -> str:
    """Why a row of an InLoox answer cannot be compared with its snapshot ("" when it can).

    Its key must be there, as text or a number (not always a GUID: FeatureFlagInfo's is text, and a
    scan may watch it), and each change time an ISO date-time with a UTC offset, or null:
    `2025-04-01T09:00:00` names no instant, and Python cannot even compare it with one.
    """
    if not isinstance(row, dict):
        return f"it is not an object but {reprlib.repr(row)}"
    for column in key:
        if problem := key_problem(row.get(column)):
            return f"its key {column} is {problem}"
    for column in stamps:
        if row.get(column) is not None and parse_instant(row[column]) is None:
            return f"its change time {column} is {reprlib.repr(row[column])}, not a date-time with a UTC offset"
    return ""


def _newest_stamp(stamps: tuple[Stamp, ...], row: dict) -> Stamp:
    """Which of the row's stamps moved last (the row's own when none is set)."""
    return max(stamps, key=lambda s: _instant(row.get(s.column) or ""))


def _row_instant(stamps: tuple[Stamp, ...], row: dict) -> datetime:
    """When the row last changed, by the newest of its stamps."""
    return _instant(row.get(_newest_stamp(stamps, row).column) or "")


def _snapshot(feed: ChangeFeed, watched: list[str], stamps: tuple[Stamp, ...], row: dict) -> dict:
    return {STAMP: row.get(_newest_stamp(stamps, row).column), **{f: row.get(feed.column(f)) for f in watched}}


def _changes(feed, watched, stamps, rows, snapshots) -> tuple[list[_Change], dict]:
    """Rows that changed a watched field (or are new), and the quiet rows' refreshed snapshots."""
    found, quiet, latest = [], {}, {}
    for row in rows:
        # A view may list one entity twice (a task with two joined rows): once is enough. So does a
        # read whose pages go by change time when the entity changes again while they are read: its
        # newer row comes on a later page, and the cursor moves past it, so that row is the one to keep.
        key = str(row[feed.column(feed.key)])
        if key not in latest or _row_instant(stamps, row) > _row_instant(stamps, latest[key]):
            latest[key] = row
    for key, row in latest.items():
        new, old = _snapshot(feed, watched, stamps, row), snapshots.get(key)
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


def _split(feed: ChangeFeed, stamps: tuple[Stamp, ...], rows: list, since: datetime) -> tuple[list, list[dict]]:
    """A read of every row as the rows the poll's filter would have read, and the older ones (no stamp since).

    A row that cannot be read right goes with the first, whose checks say why it is skipped.
    """
    recent, older = [], []
    for row in rows:
        old = not row_problem(row, (feed.column(feed.key),), [s.column for s in stamps]) and all(
            row.get(s.column) is None or parse_instant(row[s.column]) < since for s in stamps)
        (older if old else recent).append(row)
    return recent, older


def _learned(store: SnapshotStore, feed: ChangeFeed, watched: list[str], stamps: tuple[Stamp, ...],
             rows: list[dict], *, besides: set[str]) -> dict:
    """The snapshots of rows that did not change since the cursor, with the fields newly watched added.

    What a snapshot holds already is kept as it is (a change of it is the change feed's to see); a
    row without one, which no poll read since the baseline, is learned whole, so that its next change
    is an update rather than a created entity. An entity the view also lists among the recent rows
    (`besides`) is theirs to snapshot.
    """
    snapshots = {key: _snapshot(feed, watched, stamps, row) for row in rows
                 if (key := str(row[feed.column(feed.key)])) not in besides}
    learned = {}
    for key, old in store.load(snapshots).items():
        new = {**snapshots[key], **(old or {})}
        if new != old:
            learned[key] = new
    return learned


def _emit(client, connection, store, feed, stamps, found, settings, result) -> None:
    entities = _fetch(client, feed, [c.key for c in found])
    hops = guards.hops_of(connection, feed.entity_set, [c.key for c in found])
    for change in found:
        event = _event(feed, stamps, change, entities.get(change.key, {}), settings, hops.get(change.key, 0))
        accepted = submit_event(
            connection, event, dedup_key=seen_key(event),
            dedup_ttl=settings.dedup_ttl,
            also=lambda pipe, c=change, ours=event.chained: _store(pipe, store, feed, c, ours),
        )
        if accepted:
            result.accepted.append(event.id)
        else:
            result.duplicates += 1


def _store(pipe, store: SnapshotStore, feed: ChangeFeed, change: _Change, ours: bool) -> None:
    """The event's bookkeeping: the new snapshot, and the note of our write, used up by the change it caused.

    Left in place, the note would mark a person's later delete of the entity (which the sweep
    finds, with no author) as ours.
    """
    store.save(pipe, change.key, change.snapshot)
    if ours:
        guards.forget_write(pipe, feed.entity_set, change.key)


def _event(feed: ChangeFeed, stamps: tuple[Stamp, ...], change: _Change, entity: dict, settings: PollSettings,
           hops: int = 0) -> Event:
    newest = _newest_stamp(stamps, change.row)
    stamp = change.row.get(newest.column)
    actor = str(change.row.get(newest.changed_by) or "") if newest.changed_by else ""
    # Where InLoox names nobody (Budget, Document), the note our worker left on the entity decides.
    chained = actor == settings.own_contact_id if newest.changed_by else hops > 0
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
            if not row_problem(row, (feed.key,)):  # else the event carries the view's row, as for a missing one
                entities[str(row[feed.key])] = row
    return entities


def _plain(feed: ChangeFeed, row: dict) -> dict:
    return {name: value for column, value in row.items() if (name := feed.field(column)) is not None}


def hold_flood(connection: redis.Redis, entity_set: str, events: list[Event], limit: int, *,
               keep: int = PollSettings.held_keep) -> int:
    """Too many changes at once (a bulk edit or an import): keep their events for a person to release, the newest
    `keep` of the set's held ones."""
    key = workspaces.key(f"poll:{entity_set}:held")
    with connection.pipeline() as pipe:
        pipe.rpush(key, *(json.dumps(e.to_dict(), default=str) for e in events))
        pipe.ltrim(key, -keep, -1)
        length = pipe.execute()[0]
    log.warning("poll %s: %d changes held (flood limit %d); nothing was run", entity_set, len(events), limit)
    if length > keep:
        log.warning("poll %s: %d older held changes dropped: at most %d are kept until a person releases them",
                    entity_set, length - keep, keep)
    return len(events)


def sweep_deleted(client: Client, connection: redis.Redis, feed: ChangeFeed,
                  settings: PollSettings = PollSettings()) -> PollResult:
    """Find deleted entities (invisible to a timestamp poll) by listing every key; emit `deleted`.

    A key no longer listed is looked up again first (one request per FETCH_CHUNK of them).
    """
    store = SnapshotStore(connection, feed.entity_set, workspaces.current().prefix)
    # Known keys first: an entity created after this line cannot be mistaken for a deleted one.
    known = store.keys()
    existing = {_listed_key(feed, number, row)
                for number, row in enumerate(client.query(feed.entity_set, select=[feed.key]), start=1)}
    result = PollResult(feed.entity_set, rows=len(existing))
    missing = {k: s for k, s in store.load(sorted(known - existing)).items() if s is not None}
    # Looked up again by key, as a scan does: where pages go by $skip, a delete elsewhere while they are
    # read moves a row onto the page already read, and the listing never has it.
    there = _still_there(client, feed, list(missing))
    gone = {k: s for k, s in missing.items() if k not in there}
    hops = guards.hops_of(connection, feed.entity_set, gone)
    for key, snapshot in gone.items():
        # The last change seen is in the id: two sweeps of one delete are one event, while an entity put back
        # under its key and deleted again (within the dedup claim's week) is a delete of its own.
        event = deleted_event(feed.entity_set, key, snapshot, _instant(snapshot.get(STAMP) or ""),
                              f"inloox:{feed.entity_set}:{key}:{snapshot.get(STAMP)}:deleted", hops[key])
        if submit_event(connection, event, dedup_key=seen_key(event),
                        dedup_ttl=settings.dedup_ttl,
                        also=lambda pipe, k=key: store.forget(pipe, k)):
            result.accepted.append(event.id)
    return result


def _still_there(client: Client, feed: ChangeFeed, keys: list[str]) -> set[str]:
    """Those of `keys` InLoox lists when asked by key, a chunk of keys per request."""
    there = set()
    for start in range(0, len(keys), FETCH_CHUNK):
        rows = client.query(feed.entity_set, filter=or_(*(eq(feed.key, k) for k in keys[start:start + FETCH_CHUNK])),
                            select=[feed.key])
        there.update(_listed_key(feed, number, row) for number, row in enumerate(rows, start=1))
    return there


def _listed_key(feed: ChangeFeed, number: int, row) -> str:
    """A key the sweep reads; a row it cannot read fails the sweep: skipped, its entity would look deleted."""
    return str(readable_row(row, (feed.key,), f"sweep {feed.entity_set}: row {number} of {feed.entity_set}")[feed.key])


def readable_row(row, key: tuple[str, ...], which: str) -> dict:
    """`row`, if its key can be read; else an InLooxError naming `which` row: a read that must know every row (a
    baseline, a sweep, a scan) fails, keeps nothing, and is tried again."""
    if problem := row_problem(row, key):
        raise InLooxError(f"{which} cannot be read: {problem}", method="GET")
    return row


def deleted_event(entity_set: str, key: str, snapshot: dict, occurred_at: datetime, event_id: str,
                  hops: int = 0) -> Event:
    """A `deleted` event from the entity's last snapshot; chained when our own delete left a note (hops > 0)."""
    return Event(source="inloox", kind="deleted", entity_set=entity_set, key=key, occurred_at=occurred_at,
                 id=event_id, entity={f: v for f, v in snapshot.items() if f != STAMP},
                 chained=hops > 0, payload={"hops": hops} if hops else {})


def _baseline(client, store, feed, watched, stamps) -> PollResult:
    """First poll: remember every row as it is now and fire nothing.

    Every row, or none: a row left out has no snapshot, so once InLoox answers it right a later poll
    takes the entity, there all along, for a created one, and rules `on: created` write for it. A row
    whose key cannot be read fails the baseline (taken again at the next poll), as it fails a sweep;
    one whose change time cannot be read is still known by its key, and is remembered without moving
    the cursor.
    """
    key, columns = feed.column(feed.key), [s.column for s in stamps]
    # A row whose key cannot be read fails it; one whose change time cannot be read is known by its key.
    # Read as a poll is (`_read`): on a server that pages by $skip, a row that slid into a page read already would
    # have no snapshot, and its next change would be taken for a created entity.
    rows = [readable_row(row, (key,), f"baseline {feed.entity_set}: row {number} of {feed.view}")
            for number, row in enumerate(_read(client, feed, stamps, None, _select(feed, watched, stamps)), start=1)]
    snapshots = {str(r[key]): _snapshot(feed, watched, stamps, r) for r in rows}
    dated = [r for r in rows if not row_problem(r, (key,), columns)]
    store.save_many(snapshots, _newest(None, dated, stamps) or "1970-01-01T00:00:00Z", fields=watched)
    return PollResult(feed.entity_set, rows=len(snapshots), baseline=True)


def _newest(cursor: str | None, rows: list[dict], stamps: tuple[Stamp, ...]) -> str | None:
    """The latest of the cursor and the rows' timestamps (compared as instants, kept as text)."""
    seen = [v for v in (cursor, *(r.get(s.column) for r in rows for s in stamps)) if v]
    return max(seen, key=_instant) if seen else None


def _instant(stamp: str) -> datetime:
    return parse_instant(stamp) or datetime.min.replace(tzinfo=timezone.utc)


def seen_key(event: Event) -> str:
    """The event's dedup claim in the current workspace."""
    return workspaces.key("poll:seen:" + hashlib.sha256(event.id.encode()).hexdigest()[:32])


def release_held(connection: redis.Redis, entity_set: str, settings: PollSettings = PollSettings()) -> int:
    """Hand a held flood's events to intake after all (a person decided); returns how many."""
    key = workspaces.key(f"poll:{entity_set}:held")
    released = 0
    while (raw := connection.lpop(key)) is not None:
        event = Event.from_dict(json.loads(raw))
        released += submit_event(connection, event, dedup_key=seen_key(event),
                                 dedup_ttl=settings.dedup_ttl)
    return released
