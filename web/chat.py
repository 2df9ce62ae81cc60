"""Chat commands: `POST /chat/slack` (slash commands) and `POST /chat/teams` (outgoing webhooks).

Both verify the request's signature, then hand the command to `web.commands.answer` and reply with
its text: Slack ephemerally within its 3 s (the run's result goes to `response_url` later, see
`workers/chat.py`), Teams synchronously within its 5 s.
"""
from __future__ import annotations

import re

import redis
from flask import Blueprint, abort, current_app, jsonify, request

from inloox import InLooxError
from web.commands import ChatCommand, answer
from web.signatures import SignatureError, verify_slack, verify_teams
from web.workspace import require_workspace
from workers import workspaces

bp = Blueprint("chat", __name__, url_prefix="/chat")
bp.before_request(require_workspace)

MAX_BODY_BYTES = 64 * 1024
_MENTION = re.compile(r"<at>.*?</at>", re.DOTALL)


@bp.post("/slack")
def slack():
    """A slash command: `/inloox done Write report` → an ephemeral reply."""
    request.max_content_length = MAX_BODY_BYTES
    body = request.get_data(cache=True)
    try:
        verify_slack(body, request.headers, workspaces.current().slack_signing_secret)
    except SignatureError as exc:
        abort(401, f"Slack signature rejected: {exc}")
    form = request.form
    if not form.get("trigger_id"):
        abort(400, "no trigger_id")
    command = ChatCommand(
        surface="slack", request_id=form["trigger_id"], text=form.get("text", ""),
        user={"id": form.get("user_id", ""), "name": form.get("user_name", "")},
        response_url=form.get("response_url") or None, prefix=f"{form.get('command', '/inloox')} ")
    return jsonify(response_type="ephemeral", text=_answer(command))


@bp.post("/teams")
def teams():
    """An outgoing-webhook message (`@InLoox done Write report`) → the reply message."""
    request.max_content_length = MAX_BODY_BYTES
    body = request.get_data(cache=True)
    try:
        verify_teams(body, request.headers.get("Authorization"), workspaces.current().teams_security_token)
    except SignatureError as exc:
        abort(401, f"Teams signature rejected: {exc}")
    activity = request.get_json(force=True)  # signed by Teams; unreadable JSON is a 400 saying why (web.json_bodies)
    if not isinstance(activity, dict) or not activity.get("id"):
        abort(400, "the body is not a Teams activity with an id")
    sender = activity.get("from") or {}
    command = ChatCommand(
        surface="teams", request_id=str(activity["id"]), text=_MENTION.sub("", activity.get("text") or "").strip(),
        user={"id": sender.get("aadObjectId") or sender.get("id", ""), "name": sender.get("name", "")})
    return jsonify(type="message", text=_answer(command))


def _answer(command: ChatCommand) -> str:
    try:
        return answer(command)
    except InLooxError as exc:
        current_app.logger.warning("chat command %s: InLoox failed: %s", command.request_id, exc)
        return "InLoox did not answer in time; please try again in a minute."
    except redis.RedisError:
        current_app.logger.exception("chat command %s not stored", command.request_id)
        return "The command could not be stored; please try again in a minute."
