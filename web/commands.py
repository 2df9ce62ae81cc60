"""Answering a chat command (Slack or Teams alike): match it to a rule, resolve, confirm, submit.

    answer(command)  →  the Reply (its text, and the code of a plan held for confirmation), after one of:
      help / unknown command      the commands the rules define
      a task name fitting several the pick-list, nothing submitted
      a delete or several writes  a pending plan and a `confirm <code>` to send within 10 minutes
      anything else               the event submitted to intake (deduplicated by the chat's request id)
      confirm <code>              the pending event submitted, once (see `confirm`)
    confirm(command, code)      typed `confirm <code>` and Slack's Confirm button alike: one claim decides
    cancel(command, code)       Slack's Cancel button: the pending event dropped, so no confirm can run it

A pending plan is settled once, by one Lua script (`_SETTLE`): it records the outcome (confirmed or
cancelled) and a cancel takes the pending event in the same step, so a typed confirm, a click and a
second click cannot both run it, and the later ones are told what became of it. A confirm's event
leaves in the step that submits it (deduplicated): a confirm that met a Redis failure before that
step is answered "try again", and the next one submits it.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import redis

from engine import Event, Ruleset, evaluate, match_event
from engine.commands import chat_commands, confirmation_reason, describe_plan, excerpt, help_text
from engine.match import bindings
from inloox import and_, contains, eq
from web.heavy import compiled_rules
from web.resources import get_context, get_inloox, get_redis, inloox_slot
from workers import failpoints, scripts
from workers.eventlog import TooLate
from workers.intake import submit_event
from workers.workspaces import current, key

# Slack retries for minutes and Teams for seconds; a day covers both with room to spare.
DEDUP_TTL_SECONDS = 24 * 3600
CONFIRM_TTL_SECONDS = 600
_CODE = re.compile(r"[0-9]{6}")  # a confirmation code as made (secrets.randbelow), ASCII digits only
# How long a settled code still answers "already confirmed" / "cancelled" rather than "no such code".
SETTLED_TTL_SECONDS = DEDUP_TTL_SECONDS
CONFIRMED, CANCELLED = "confirmed", "cancelled"
PICK_LIST_SIZE = 5
# A pick-list line is a command to copy, so it is cut much later than a quote (engine.commands.ECHO_CHARS): a real
# command fits, and five lines stay far within a chat message, where five copies of a 64 KiB text did not.
PICK_LINE_CHARS = 500
# Seconds a surface waits for our answer (Slack 3, Teams 5), less a margin for sending it. Past them the person is
# shown an error and sends the command again: one that took effect anyway would then run twice.
ANSWER_SECONDS = {"slack": 2.7, "teams": 4.5}
_GUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")


@dataclass(frozen=True)
class ChatCommand:
    """One command as a chat surface delivered it; `request_id` is Slack's trigger_id or Teams' activity id."""

    surface: str
    request_id: str
    text: str
    user: dict = field(hash=False)  # {"id", "name"} as the surface knows the person
    response_url: str | None = None
    prefix: str = ""  # how the person invokes us ("/inloox "), for usage lines
    # When the surface's request came (time.monotonic()): the web's views pass the time waitress read its first bytes
    # (web/arrival.py), so that a wait in waitress's queue for a thread counts.
    received: float = field(default_factory=time.monotonic, compare=False)

    def too_late(self) -> bool:
        """Whether our answer would no longer reach the person in time (ANSWER_SECONDS)."""
        return time.monotonic() - self.received > ANSWER_SECONDS.get(self.surface, ANSWER_SECONDS["slack"])

    def answer_by(self) -> float:
        """The time.time() after which our answer would no longer reach the person (ANSWER_SECONDS)."""
        patience = ANSWER_SECONDS.get(self.surface, ANSWER_SECONDS["slack"])
        return time.time() + patience - (time.monotonic() - self.received)


@dataclass(frozen=True)
class Reply:
    """What to tell the person right away; `code` names the plan held for their confirmation, if one is.

    The code is no secret: it only works for the person who typed the command (it is stored under
    their chat user id), so a surface may show it, e.g. as the value of Slack's buttons.
    """

    text: str
    code: str | None = None


def answer(command: ChatCommand) -> Reply:
    """Handle one command and return what to tell the person right away."""
    name, _, rest = command.text.strip().partition(" ")
    ruleset, _ = compiled_rules()  # Busy while another heavy request holds the turn a first compile needs
    if name in ("", "help"):
        return Reply(help_text(ruleset, prefix=command.prefix))
    if name == "confirm":
        return Reply(confirm(command, rest.strip()))
    if name not in {c.name for c in chat_commands(ruleset)}:
        return Reply(f"Unknown command `{excerpt(name)}`. The commands are:\n"
                     + help_text(ruleset, prefix=command.prefix))
    if get_redis().exists(_seen_key(command)):
        return Reply("Already received; the result comes when it is done.")
    if command.too_late():  # it waited for a web thread (web/arrival.py) past the surface's patience
        return Reply("The command waited too long for its turn here, so nothing was done; please send the command "
                     "again.")
    return _plan_and_submit(command, ruleset, _event(command, name, rest.strip()))


def _plan_and_submit(command: ChatCommand, ruleset: Ruleset, event: Event) -> Reply:
    now = datetime.now(timezone.utc)
    env = get_context().rule_env
    matches = [m for m in match_event(event, ruleset, now=now, env=env) if m.matched]
    if not matches:
        return Reply(f"That does not fit `{event.kind}`. Usage:\n"
                     + help_text(ruleset, prefix=command.prefix, only=event.kind))
    event, problem = _resolve_task(event, bindings(event, matches[0].trigger)["chat"]["args"], command.prefix)
    if problem:
        return Reply(problem)
    plans = evaluate(event, ruleset, now=now, env=env)
    if command.too_late():  # InLoox was slow to tell us who or which task: the person sees an error and tries again
        return Reply("InLoox was too slow to answer in time, so nothing was done; please send the command again.")
    summary = "; ".join(describe_plan(p, ruleset.get(p.rule_id).description) for p in plans)
    reason = next((r for r in map(confirmation_reason, plans) if r), None)
    if reason:
        code = _hold_for_confirmation(command, event)
        return Reply(f"This will: {summary}.\nIt needs a confirmation because {reason}: "
                     f"send `{command.prefix}confirm {code}` within {CONFIRM_TTL_SECONDS // 60} minutes.", code)
    try:
        # Stored only by the chat's patience, by Redis's clock as it stores it: a Redis that held the write seconds
        # (a failover's pause, a slow disk) stored the command after Slack had shown the person an error, and the
        # command they sent again ran too. The clocks of web and Redis are taken to agree (NTP) to well within it.
        accepted = submit_event(get_redis(), event, dedup_key=_seen_key(command), dedup_ttl=DEDUP_TTL_SECONDS,
                                latest=command.answer_by())
    except TooLate:
        return Reply("The command could not be stored in time, so nothing was done; please send the command again.")
    if not accepted:
        return Reply("Already received; the result comes when it is done.")
    return Reply(f"On it: {summary}." + (" The result follows here." if command.response_url else ""))


def _event(command: ChatCommand, name: str, text: str) -> Event:
    user = _mapped_user(command.user)
    actor = {k: user[k] for k in ("ContactId", "DisplayName") if user.get(k)}
    return Event(source="chat", kind=name, id=f"chat:{command.surface}:{command.request_id}",
                 occurred_at=datetime.now(timezone.utc), actor=actor,
                 payload={"text": text, "typed": command.text.strip(), "user": user,
                          "surface": command.surface, "response_url": command.response_url})


def _mapped_user(user: dict) -> dict:
    """The chat user with their InLoox ContactId, from CHAT_USER_MAP (chat id → email or ContactId)."""
    target = user_map(current().chat_user_map).get(user.get("id", ""), user.get("email"))
    if not target:
        return dict(user)
    if _GUID.match(target):
        return {**user, "ContactId": target}
    with inloox_slot():
        contacts = list(get_inloox().query("Contact", filter=eq("Email", target), select=["ContactId", "DisplayName"],
                                           top=2))
    if len(contacts) != 1:
        return {**user, "email": target}
    return {**user, "email": target, **contacts[0]}


def user_map(setting: str) -> dict[str, str]:
    """`"U2CERLKJA=ann@example.com, U0X=<ContactId>"` → {chat user id: email or ContactId}."""
    pairs = (item.split("=", 1) for item in re.split(r"[\s,]+", setting or "") if "=" in item)
    return {chat_id.strip(): target.strip() for chat_id, target in pairs}


def _resolve_task(event: Event, args: dict, prefix: str) -> tuple[Event, str | None]:
    """Pin `<task>` to one open task by id or name: the event with the task's id, or the reply instead."""
    typed = args.get("task")
    if not isinstance(typed, str) or _GUID.match(typed):
        return event, None
    found = _open_tasks(eq("Name", typed)) or _open_tasks(contains("Name", typed))
    if not found:
        return event, f"No open task is called or contains '{excerpt(typed)}'."
    if len(found) > 1:
        shown = found[:PICK_LIST_SIZE]
        picks = [f"{prefix}{event.kind} {_with_task(event.payload['text'], typed, t['TaskItemId'])}" for t in shown]
        lines = [f"• `{excerpt(pick, PICK_LINE_CHARS)}`: {t['Name']}" for pick, t in zip(picks, shown)]
        more = " (showing the first few)" if len(found) > PICK_LIST_SIZE else ""
        return event, f"Several open tasks fit '{excerpt(typed)}'{more}. Which one?\n" + "\n".join(lines)
    text = _with_task(event.payload["text"], typed, found[0]["TaskItemId"])
    return replace(event, payload={**event.payload, "text": text, "task": found[0]}), None


