"""Inbound webhooks: `POST /hooks/<source>`, signed per Standard Webhooks, acknowledged once durable.

Every sender's delivery takes this one route, so it is answered in front of Flask: `Intake` wraps the app's
`wsgi_app` (the way Flask's docs add WSGI middleware) and answers `/hooks/<source>` and
`/workspaces/<ws>/hooks/<source>` itself, with Werkzeug's request (the body limit, headers and content type Flask's
own request reads) inside an app context (for web/resources.py). Flask's request context, URL map, request hooks and
`jsonify` around the view were a quarter of the web's CPU per acknowledgement (bench/RESULTS.md section 48). Errors
have the shape of every other route's (web/errors.py); every other path is Flask's.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import redis
from flask import Flask, abort, current_app
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed, NotFound, TooManyRequests
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wrappers import Request

from engine.bodies import BodyError, decode_text, parse_json
from engine.events import Event
from web import errors
from web.resources import get_redis
from web.signatures import SignatureError, verify_standard_webhook
from web.workspace import NO_DEFAULT, served_workspace
from workers import eventlog, metrics, workspaces
from workers.intake import accept_event
from workers.metering import limits
from workers.outbound import OutboundPolicy
from workers.secrets import SecretsKeyError

MAX_BODY_BYTES = 64 * 1024
# Headers kept with the event (the id also in every key and record made of it): waitress takes a header of
# 256 KB, which a sender would otherwise add to each event in the Redis every customer shares. Standard
# Webhooks ids are ~30 characters ("msg_" and 27), content types a few dozen.
MAX_KEPT_HEADER_CHARS = 256
# Senders retry for up to ~3 days; remembering ids for 5 makes every retry a duplicate.
DEDUP_TTL_SECONDS = 5 * 24 * 3600
BACKLOG_RETRY_SECONDS = 60  # Retry-After while the workspace's backlog is at its limit (workers/workspaces.py)
ALLOWED = ("OPTIONS", "POST")  # what a 405 and an OPTIONS name, as Flask's routing would for a POST route


def init_app(app: Flask) -> None:
    """Answer the webhook route in front of the app's other routes."""
    app.wsgi_app = Intake(app, app.wsgi_app)


class Intake:
    """The app's WSGI callable: the webhook route answered here, everything else passed to `wsgi_app` (Flask's)."""

    def __init__(self, app: Flask, wsgi_app):
        self.app, self.wsgi_app = app, wsgi_app

    def __call__(self, environ, start_response):
        route = _route(environ.get("PATH_INFO", ""))
        if route is None:
            return self.wsgi_app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "")
        request = Request(environ)
        request.max_content_length = MAX_BODY_BYTES  # larger bodies end in 413 before being read
        with self.app.app_context():
            try:
                if method == "OPTIONS":
                    # Flask resolved the workspace before its own OPTIONS answer: one not served is a 404 here too.
                    _workspace(route[0])
                    start_response("200 OK", [("Allow", ", ".join(ALLOWED)), ("Content-Length", "0")])
                    return [b""]
                if method != "POST":
                    raise MethodNotAllowed(valid_methods=ALLOWED)
                body, status, headers = _answer(*route, request)
            except HTTPException as exc:
                body, status, headers = errors.problem(exc, MAX_BODY_BYTES)
            except SecretsKeyError as exc:
                body, status, headers = errors.problem(errors.secrets_unavailable(exc))
            except Exception:
                if self.app.config["PROPAGATE_EXCEPTIONS"] or self.app.testing or self.app.debug:
                    raise  # as Flask does: the test or the debugger sees the traceback
                self.app.logger.exception("Exception on %s [%s]", request.path, method)
                body, status, headers = errors.problem(InternalServerError())
        data = (json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode()
        start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers])
        # A HEAD answer has headers only (as Werkzeug's response gives it): waitress sends whatever it is given, and
        # a body after them would be read as the next answer on the connection, which a proxy may pass to another.
        return [] if method == "HEAD" else [data]


def _route(path: str) -> tuple[str | None, str] | None:
    """(workspace name, source) of a webhook path (None for the default workspace's), or None for any other path.

    Matched as Flask's URL map would, `<ws>` and `<source>` each one non-empty segment: PATH_INFO carries the path's
    bytes as Latin-1 (WSGI), read as UTF-8 as Werkzeug reads it."""
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "" and parts[1] == "hooks" and parts[2]:
        return None, _text_of(parts[2])
    if len(parts) == 5 and parts[0] == "" and parts[1] == "workspaces" and parts[2] and parts[3] == "hooks" \
            and parts[4]:
        return _text_of(parts[2]), _text_of(parts[4])
    return None


def _text_of(segment: str) -> str:
    return segment.encode("latin-1").decode(errors="replace")


def _answer(ws: str | None, source: str, request: Request) -> tuple[dict, int, list]:
    """The answer to a delivery for workspace `ws` (None: the default), counted as `rejected` if refused (4xx)."""
    token = workspaces.enter(_workspace(ws))
    try:
        try:
            return _receive(source, request)
        except HTTPException as exc:
            if 400 <= exc.code < 500:
                _count_rejected(source)
            raise
    finally:
        workspaces.leave(token)


def _workspace(ws: str | None) -> workspaces.Workspace:
    """The served workspace `ws` names (None: the default); 404 or 503 (an HTTPException) if there is none."""
    served = served_workspace(ws)
    if served is None:
        raise NotFound(NO_DEFAULT)
    return served


def _receive(source: str, request: Request) -> tuple[dict, int, list]:
    """Verify, store durably, then answer 202 (200 for a redelivery of an accepted id)."""
    secrets = workspaces.current().webhook_sources.get(source)
    if not secrets:
        ws = workspaces.current().name
        route = "/webhooks" if ws == workspaces.DEFAULT else f"/workspaces/{ws}/webhooks"
        abort(404, f"unknown webhook source {source!r} in workspace {ws!r}: add it with `flask webhooks add "
                   f"{source}{'' if ws == workspaces.DEFAULT else ' --workspace ' + ws}` or POST {route} "
                   f"{{\"source\": \"{source}\"}} (served at once, no restart)")
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
    event = _event(source, request, _json(text))
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
    return {"status": status, "event_id": event.id}, 202 if accepted else 200, []


def _count_rejected(source: str) -> None:
    """Count a refused delivery (unknown source, bad signature, bad body, a limit) as a `rejected` event."""
    known = source in workspaces.current().webhook_sources
    try:
        metrics.count(get_redis(), "events", source="webhook", outcome="rejected",
                      kind=source if known else "unknown")  # never a sender's arbitrary name
    except redis.RedisError:
        current_app.logger.warning("could not count a rejected webhook")


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


def _event(source: str, request: Request, body) -> Event:
    webhook_id = request.headers["webhook-id"]
    return Event(
        source="webhook", kind=source, id=f"webhook:{source}:{webhook_id}",
        occurred_at=datetime.now(timezone.utc),
        payload={"id": webhook_id, "body": body,
                 "headers": {"webhook-timestamp": request.headers.get("webhook-timestamp"),
                             "content-type": request.content_type}},
    )
