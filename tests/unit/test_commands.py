"""engine/commands.py: the chat commands the rules define, plans in words, and when to confirm."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from engine import Event, evaluate, load_texts
from engine.commands import chat_commands, confirmation_reason, describe_plan, excerpt, help_text

NOW = datetime(2025, 4, 1, 17, 0, tzinfo=timezone.utc)
RULES = """
id: done
description: Mark a task done.
when: [{chat: "done <task>"}]
then:
  - inloox.update: Task
    key: "{{ chat.args.task }}"
    values: {IsDone: true}
---
id: drop
description: Delete a task.
when: [{chat: "drop <task>"}]
then:
  - inloox.delete: Task
    key: "{{ chat.args.task }}"
---
id: close
description: Tick a task and its project.
when: [{chat: "close <task>"}]
then:
  - inloox.update: Task
    key: "{{ chat.args.task }}"
    values: {IsDone: true}
  - inloox.update: Project
    key: "{{ chat.args.task }}"
    values: {IsArchived: true}
"""
TASK = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


@pytest.fixture(scope="module")
def ruleset():
    return load_texts([("chat.yaml", RULES)], strict=True)


def plan(ruleset, text):
    name, _, rest = text.partition(" ")
    event = Event(source="chat", kind=name, occurred_at=NOW, payload={"text": rest, "user": {}})
    [found] = evaluate(event, ruleset, now=NOW, env={})
    return found


def test_the_rules_chat_triggers_are_the_commands(ruleset):
    assert [(c.name, c.usage) for c in chat_commands(ruleset)] == [
        ("done", "done <task>"), ("drop", "drop <task>"), ("close", "close <task>")]
    text = help_text(ruleset, prefix="/inloox ")
    assert "• `/inloox done <task>`: Mark a task done." in text and "/inloox confirm <code>" in text


@pytest.mark.parametrize("command, reason", [("done", None), ("drop", "it deletes"), ("close", "it makes 2 writes")])
def test_deletes_and_several_writes_need_a_confirmation(ruleset, command, reason):
    assert confirmation_reason(plan(ruleset, f"{command} {TASK}")) == reason


def test_a_plan_in_words_names_its_steps(ruleset):
    assert describe_plan(plan(ruleset, f"drop {TASK}"), "Delete a task.") == f"Delete a task. (delete Task {TASK})"


def test_a_plan_in_words_quotes_at_most_the_start_of_a_typed_key(ruleset):
    # The key is whatever the person typed for <task> when it names no task: up to a whole 64 KiB command.
    words = describe_plan(plan(ruleset, "drop " + "k" * 60_000), "Delete a task.")
    assert words == f"Delete a task. (delete Task {'k' * 80}…)"


@pytest.mark.parametrize("text, shown", [("", ""), ("a" * 80, "a" * 80), ("a" * 81, "a" * 80 + "…")])
def test_an_excerpt_is_the_text_up_to_80_characters(text, shown):
    assert excerpt(text) == shown