def _open_tasks(name_filter) -> list[dict]:
    with inloox_slot():
        return list(get_inloox().query("Task", filter=and_(name_filter, eq("IsDone", False)),
                                       select=["TaskItemId", "Name"], top=PICK_LIST_SIZE + 1))


def _with_task(text: str, typed: str, task_id: str) -> str:
    # The task is the last argument in the patterns we know ("log <hours:number> <task>").
    return text[: -len(typed)] + task_id if text.endswith(typed) else text.replace(typed, task_id, 1)


# KEYS: the pending event, its outcome, the command's seen mark. ARGV: the event JSON, its TTL, the event id, the
# mark's TTL. Holds the event under a code that is no other held or settled command's of this person (1), else 0.
_HOLD = scripts.script("""
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
return 1
""")
HOLD_DRAWS = 20  # a person holds a few codes of 900,000 at a time: 20 draws that all meet one do not happen


def _hold_for_confirmation(command: ChatCommand, event: Event) -> str:
    """Keep the event until its user confirms it; the code only works for that user, once."""
    connection, held = get_redis(), json.dumps(event.to_dict())
    for _ in range(HOLD_DRAWS):
        code = f"{secrets.randbelow(900_000) + 100_000}"
        # A code of this person's that is held or settled (a day) is drawn again: the buttons of its message stay
        # until the outcome replaces them, and under a code given twice a click on the first command's Confirm
        # ran the second one, which the person had not confirmed.
        if scripts.call(connection, _HOLD, keys=[_pending_key(command, code), _settled_key(command, code),
                                                 _seen_key(command)],
                        args=[held, CONFIRM_TTL_SECONDS, event.id, DEDUP_TTL_SECONDS]):
            return code
    raise redis.RedisError(f"no free confirmation code in {HOLD_DRAWS} draws")


