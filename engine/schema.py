"""The JSON Schema (Draft 2020-12) of a rule document, assembled from the three registries.

`schemas/rule.schema.json` is this schema written out (`flask rules schema`); a unit test keeps
the two equal, so each kind's schema lives only beside the kind.
"""
from __future__ import annotations

from .actions import ACTIONS
from .conditions import CONDITIONS
from .durations import PATTERN as DURATION_PATTERN
from .iteration import GROUP_BY, QUERY
from .triggers import TRIGGERS

SCHEMA_ID = "urn:inloox-automation:schemas:rule"
RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
RULE_ID_WORDS = "an id: lowercase letters, digits, '-' and '_', starting with a letter or digit"


def _d(description: str, **schema) -> dict:
    return {**schema, "description": description}


def _trigger() -> dict:
    cases = [{"if": {"required": [name]}, "then": kind.schema} for name, kind in TRIGGERS.items()]
    return _d("One trigger; exactly one of: " + ", ".join(TRIGGERS) + ".",
              type="object", minProperties=1, allOf=cases)


def _condition() -> dict:
    cases = [{"if": {"type": "object", "required": [name]}, "then": kind.schema} for name, kind in CONDITIONS.items()]
    return _d("A condition clause with exactly one of " + ", ".join(CONDITIONS) + "; a list of clauses means all.",
              type=["object", "array"], minItems=1, minProperties=1, items={"$ref": "#/$defs/condition"},
              allOf=cases)


_STEP_IF = {"$ref": "#/$defs/condition",
            "description": "The step runs only if this holds when its turn comes (it may read steps.<id>); "
                           "otherwise it is skipped."}


def _step() -> dict:
    step_id = _d("Names the step so later steps can read its output as steps.<id>.", type="string",
                 pattern=RULE_ID_PATTERN)
    cases = [{"if": {"required": [name]},
              "then": {**kind.schema, "properties": {"id": step_id, "if": _STEP_IF, **kind.schema["properties"]},
                       "additionalProperties": False}}
             for name, kind in ACTIONS.items()]
    return _d("One step: exactly one action (" + ", ".join(ACTIONS) + ") with its arguments beside it, "
              "and an optional id.", type="object", minProperties=1, allOf=cases)


def _for_each() -> dict:
    query = ACTIONS[QUERY].schema
    return _d("Run the steps once per entity this query finds when the run executes (or per group with "
              "group_by); the steps read it as `item`.", type="object", additionalProperties=False,
              required=[QUERY], properties={**query["properties"], "group_by": GROUP_BY})


def _options() -> dict:
    duration = _d("A duration such as 30s, 10m, 2h.", type=["string", "number"], pattern=DURATION_PATTERN)
    return {
        "retry": _d("How the worker retries retryable failures.", type="object", additionalProperties=False,
                    properties={"attempts": _d("Retries after the first try.", type="integer", minimum=0, maximum=20),
                                "backoff": {**duration, "description": "Wait before the first retry (doubles each time)."}}),
        "concurrency": _d("At most `limit` runs of this rule at once per rendered `key`.", type="object",
                          additionalProperties=False, required=["limit"],
                          properties={"key": _d("A template; runs with the same key are limited together.", type="string"),
                                      "limit": _d("Runs at once.", type="integer", minimum=1)}),
        "rate_limit": _d("At most `max` runs of this rule per `per`.", type="object", additionalProperties=False,
                         required=["max", "per"],
                         properties={"max": _d("Runs allowed per window.", type="integer", minimum=1),
                                     "per": {**duration, "description": "The window, e.g. 1m or 1h."}}),
    }


def rule_schema() -> dict:
    """The whole rule schema as a JSON-serialisable dict."""
    props = {
        "id": _d("Unique id of the rule across all files.", type="string", pattern=RULE_ID_PATTERN),
        "description": _d("What the rule is for, in a sentence.", type="string"),
        "enabled": _d("false keeps the rule loaded but never matched.", type="boolean"),
        "mode": _d("live runs the operations; shadow plans and records them without writing.",
                   enum=["live", "shadow"]),
        "allow_chained": _d("Also react to changes made by this service's own writes.", type="boolean"),
        "when": _d("What starts the rule: a trigger, or a list of them (any one suffices).",
                   type=["object", "array"], minItems=1, items={"$ref": "#/$defs/trigger"},
                   allOf=[{"if": {"type": "object"}, "then": {"$ref": "#/$defs/trigger"}}]),
        "if": {"$ref": "#/$defs/condition", "description": "Conditions that must hold for the rule to run."},
        "then": _d("The steps, run in order.", type="array", minItems=1, items={"$ref": "#/$defs/step"}),
        "for_each": _for_each(),
        **_options(),
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "InLoox automation rule",
        "description": "One rule per YAML document: when (triggers), if (conditions), then (steps).",
        "type": "object",
        "required": ["id", "when", "then"],
        "additionalProperties": False,
        "properties": props,
        "$defs": {"trigger": _trigger(), "condition": _condition(), "step": _step()},
    }
