"""What became of each logged event: the event log (workers/eventlog.py) joined with the events' traces.

    history(connection, since=…, source=…, kind=…, unmatched=True, limit=50)   newest first
    newest(connection, limit=10_000)                                             the same, read as it is consumed
    listing(connection, before=…, scan=SCAN_PER_REQUEST, …)                     the same, a page and its cursor
    find(connection, "evt-id" or "1764480000000-0")                              one event
    entries_of(connection, ["evt-id", …])                                        many, for a replay
    read_since(connection, since, limit=…), count_since(…)                      oldest first, for what-if

Each event's `status`:
    waiting      accepted, no worker has finished handling it yet
    ran          matched rules; `runs` names the runs it made
    unmatched    handled; no rule matched (the trace says why each candidate did not)
    not handled  every delivery to a worker failed (see the trace's error); replay can retry it
    unknown      handled, but its trace is no longer kept (traces are kept for fewer events than the log)

A summary also names the event's entity as a person knows it (`name`: the entity's Name, DisplayName,
Title…, or a webhook body's title), and says whether the event is one of our own writes coming back
(`own_write`: no rule runs for those unless it allows chained events).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from workers import eventlog
from workers.runs import TRACES_KEEP, decode_record, load_trace
from workers.workspaces import key

WAITING, RAN, UNMATCHED, NOT_HANDLED, UNKNOWN = "waiting", "ran", "unmatched", "not handled", "unknown"
KEPT_FOR = (f"{eventlog.EVENTS_MAX_AGE // 86400} days, the newest {eventlog.EVENTS_KEEP:,} events; "
            f"their traces: the newest {TRACES_KEEP:,}")
PAGE = 200  # entries read from the stream per round trip while filtering
SCAN_MAX = 100_000  # entries looked at, at most, for one listing (the log's default size)
# Entries one web request looks at, at most (~55 ms of CPU; the log's 100,000 took 1.2 s, and a few such requests at
# once held the GIL of the process that answers every workspace's webhooks): a listing whose filters match little
# answers what it found with a cursor to go on from, and a look-up of an id no trace places reads the rest of the log
# only on a heavy request's turn (web/heavy.py).
SCAN_PER_REQUEST = 5_000
# The fields that name an entity or a webhook's subject, most telling first; compared case-insensitively
# (InLoox writes Name and DisplayName, a form's body title or name). DynamicTaskItem's columns are prefixed.
NAME_FIELDS = ("name", "displayname", "title", "subject", "taskitem_name", "project_name")
NAME_MAX = 120  # characters of a name shown; the event page holds the whole payload


@dataclass
class LoggedEvent:
    """An event of the log with what became of it."""

    entry: eventlog.Entry
    status: str
    runs: list[str] = field(default_factory=list)
    trace: dict | None = None  # as stored: matched rules name their runs instead of holding plans

    @property
    def event(self) -> dict:
        return self.entry.event

    def summary(self) -> dict:
        trace = self.trace or {}
        return {"id": self.event["id"], "entry": self.entry.id, "accepted_at": self.entry.accepted_at,
                "source": self.event.get("source"), "kind": self.event.get("kind"),
                "entity_set": self.event.get("entity_set"), "key": self.event.get("key"),
                "status": self.status, "runs": self.runs, "ruleset_version": trace.get("ruleset_version"),
                "broken_files": trace.get("broken_files", []), "replays": trace.get("replays", []),
                "error": trace.get("error"), "name": event_name(self.event),
                "own_write": bool(self.event.get("chained"))}


def event_name(event: dict) -> str | None:
    """The name of the event's entity: from the entity, else its changed fields, else a webhook's body."""
    changed = {f: _newest(v) for f, v in (event.get("changes") or {}).items()}
    for fields in (event.get("entity"), changed, (event.get("payload") or {}).get("body")):
        named = _named(fields) if isinstance(fields, dict) else None
        if named:
            return named if len(named) <= NAME_MAX else named[:NAME_MAX - 1] + "…"
    return None


def _named(fields: dict) -> str | None:
    lowered = {str(k).lower(): v for k, v in fields.items()}
    for name in NAME_FIELDS:
        value = lowered.get(name)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())  # a name spread over lines reads as one line in a table
    return None


def _newest(change) -> object:
    """A logged change's value after it, or before it for a deletion ([from, to] as Event.to_dict writes it)."""
    if isinstance(change, (list, tuple)) and len(change) == 2:
        return change[1] if change[1] is not None else change[0]
    return None