def confirm(command: ChatCommand, code: str) -> str:
    """Submit the event held under `code` for this person, once; what to tell them."""
    held, settled = _settle(command, code, CONFIRMED)
    if held is None:
        return _not_waiting(code, settled)
    failpoints.hit("chat_confirmed")
    event = Event.from_dict(json.loads(held))
    # The newer response_url: Slack's URLs expire, and the person expects the answer under `confirm`.
    event = replace(event, payload={**event.payload, "response_url": command.response_url})
    pending = _pending_key(command, code)
    # The held event goes in the step that submits it: until then (Redis failed in between) a confirm sent again
    # submits it, and the dedup key lets only one of two confirms at once through.
    if not submit_event(get_redis(), event, dedup_key=key(f"chat:confirmed:{event.id}"), dedup_ttl=DEDUP_TTL_SECONDS,
                        also=lambda pipe: pipe.delete(pending)):
        return _not_waiting(code, CONFIRMED)
    return f"Confirmed: `{excerpt(event.payload['typed'])}` is on its way." + (
        " The result follows here." if command.response_url else "")


def cancel(command: ChatCommand, code: str) -> str:
    """Drop the event held under `code` for this person, so that no later confirm runs it; what to tell them."""
    held, settled = _settle(command, code, CANCELLED)
    if held is None:
        return _not_waiting(code, settled)
    return f"Cancelled: `{excerpt(json.loads(held)['payload']['typed'])}` will not run."


