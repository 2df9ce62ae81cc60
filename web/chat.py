"""Chat commands: `POST /chat/slack` (slash commands), `POST /chat/slack/interactive` (button clicks)
and `POST /chat/teams` (outgoing webhooks).

Each verifies the request's signature, then hands the command to `web.commands.answer` and replies
with its text: Slack ephemerally within its 3 s (the run's result goes to `response_url` later, see
`workers/chat.py`), Teams synchronously within its 5 s. A plan that waits for confirmation comes to
Slack with Confirm and Cancel buttons (web/slack_buttons.py); a click is acknowledged with an empty
200, and its outcome replaces the buttons through the click's `response_url`, posted by a worker.
Teams confirms by typing `confirm <code>`.
"""
from __future__ import annotations

import re

import redis
from flask import Blueprint, abort, current_app, jsonify, request

from engine.bodies import BodyError
from inloox import InLooxError
from web import heavy
from web.arrival import arrived
from web.commands import ChatCommand, Reply, answer, cancel, confirm
from web.resources import get_redis
from web.signatures import SignatureError, verify_slack, verify_teams
from web.slack_buttons import CONFIRM, confirmation_blocks, outcome_message, read_click
from web.workspace import require_workspace
from workers import workspaces
from workers.chat import queue_reply, response_url_refusal

bp = Blueprint("chat", __name__, url_prefix="/chat")
bp.before_request(require_workspace)

MAX_BODY_BYTES = 64 * 1024
_MENTION = re.compile(r"<at>.*?</at>", re.DOTALL)


@bp.post("/slack")
def slack():
    """A slash command: `/inloox done Write report` → an ephemeral reply."""
    if _is_ssl_check():
        return "", 200
    _verify_slack()
    form = request.form
    if not form.get("trigger_id"):
        abort(400, "no trigger_id")
    # Signed is not well-formed: the person's id keys their confirmation codes, and a code kept under an empty id
    # would be confirmed by any other command that came without one.
    if not form.get("user_id", "").strip():
        abort(400, "no user_id")
    command = ChatCommand(
        surface="slack", request_id=form["trigger_id"], text=form.get("text", ""),
        user={"id": form.get("user_id", ""), "name": form.get("user_name", "")},
        response_url=form.get("response_url") or None, prefix=f"{form.get('command', '/inloox')} ",
        received=arrived(request.environ))  # not when a thread took it: Slack's 3 s count its wait in the queue
    refusal = _response_url_refusal(command)
    if refusal:
        return jsonify(response_type="ephemeral", text=f"Nothing was done: {refusal}.")
    reply = _answer(command)
    if reply.code is None:
        return jsonify(response_type="ephemeral", text=reply.text)
    # `text` stays: Slack shows it in notifications, and clients without blocks show only it.
    return jsonify(response_type="ephemeral", text=reply.text, blocks=confirmation_blocks(reply.text, reply.code))


@bp.post("/slack/interactive")
def slack_interactive():
    """A click on a plan's Confirm or Cancel button → an empty 200; the outcome replaces the buttons."""
    _verify_slack()
    try:
        click = read_click(request.form.get("payload"))
    except BodyError as exc:
        abort(400, str(exc))
    command = ChatCommand(surface="slack", request_id=click.trigger_id, text=f"{click.action} {click.code}",
                          user=click.user, response_url=click.response_url, received=arrived(request.environ))
    refusal = _response_url_refusal(command)
    if refusal:  # nothing settled: a confirm here would start a plan whose outcome could be told nowhere
        abort(400, f"nothing was done: {refusal}")
    try:
        text = (confirm if click.action == CONFIRM else cancel)(command, click.code)
        if click.response_url:
            queue_reply(get_redis(), click.response_url, outcome_message(text))
    except redis.RedisError:
        current_app.logger.exception("Slack click %s %s not settled", click.action, click.code)
        abort(503, "the click could not be stored; please click again in a minute")
    return "", 200


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
    try:
        command = _teams_command(activity)
    except BodyError as exc:
        abort(400, str(exc))
    return jsonify(type="message", text=_answer(command).text)