@dataclass
class Listing:
    """A page of the log's events, and where to go on from: `next`, an entry id to list before (None: nothing older
    is left); `cut` when the page stopped at its scan's bound before it had `limit` events."""

    events: list[LoggedEvent]
    next: str | None
    looked: int
    cut: bool


def history(connection: redis.Redis, *, since: float | None = None, source: str | None = None,
            kind: str | None = None, unmatched: bool = False, limit: int = 50) -> list[LoggedEvent]:
    """Logged events accepted at or after `since` (epoch seconds), newest first, filtered."""
    return listing(connection, since=since, source=source, kind=kind, unmatched=unmatched, limit=limit).events


def listing(connection: redis.Redis, *, since: float | None = None, before: str | None = None,
            source: str | None = None, kind: str | None = None, unmatched: bool = False, limit: int = 50,
            scan: int = SCAN_MAX) -> Listing:
    """`history`, from the entry before `before` (an entry id) on, looking at `scan` entries of the log at most."""
    stream = eventlog.stream_key()
    low = f"{int(since * 1000)}-0" if since else "-"
    high, found, looked = f"({before}" if before else "+", [], 0
    handled = Handled(connection, stream)
    while len(found) < limit and looked < scan:
        count = min(PAGE, scan - looked)
        page = connection.xrevrange(stream, max=high, min=low, count=count)
        looked += len(page)
        entries = [eventlog.shown(i, f) for i, f in page]  # a damaged one shown as such, with its trace's error
        entries = [e for e in entries if (not source or e.event.get("source") == source)
                   and (not kind or e.event.get("kind") == kind)]
        for logged in _with_outcomes(connection, entries, handled):
            if not unmatched or logged.status in (UNMATCHED, NOT_HANDLED):
                found.append(logged)
            if len(found) == limit:  # the next page starts after the last event shown, not the last one read
                return Listing(found, logged.entry.id, looked, cut=False)
        if len(page) < count:  # the log (or `since`) ends here
            return Listing(found, None, looked, cut=False)
        high = "(" + eventlog.as_text(page[-1][0])
    return Listing(found, high[1:] if looked else None, looked, cut=True)


def newest(connection: redis.Redis, *, limit: int, page: int = PAGE) -> Iterator[LoggedEvent]:
    """`history(limit=limit)` unfiltered, read `page` entries at a time as it is consumed: an export's 10,000 events
    (webhook bodies of up to 64 KiB each) were all held at once."""
    stream, high, given = eventlog.stream_key(), "+", 0
    handled = Handled(connection, stream)  # one look at the workers' progress for the whole read, as `listing` takes
    while given < limit:
        count = min(page, limit - given)
        entries = connection.xrevrange(stream, max=high, min="-", count=count)
        yield from _with_outcomes(connection, [eventlog.shown(i, f) for i, f in entries], handled)
        given += len(entries)
        if len(entries) < count:  # the log ends here
            return
        high = "(" + eventlog.as_text(entries[-1][0])


class SearchCut(Exception):
    """A look-up read the `scan` newest entries of the log without finding its id, and the log holds older ones."""


