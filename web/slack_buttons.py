"""Slack's Confirm and Cancel buttons on a plan that waits for confirmation, and the clicks on them.

    confirmation_blocks(text, code)  the Block Kit message: the plan, then the Confirm and Cancel buttons
    read_click(payload)              Slack's `block_actions` interaction (the `payload` form field) → a Click
    outcome_message(text)            what replaces the buttons once a click settled (or failed to)

Teams has no such buttons here: its people confirm by typing `confirm <code>`, as Slack's can too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.bodies import BodyError, parse_json

CONFIRM, CANCEL = "confirm", "cancel"  # the buttons' action_id
SECTION_CHARS = 3000  # Slack refuses a message whose section text is longer (and shows nothing)
MAX_CODE_CHARS = 16  # codes are 6 digits; a longer value was not written by us
MAX_NAME_CHARS = 80  # how much of an unexpected name a refusal quotes


@dataclass(frozen=True)
class Click:
    """One click on a button of ours: which one, on which code, by whom, and where to answer."""

    action: str  # CONFIRM or CANCEL
    code: str
    user: dict = field(hash=False)  # {"id", "name"}
    trigger_id: str = ""
    response_url: str | None = None


def confirmation_blocks(text: str, code: str) -> list[dict]:
    """The plan's text in a section, then Confirm (primary) and Cancel buttons whose value is the code."""
    if len(text) > SECTION_CHARS:
        text = text[: SECTION_CHARS - 1] + "…"
    button = {"type": "button", "value": code}
    return [{"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "actions", "block_id": "confirmation", "elements": [
                {**button, "action_id": CONFIRM, "style": "primary", "text": {"type": "plain_text", "text": "Confirm"}},
                {**button, "action_id": CANCEL, "text": {"type": "plain_text", "text": "Cancel"}}]}]


def outcome_message(text: str) -> dict:
    """The ephemeral message that takes the place of the one with the buttons, so they cannot be clicked again."""
    return {"response_type": "ephemeral", "replace_original": True, "text": text}


def read_click(raw: str | None) -> Click:
    """The click in Slack's interaction `payload` (JSON); a BodyError says what was wrong with it."""
    if raw is None:
        raise BodyError("no 'payload' form field (Slack sends an interaction as JSON in it)")
    payload = parse_json(raw, "the payload field")
    if not isinstance(payload, dict):
        raise BodyError("the payload field is not a JSON object")
    if payload.get("type") != "block_actions":
        raise BodyError(f"interactions of type {_quoted(payload.get('type'))} are not handled; only block_actions")
    actions, user = payload.get("actions"), payload.get("user")
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
        raise BodyError("the block_actions payload has no actions")
    if not isinstance(user, dict) or not isinstance(user.get("id"), str) or not user["id"]:
        raise BodyError("the block_actions payload names no user id")
    action = actions[0]
    if action.get("action_id") not in (CONFIRM, CANCEL):
        raise BodyError(f"the action {_quoted(action.get('action_id'))} is not a button of ours "
                        f"(we send '{CONFIRM}' and '{CANCEL}')")
    code = action.get("value")
    if not isinstance(code, str) or not 0 < len(code) <= MAX_CODE_CHARS:
        raise BodyError("the button's value is not a confirmation code")
    url = payload.get("response_url")
    return Click(action=action["action_id"], code=code,
                 user={"id": user["id"], "name": str(user.get("username") or user.get("name") or "")},
                 trigger_id=str(payload.get("trigger_id") or ""),
                 response_url=url if isinstance(url, str) and url else None)


def _quoted(name) -> str:
    text = repr(name) if isinstance(name, str) else ("none" if name is None else f"a JSON {type(name).__name__}")
    return text if len(text) <= MAX_NAME_CHARS else text[: MAX_NAME_CHARS - 1] + "…"
