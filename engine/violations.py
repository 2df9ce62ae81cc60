"""A rule document's JSON Schema violations, located, said in words, with what was probably meant.

A regular expression or "is a required property" is the schema's language, not the user's: a
pattern is named in words (an id, a duration), and an unknown key points to the key it means, also
from the words other automation tools use for it (`trigger` → `when`).
"""
from __future__ import annotations

import functools
import re
import reprlib

from .actions import ACTIONS
from .conditions import operator_meanings
from .documents import Document
from .durations import PATTERN as DURATION_PATTERN, WORDS as DURATION_WORDS, short_form
from .errors import RuleError, did_you_mean
from .schema import RULE_ID_PATTERN, RULE_ID_WORDS, rule_schema
from .triggers import TRIGGERS

_MAX_MESSAGE = 300  # characters of a schema message before the value it quotes is cut short


def schema_problems(doc: Document) -> list[tuple[tuple, RuleError]]:
    """(path of the offending value, error) for every schema violation, in file order."""
    from jsonschema.exceptions import best_match  # here: see _validator

    rule_id = str(doc.data.get("id", "")) if isinstance(doc.data, dict) else ""
    found: list[tuple[str, tuple, RuleError]] = []
    for error in _validator().iter_errors(doc.data):
        # Under anyOf, say what the closest alternative wanted, not "not valid under any of the given schemas".
        error = best_match([error]) if error.context else error
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {})
            found += [("unknown", path + (key,), doc.error(path + (key,), f"unknown key {key!r}", key=True,
                                                           hint=_unknown_key_hint(key, known), rule_id=rule_id))
                      for key in error.instance if key not in known]
        elif error.validator == "enum" and isinstance(error.instance, str):
            allowed = ", ".join(error.validator_value)
            found.append(("enum", path, doc.error(path, f"{error.instance!r} is not one of {allowed}",
                                                  hint=did_you_mean(error.instance, error.validator_value,
                                                                    meanings=operator_meanings()),
                                                  rule_id=rule_id)))
        elif error.validator == "pattern" and error.validator_value in _PATTERN_WORDS:
            words, suggest = _PATTERN_WORDS[error.validator_value]
            meant = suggest(str(error.instance))
            found.append(("pattern", path, doc.error(path, f"{error.instance!r} is not {words}",
                                                     hint=f"did you mean {meant!r}?" if meant else "",
                                                     rule_id=rule_id)))
        elif error.validator == "required":  # the value that is wrong is the one not there
            found.append(("required", path + (None,), doc.error(path, _brief(error), rule_id=rule_id)))
        elif error.validator != "if":  # a failing if/then is reported by its "then" branch
            found.append((error.validator, path, doc.error(path, _brief(error), rule_id=rule_id)))
    # A misspelt key also makes the real one "required": the unknown-key error already says so.
    unknown_at = {path[:-1] for validator, path, _ in found if validator == "unknown"}
    problems = [(path, e) for validator, path, e in found if not (validator == "required" and path[:-1] in unknown_at)]
    return sorted(problems, key=lambda p: (p[1].line, p[1].col))


def _id_from(text: str) -> str | None:
    """`done-review-time` for an id written as a title (`Done Review Time`), else None."""
    meant = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    return meant if re.fullmatch(RULE_ID_PATTERN, meant) else None


# The schema's patterns in words, with what the value probably meant: a user reads no regular expression.
_PATTERN_WORDS = {RULE_ID_PATTERN: (RULE_ID_WORDS, _id_from), DURATION_PATTERN: (DURATION_WORDS, short_form)}


def _brief(error) -> str:
    """The schema's message, with a long value in it cut short (it quotes the whole value)."""
    if len(error.message) <= _MAX_MESSAGE:
        return error.message
    return error.message.replace(repr(error.instance), reprlib.repr(error.instance))


# The words other automation tools use for a rule's parts (Zapier's trigger and action steps and its
# Filter, n8n's nodes, Home Assistant's trigger/condition/action, GitHub Actions' `on`), pointed to
# the key that says it here. Only a word whose key is allowed where it was written is suggested.
_KEY_MEANINGS = {
    "trigger": "when", "triggers": "when", "on": "when",
    "condition": "if", "conditions": "if", "filter": "if", "filters": "if",
    "action": "then", "actions": "then", "steps": "then", "do": "then",
}


def _unknown_key_hint(key: str, known) -> str:
    hint = did_you_mean(key, known, meanings=_KEY_MEANINGS)
    if not hint and key in {**TRIGGERS, **ACTIONS}:
        hint = f"{key!r} is another kind here; give only one"
    return hint or "the keys here: " + ", ".join(sorted(known))


@functools.cache
def _validator():
    """The rule schema's validator, made the first time a rule file is loaded.

    jsonschema is imported here, not at the top: an idle worker loads no rules until its first
    event, and jsonschema costs a process ~3.5 MB.
    """
    from jsonschema import Draft202012Validator

    return Draft202012Validator(rule_schema())