def _teams_command(activity) -> ChatCommand:
    """The command in a Teams activity; a BodyError says which field is missing or of the wrong type.

    Signed is not well-formed: the person's id keys their confirmation codes, and what the activity
    holds goes into the event log, so each field is checked as any body from outside.
    """
    if not isinstance(activity, dict) or not isinstance(activity.get("id"), str) or not activity["id"]:
        raise BodyError("the body is not a Teams activity with an id")
    text, sender = activity.get("text") or "", activity.get("from")
    if not isinstance(text, str):
        raise BodyError("the activity's 'text' is not a string")
    if not isinstance(sender, dict):
        raise BodyError("the activity's 'from' is not an object")
    if not isinstance(sender.get("id"), str) or not sender["id"]:
        raise BodyError("the activity's 'from' has no id")
    for name in ("name", "aadObjectId"):
        if not isinstance(sender.get(name, ""), str):
            raise BodyError(f"the activity's 'from.{name}' is not a string")
    return ChatCommand(surface="teams", request_id=activity["id"], text=_without_mentions(text).strip(),
                       user={"id": sender.get("aadObjectId") or sender["id"], "name": sender.get("name", "")},
                       received=arrived(request.environ))  # Teams' 5 s count its wait for a thread too


def _without_mentions(text: str) -> str:
    """`text` less its `<at>…</at>` mentions of us.

    Only up to the last `</at>`: past it each `<at>` was tried to the end of the text, and a body of unclosed ones
    (64 KiB of `<at>`) held the process, every customer's requests, for seconds in the regex.
    """
    end = text.rfind("</at>")
    if end < 0:
        return text
    end += len("</at>")
    return _MENTION.sub("", text[:end]) + text[end:]


def _is_ssl_check() -> bool:
    """Whether this is Slack's check of our certificate (`ssl_check=1`, read whole, at most MAX_BODY_BYTES).

    Slack documents it as a request to simply answer with a 200, and does not say it is signed; Bolt answers it
    before verifying any signature. It carries no command and we do nothing with it, so answering it unsigned
    tells a stranger nothing and stores nothing.
    """
    request.max_content_length = MAX_BODY_BYTES
    request.get_data(cache=True)  # cached first: the form is parsed from it, and the signature needs it whole
    return request.form.get("ssl_check") == "1"


def _verify_slack() -> None:
    """Abort with 401 unless the workspace's Slack app signed this request (read whole, at most MAX_BODY_BYTES)."""
    request.max_content_length = MAX_BODY_BYTES
    body = request.get_data(cache=True)
    try:
        verify_slack(body, request.headers, workspaces.current().slack_signing_secret)
    except SignatureError as exc:
        abort(401, f"Slack signature rejected: {exc}")


def _response_url_refusal(command: ChatCommand) -> str | None:
    """Why the command's response_url is not one to post to (SLACK_RESPONSE_HOSTS), said in the log; None if it is.

    Refused rather than run without its result: Slack always sends https://hooks.slack.com/…, so another host in a
    signed request is a setting that misses this Slack's hosts (said at once, not as results that never come) or
    a request signed by someone holding the secret; either way nothing should run on it, and nothing be posted.
    """
    if not command.response_url:
        return None
    refusal = response_url_refusal(command.response_url, current_app.config.get("SLACK_RESPONSE_HOSTS", ""))
    if refusal:
        current_app.logger.warning("Slack %s refused: %s", command.request_id, refusal)
    return refusal


def _answer(command: ChatCommand) -> Reply:
    try:
        return answer(command)
    except InLooxError as exc:
        current_app.logger.warning("chat command %s: InLoox failed: %s", command.request_id, exc)
        return Reply("InLoox did not answer in time; please try again in a minute.")
    except redis.RedisError:
        current_app.logger.exception("chat command %s not stored", command.request_id)
        return Reply("The command could not be stored; please try again in a minute.")
    except heavy.Busy as exc:  # the rules' first compile here waits for another heavy request (web/heavy.py)
        return Reply(f"Nothing was done: {exc}.")
