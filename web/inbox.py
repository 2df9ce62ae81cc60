"""A development inbox: `POST /dev/inbox` keeps what notifications send, `GET /dev/inbox` shows it.

`make run` points TEAM_CHANNEL_URL here (as an Apprise `json://` URL), so the example rules'
notifications can be seen without a Slack workspace. Registered only when DEV_INBOX is set.
"""
from __future__ import annotations

import json

from flask import Blueprint, jsonify, request

from web.resources import get_redis

bp = Blueprint("inbox", __name__, url_prefix="/dev/inbox")

KEEP = 100


@bp.post("")
def receive():
    """Keep one message (the newest KEEP are kept)."""
    if request.is_json:  # read through web.json_bodies: bounded, and a 400 saying why when unreadable
        message = request.get_json()
    else:
        message = {"text": request.get_data(as_text=True)[:10_000]}
    with get_redis().pipeline() as pipe:
        pipe.lpush("dev:inbox", json.dumps(message))
        pipe.ltrim("dev:inbox", 0, KEEP - 1)
        pipe.execute()
    return jsonify(status="kept"), 201


@bp.get("")
def show():
    """The kept messages, newest first."""
    return jsonify(messages=[json.loads(m) for m in get_redis().lrange("dev:inbox", 0, -1)])