def _not_waiting(code: str, settled: str | None) -> str:
    code = excerpt(code)  # a typed `confirm` takes the rest of the text as its code
    if settled == CONFIRMED:
        return f"Already confirmed: the command with the code '{code}' runs once; nothing more was started."
    if settled == CANCELLED:
        return f"The command with the code '{code}' was cancelled; nothing runs."
    return f"No command of yours waits for the code '{code}' (codes work once, for {CONFIRM_TTL_SECONDS // 60} minutes)."


# KEYS: the pending event, its outcome. ARGV: the outcome to record, its TTL.
# Returns {event JSON, false} to a caller that goes on with the event, else {false, the outcome or false}.
# A cancel takes the event. A confirm leaves it, for as long as the outcome is kept, to `confirm`'s submit, which
# removes it: a confirm sent again after Redis failed before that submit goes on with it too (and only one of them
# gets the event submitted, by its dedup key).
_SETTLE = scripts.script("""
local held = redis.call('GET', KEYS[1])
local settled = redis.call('GET', KEYS[2])
if settled then
  if held and settled == 'confirmed' and ARGV[1] == 'confirmed' then
    return {held, false}
  end
  return {false, settled}
end
if not held then
  return {false, false}
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
if ARGV[1] == 'confirmed' then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return {held, false}
""")


def _settle(command: ChatCommand, code: str, outcome: str) -> tuple[str | None, str | None]:
    """(the held event's JSON if this call may go on with it, else None; the outcome an earlier call recorded, if
    any). The first call records its outcome; a confirm after a confirm whose event was not submitted goes on too."""
    if not _CODE.fullmatch(code):
        # The code ends the key after the person's id, and Teams ids hold colons: taken as typed, `confirm 1:<code>`
        # from the person `29` was the held command of `29:1`. Codes are six digits (`_hold_for_confirmation`): nothing
        # else is one.
        return None, None
    held, settled = scripts.call(get_redis(), _SETTLE, keys=[_pending_key(command, code), _settled_key(command, code)],
                                 args=[outcome, SETTLED_TTL_SECONDS])
    return (held.decode() if held else None), (settled.decode() if settled else None)


def _seen_key(command: ChatCommand) -> str:
    return key(f"chat:seen:{command.surface}:{command.request_id}")


def _pending_key(command: ChatCommand, code: str) -> str:
    return key(f"chat:confirm:{command.surface}:{command.user.get('id', '')}:{code}")


def _settled_key(command: ChatCommand, code: str) -> str:
    return key(f"chat:settled:{command.surface}:{command.user.get('id', '')}:{code}")