def find(connection: redis.Redis, wanted: str, *, scan: int = SCAN_MAX) -> LoggedEvent | None:
    """The logged event with this event id (or stream entry id), with its whole trace; None if not kept.

    An event id no trace places (its event waiting, its trace trimmed, or none such) is looked for in the log, newest
    first: SearchCut when it is not among the `scan` newest entries and the log holds more."""
    stream = eventlog.stream_key()
    entry_id = wanted if is_entry_id(wanted) else None
    standing_in = wanted.removeprefix(f"{eventlog.DAMAGED}:")  # a damaged entry's stand-in names its place
    entry_id = entry_id or (standing_in if is_entry_id(standing_in) else None)
    trace = None if entry_id else load_trace(connection, wanted)
    if trace is not None and trace.get("entry"):
        entry_id = trace["entry"]
    entry = _entry_at(connection, stream, entry_id) if entry_id else _searched(connection, stream, wanted, scan)
    if entry is None:
        return None
    if trace is None:
        trace = load_trace(connection, entry.event["id"])
    logged = _with_outcomes(connection, [entry], Handled(connection, stream))[0]
    logged.trace = trace if trace is not None else logged.trace
    return logged


def entries_of(connection: redis.Redis, wanted: list[str]) -> dict[str, eventlog.Entry]:
    """The kept entries of these event ids (or entry ids), by the id asked for; ids not kept are left out.

    For replay: the ids a trace places are read in one round trip, the rest found in one pass over the
    log for all of them. Looked for one at a time, each event older than its trace read the log again.
    """
    stream, placed = eventlog.stream_key(), _placed(connection, wanted)
    unplaced = {w for w in wanted if w not in placed}
    return _entries_at(connection, stream, placed) | (_search(connection, stream, unplaced)[0] if unplaced else {})


def _placed(connection: redis.Redis, wanted: list[str]) -> dict[str, str]:
    """The entry id of each wanted id that is one, or whose event's trace names one."""
    traced = [w for w in wanted if not is_entry_id(w)]
    raws = connection.mget([key(f"trace:{w}") for w in traced]) if traced else []
    traces = {w: decode_record(raw) for w, raw in zip(traced, raws) if raw is not None}
    return {w: w for w in wanted if is_entry_id(w)} | {w: t["entry"] for w, t in traces.items() if t.get("entry")}


def _entries_at(connection: redis.Redis, stream: str, placed: dict[str, str]) -> dict[str, eventlog.Entry]:
    """The entries at these ids that the log still keeps (as `find`: one its trace names but trimmed is gone)."""
    with connection.pipeline(transaction=False) as pipe:
        for entry_id in placed.values():
            pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
        pages = pipe.execute(raise_on_error=False)  # an id past what Redis reads (99999999999999999999-0) is not kept
    return {w: entry for w, page in zip(placed, pages)
            if isinstance(page, list) and page and (entry := eventlog.readable(*page[0])) is not None}


def entries_since(connection: redis.Redis, since: float, *, limit: int = SCAN_MAX) -> list[eventlog.Entry]:
    """Every logged entry accepted at or after `since`, oldest first (for replay)."""
    return list(read_since(connection, since, limit=limit, page=1000))


def read_since(connection: redis.Redis, since: float, *, limit: int, page: int = PAGE) -> Iterator[eventlog.Entry]:
    """`entries_since`, read `page` entries at a time as it is consumed (for what-if): its 10,000 events (webhook
    bodies of up to 64 KiB each) were all held at once."""
    stream, low, given = eventlog.stream_key(), f"{int(since * 1000)}-0", 0
    while given < limit:
        entries = connection.xrange(stream, min=low, max="+", count=min(page, limit - given))
        if not entries:
            return
        readable = [e for i, f in entries if (e := eventlog.readable(i, f)) is not None]
        given += len(readable)
        yield from readable
        low = "(" + eventlog.as_text(entries[-1][0])


def count_since(connection: redis.Redis, since: float, *, after: str | None = None, limit: int,
                page: int = PAGE) -> int:
    """How many entries the log holds from `since` on (after the entry `after`, when given), `limit` at most: counted
    as they are read, none decoded, so damaged ones count too (for what-if's events the child did not take: decoding
    them to count them took ~2.3 s of the web's CPU for 10,000 webhook bodies, counting them takes ~0.1 s)."""
    stream, low, counted = eventlog.stream_key(), f"({after}" if after else f"{int(since * 1000)}-0", 0
    while counted < limit:
        count = min(page, limit - counted)
        entries = connection.xrange(stream, min=low, max="+", count=count)
        counted += len(entries)
        if len(entries) < count:  # the log ends here
            break
        low = "(" + eventlog.as_text(entries[-1][0])
    return counted


