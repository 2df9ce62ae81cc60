"""The event log over HTTP: `GET /events`, `GET /events/<id>`, `POST /events/replay` (admin token).

Also under `/workspaces/<ws>/events`. Listing filters: ?since=1h, ?source=, ?kind=, ?unmatched=1,
?limit= (at most 500), ?before= (the listing's `next`). A replay body names the events (`events`: ids) or a time
(`since`), and optionally `rule`, `force` and `dry_run`; it answers what it started and what it left alone.

A request reads at most event_history.SCAN_PER_REQUEST entries of the log on its thread (the web's threads and CPU
answer every workspace's webhooks): a listing whose filters match few events answers those it found, its `next`
and a `note` that says so, as Temporal's and n8n's listings hand back a page token; a look-up of an event id that
neither a trace nor the newest entries place reads the rest of the log on a heavy request's turn (web/heavy.py).
"""
from __future__ import annotations

import time

from flask import Blueprint, abort, jsonify, request

from engine.durations import parse_duration
from web.heavy import limited
from web.openapi import check_query, request_body
from web.resources import get_context, get_redis
from web.workspace import require_admin_token
from workers import event_history, eventlog
from workers.replay import MAX_EVENTS, ReplayRefused, outcome_counts, replay

bp = Blueprint("events", __name__, url_prefix="/events")
bp.before_request(require_admin_token)
bp.before_request(check_query)


@bp.get("")
def index():
    """Logged events, newest first, with what became of each."""
    args = request.args
    try:
        since = since_epoch(args.get("since"))
    except ReplayRefused as exc:
        abort(400, str(exc))
    before = args.get("before")
    if before is not None and not event_history.is_entry_id(before):
        abort(400, f"before {before[:40]!r} is not an entry id of the log (such as 1764480000000-0): "
                   "pass the next of the listing to go on from")
    page = event_history.listing(get_redis(), since=since, before=before, source=args.get("source"),
                                 kind=args.get("kind"), unmatched=args.get("unmatched") in ("1", "true"),
                                 limit=args.get("limit", 50, type=int), scan=event_history.SCAN_PER_REQUEST)
    answer = {"events": [e.summary() for e in page.events], "next": page.next}
    if page.cut:
        answer["note"] = (f"looked at {page.looked:,} entries of the log (the most one request reads) and found "
                          f"{len(page.events)} that match; older ones may match too: ask again, with the same filters "
                          f"and before={page.next}")
    return jsonify(answer)


@bp.get("/<event_id>")
def show(event_id: str):
    """One event: its payload, its acceptance, the rule-set version it met, its trace and runs."""
    try:
        found = event_history.find(get_redis(), event_id, scan=event_history.SCAN_PER_REQUEST)
    except event_history.SearchCut:
        found = _found_in_whole_log(event_id)
    if found is None:
        abort(404, f"no event {event_id} in the event log (kept {event_history.KEPT_FOR})")
    return jsonify(event=found.event, summary=found.summary(), trace=found.trace)


@limited  # an id neither a trace nor the newest entries place: up to the log's 100,000 entries, ~1.2 s of CPU
def _found_in_whole_log(event_id: str):
    return event_history.find(get_redis(), event_id)


@bp.post("/replay")
@limited  # seconds of a web thread: one at a time per process and workspace, else 429 (web/heavy.py)
def replay_events():
    """Match logged events against the current rules again and start the runs they make now (202)."""
    body = request_body()  # an object naming either `since` or `events` (schemas/openapi.json)
    try:
        entries = selected_entries(get_redis(), since=body.get("since"), event_ids=body.get("events") or ())
        done = replay(get_context(), entries, rule=body.get("rule"), force=body.get("force") is True,
                      dry_run=body.get("dry_run") is True, by="admin")
    except ReplayRefused as exc:
        abort(422, str(exc))
    return jsonify(replay_summary(done, dry_run=body.get("dry_run") is True)), 200 if body.get("dry_run") else 202


def since_epoch(text: str | None) -> float | None:
    """`1h`, `10m`, `7d` before now, in epoch seconds; None when not given; ReplayRefused when unreadable."""
    if not text:
        return None
    delta = parse_duration(text)
    if delta is None:
        raise ReplayRefused(f"since {text!r} is not a duration such as 10m, 1h or 7d")
    # Further back than 1970 is every event kept: the log's ids are milliseconds since then, and a
    # negative one is an error of Redis's (a 500).
    return max(0.0, time.time() - delta.total_seconds())


def selected_entries(connection, *, since: str | None, event_ids) -> list:
    """The log entries a replay names: by event id (each must be kept) or accepted since a time."""
    if bool(since) == bool(event_ids):
        raise ReplayRefused("name the events to replay: either a time (since, e.g. 1h) or event ids, not both")
    if since:
        # One more than a replay takes tells that there are too many, without reading the log's 100,000.
        entries = event_history.entries_since(connection, since_epoch(since), limit=MAX_EVENTS + 1)
        if len(entries) > MAX_EVENTS:
            raise ReplayRefused(f"more than {MAX_EVENTS} events since {since}; a replay takes at most {MAX_EVENTS}"
                                " (narrow since)")
        return entries
    if isinstance(event_ids, str) or not all(isinstance(i, str) for i in event_ids):
        raise ReplayRefused("events must be a list of event ids")
    named = list(dict.fromkeys(event_ids))  # an event named twice is replayed once
    if len(named) > MAX_EVENTS:  # refused before any is looked for: each costs reads of the log
        raise ReplayRefused(f"{len(named)} events; a replay takes at most {MAX_EVENTS}")
    found = event_history.entries_of(connection, named)
    missing = [i for i in named if i not in found]
    if missing:
        raise ReplayRefused(f"no event {missing[0]} in the event log")
    return sorted({e.id: e for e in found.values()}.values(), key=lambda e: eventlog.id_order(e.id))  # log order


def replay_summary(done, *, dry_run: bool) -> dict:
    return {"dry_run": dry_run, "events": len(done), "started": sum(len(d.started) for d in done),
            "already": sum(len(d.already) for d in done), "skipped": sum(bool(d.skipped) for d in done),
            "outcomes": outcome_counts(done),  # events per outcome: they add up to "events"
            "replayed": [d.to_dict() for d in done]}
