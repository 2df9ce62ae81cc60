"""Inbound webhooks: `POST /hooks/<source>`, signed per Standard Webhooks, acknowledged once durable."""
from __future__ import annotations

import math
from datetime import datetime, timezone

import redis
from flask import Blueprint, abort, current_app, g, jsonify, request
from werkzeug.exceptions import TooManyRequests

from engine.bodies import BodyError, decode_text, parse_json
from engine.events import Event
from web.resources import get_redis
from web.workspace import require_workspace
from web.signatures import SignatureError, verify_standard_webhook
from workers import eventlog, metrics, workspaces
from workers.intake import accept_event
from workers.metering import limits
from workers.outbound import OutboundPolicy

bp = Blueprint("hooks", __name__, url_prefix="/hooks")
bp.before_request(require_workspace)

MAX_BODY_BYTES = 64 * 1024
# Headers kept with the event (the id also in every key and record made of it): waitress takes a header of
# 256 KB, which a sender would otherwise add to each event in the Redis every customer shares. Standard
# Webhooks ids are ~30 characters ("msg_" and 27), content types a few dozen.
MAX_KEPT_HEADER_CHARS = 256
# Senders retry for up to ~3 days; remembering ids for 5 makes every retry a duplicate.
DEDUP_TTL_SECONDS = 5 * 24 * 3600
BACKLOG_RETRY_SECONDS = 60  # Retry-After while the workspace's backlog is at its limit (workers/workspaces.py)


@bp.post("/<source>")
def receive(source: str):
    """Verify, store durably, then answer 202 (200 for a redelivery of an accepted id)."""
    secrets = workspaces.current().webhook_sources.get(source)
    if not secrets:
        ws = workspaces.current().name
        route = "/webhooks" if ws == workspaces.DEFAULT else f"/workspaces/{ws}/webhooks"
        abort(404, f"unknown webhook source {source!r} in workspace {ws!r}: add it with `flask webhooks add "
                   f"{source}{'' if ws == workspaces.DEFAULT else ' --workspace ' + ws}` or POST {route} "
                   f"{{\"source\": \"{source}\"}} (served at once, no restart)")
    request.max_content_length = MAX_BODY_BYTES  # larger bodies end in 413 before being read
    for name in ("webhook-id", "Content-Type"):
        if len(request.headers.get(name, "")) > MAX_KEPT_HEADER_CHARS:
            abort(400, f"the {name} header is {len(request.headers[name]):,} characters long; at most "
                       f"{MAX_KEPT_HEADER_CHARS} are accepted")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        abort(415, f"Content-Encoding {encoding!r} is not accepted: send the JSON body uncompressed")
    body = request.get_data(cache=False)
    text = _text(body)  # the signature covers the text: a body that is not UTF-8 cannot be verified
    try:
        verify_standard_webhook(body, request.headers, secrets)
    except SignatureError as exc:
        abort(401, f"webhook signature rejected: {exc}")
    event = _event(source, request.headers["webhook-id"], _json(text))
    own = workspaces.current().limits
    try:
        used = accept_event(get_redis(), event, dedup_key=workspaces.key(f"hooks:seen:{source}:{event.payload['id']}"),
                            dedup_ttl=DEDUP_TTL_SECONDS, backlog_limit=own.backlog_limit,
                            per_second=own.webhooks_per_second, per_day=own.events_per_day)
    except eventlog.DayFull as full:  # counted with the append: two web processes at once keep to the limit
        _alert(limits.alert_events, used=full.used)
        raise _day_full(limits.until_midnight()) from None
    except eventlog.BacklogFull as full:
        _alert(limits.alert_backlog, waiting=full.waiting)
        raise TooManyRequests(f"workspace {workspaces.current().name!r} has {full}; retry later",
                              retry_after=BACKLOG_RETRY_SECONDS) from None
    except eventlog.TooFast as fast:
        _alert(limits.alert_pace)
        wait = max(1, math.ceil(fast.wait))
        raise TooManyRequests(f"workspace {workspaces.current().name!r} accepts webhooks at {fast.per_second:g} a second "
                              f"(after a burst of {fast.burst:,}); retry in {wait} s", retry_after=wait) from None
    except redis.RedisError:
        current_app.logger.exception("webhook %s from %s not stored", event.id, source)
        abort(503, "the event could not be stored; retry later")
    accepted = used is not None
    if accepted and own.events_per_day:
        # At 80 % and 100 % of events_per_day, by the count the event was stored with: only an event counted sets
        # an alert off (not a redelivery, nor one refused); the refusal over the limit alerts above (DayFull).
        _alert(limits.alert_events, used=used)
    status = "accepted" if accepted else "duplicate"
    return jsonify(status=status, event_id=event.id), 202 if accepted else 200


@bp.after_request
def count_rejected(response):
    """Count refused deliveries (unknown source, bad signature, bad body) as `rejected` events."""
    if 400 <= response.status_code < 500 and "workspace_token" in g:  # not for unknown workspaces
        source = (request.view_args or {}).get("source")
        known = source in workspaces.current().webhook_sources
        try:
            metrics.count(get_redis(), "events", source="webhook", outcome="rejected",
                          kind=source if known else "unknown")  # never a sender's arbitrary name
        except redis.RedisError:
            current_app.logger.warning("could not count a rejected webhook")
    return response


def _alert(alert, **details) -> None:
    """`alert` the workspace of its usage or that its webhooks are refused (once per period: a claim in Redis). A
    Redis error is told in the log, not to the sender: its webhook was stored, or refused, all the same."""
    try:
        alert(get_redis(), workspaces.current(), OutboundPolicy.from_setting(current_app.config["OUTBOUND_ALLOW"]),
              **details)
    except redis.RedisError:
        current_app.logger.warning("a usage alert could not be claimed; asked again with the next webhook over it")


def _day_full(wait: int) -> TooManyRequests:
    """The 429 of a webhook over the workspace's events_per_day, to retry in `wait` seconds (midnight UTC)."""
    limit = workspaces.current().limits.events_per_day
    return TooManyRequests(f"workspace {workspaces.current().name!r} accepted its limit of {limit} events today; "
                           f"retry after midnight UTC (in {wait}s)", retry_after=wait)


def _text(body: bytes) -> str:
    try:
        return decode_text(body)
    except BodyError as exc:
        hint = " (it looks gzip-compressed: send it uncompressed)" if body[:2] == b"\x1f\x8b" else ""
        abort(400, f"{exc}{hint}")


def _json(text: str):
    """The body as data; a lone surrogate (JavaScript cut a string inside an emoji) becomes U+FFFD."""
    try:
        return parse_json(text, repair=True)
    except BodyError as exc:
        abort(400, str(exc))


def _event(source: str, webhook_id: str, body) -> Event:
    return Event(
        source="webhook", kind=source, id=f"webhook:{source}:{webhook_id}",
        occurred_at=datetime.now(timezone.utc),
        payload={"id": webhook_id, "body": body,
                 "headers": {"webhook-timestamp": request.headers.get("webhook-timestamp"),
                             "content-type": request.content_type}},
    )
