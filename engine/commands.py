"""Chat commands as the rules define them: the list for help, a plan in words, and when to confirm.

Pure, like the rest of `engine/`: the chat surfaces (`web/chat.py`) do the I/O around it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .plan import Plan
from .rules import Ruleset

WRITE_VERBS = ("create", "update", "delete", "invoke")
# Commands the chat surfaces answer themselves; a rule cannot define them.
BUILT_IN = {"help": "this list", "confirm <code>": "go ahead with a command that asked for it"}
# How much of what a person typed a reply quotes back: a command's text may fill a 64 KiB request, and a reply
# quoting it whole went past what Slack and Teams take in a message.
ECHO_CHARS = 80


@dataclass(frozen=True)
class Command:
    """One chat command a rule defines: its usage (`done <task>`) and the rule's description."""

    name: str
    usage: str
    rule_id: str
    description: str


def chat_commands(ruleset: Ruleset) -> list[Command]:
    """Every enabled rule's chat triggers, in load order."""
    return [Command(t.summary.split()[1], t.summary.removeprefix("chat "), rule.id, rule.description)
            for rule in ruleset.rules.values() if rule.enabled
            for t in rule.triggers if t.kind == "chat"]


def help_text(ruleset: Ruleset, *, prefix: str = "", only: str | None = None) -> str:
    """The commands (all of them, or those named `only`), one per line, for an unknown or misfit command."""
    commands = [c for c in chat_commands(ruleset) if only is None or c.name == only]
    lines = [f"• `{prefix}{c.usage}`: {c.description or c.rule_id}" for c in commands]
    if only is None:
        lines += [f"• `{prefix}{usage}`: {text}" for usage, text in BUILT_IN.items()]
    return "\n".join(lines) if lines else "No chat commands are defined."


def excerpt(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` as a reply quotes it: whole up to `limit` characters, else its first `limit` and an ellipsis."""
    return text if len(text) <= limit else text[:limit] + "…"


def confirmation_reason(plan: Plan) -> str | None:
    """Why the plan must be confirmed first (any delete, or writes to more than one entity), or None."""
    writes = [op for op in plan.operations if op.verb in WRITE_VERBS]
    if any(op.verb == "delete" for op in writes):
        return "it deletes"
    if writes and getattr(plan, "for_each", None):
        return "it writes once per item of a query"
    if len(writes) > 1:
        return f"it makes {len(writes)} writes"
    return None


def describe_plan(plan: Plan, description: str) -> str:
    """What the plan will do, in a line: the rule's description and its steps' verbs and sets."""
    steps = ", ".join(_step_words(op) for op in plan.operations)
    return f"{description or plan.rule_id} ({steps})" if steps else description or plan.rule_id


def _step_words(op) -> str:
    target = (op.params or {}).get("entity_set") or op.args.get(op.action) or op.action
    key = (op.params or {}).get("key")
    target = target if isinstance(target, str) and "{" not in target else op.action
    # The key may be rendered from what the person typed (`key: "{{ chat.args.task }}"`).
    return f"{op.verb} {target}" + (f" {excerpt(str(key))}" if key else "")