class Handled:
    """Tells whether the workers have finished handling an entry (no stream read per entry)."""

    def __init__(self, connection: redis.Redis, stream: str):
        group = eventlog.group_info(connection, stream)
        self.last = eventlog.id_order(eventlog.as_text(group["last-delivered-id"])) if group else (0, 0)
        self.pending = {eventlog.as_text(p["message_id"])
                        for p in connection.xpending_range(stream, eventlog.GROUP, "-", "+", 10_000)} if group else set()

    def __call__(self, entry_id: str) -> bool:
        return entry_id not in self.pending and eventlog.id_order(entry_id) <= self.last


def _with_outcomes(connection: redis.Redis, entries: list[eventlog.Entry], handled: Handled) -> list[LoggedEvent]:
    raws = connection.mget([key(f"trace:{e.event['id']}") for e in entries]) if entries else []
    return [_outcome(entry, decode_record(raw) if raw is not None else None, handled(entry.id))
            for entry, raw in zip(entries, raws)]


def _outcome(entry: eventlog.Entry, trace: dict | None, handled: bool) -> LoggedEvent:
    if trace is None:
        return LoggedEvent(entry, UNKNOWN if handled else WAITING)
    runs = list(trace.get("runs") or ())
    if trace.get("error") and not runs:
        return LoggedEvent(entry, NOT_HANDLED, runs, trace)
    if not handled and not runs:  # replayed or handled once already and being handled again
        return LoggedEvent(entry, WAITING, runs, trace)
    return LoggedEvent(entry, RAN if runs else UNMATCHED, runs, trace)


def _entry_at(connection: redis.Redis, stream: str, entry_id: str) -> eventlog.Entry | None:
    found = connection.xrange(stream, min=entry_id, max=entry_id, count=1)
    return eventlog.shown(*found[0]) if found else None


def _searched(connection: redis.Redis, stream: str, wanted: str, scan: int) -> eventlog.Entry | None:
    found, ended = _search(connection, stream, {wanted}, scan=scan)
    if wanted not in found and not ended:
        raise SearchCut(f"event {wanted} is not among the newest {scan:,} entries of the event log")
    return found.get(wanted)


def _search(connection: redis.Redis, stream: str, event_ids: set[str],
            scan: int = SCAN_MAX) -> tuple[dict[str, eventlog.Entry], bool]:
    """The newest entry holding each of `event_ids`: for events with no trace (waiting, or traces trimmed); and
    whether the search went as far as a whole one does (the log's end, or SCAN_MAX entries).

    One pass over the log, newest first, for all of them; it stops once each is found, or after `scan` entries."""
    high, looked, found = "+", 0, {}
    while looked < scan and len(found) < len(event_ids):
        count = min(1000, scan - looked)
        page = connection.xrevrange(stream, max=high, min="-", count=count)
        looked += len(page)
        for entry_id, fields in page:
            entry = eventlog.readable(entry_id, fields)
            if entry is not None and entry.event.get("id") in event_ids:
                found.setdefault(entry.event["id"], entry)
        if len(page) < count:
            return found, True  # the log ends here
        high = "(" + eventlog.as_text(page[-1][0])
    return found, looked >= SCAN_MAX or len(found) == len(event_ids)


def is_entry_id(text: str) -> bool:
    """`<ms>-<seq>` as Redis reads a stream id: ASCII digits, each part at most 64 bits. Anything else is looked
    for as an event id: str.isdigit() also takes "١" and "²", and Redis refused those, and a part past 64 bits,
    with an error (the event page's 500)."""
    ms, dash, seq = text.partition("-")
    return bool(dash) and all(p.isascii() and p.isdigit() and len(p) <= 20 and int(p) < 2 ** 64 for p in (ms, seq))
