"""The JSON Schema (Draft 2020-12) of a rule document, assembled from the three registries.

`schemas/rule.schema.json` is this schema written out (`flask rules schema`); a unit test keeps
the two equal, so each kind's schema lives only beside the kind.
"""
from __future__ import annotations

from .actions import ACTIONS
from .conditions import CONDITIONS, OPERATORS
from .durations import PATTERN as DURATION_PATTERN
from .triggers import TRIGGERS

SCHEMA_ID = "urn:inloox-automation:schemas:rule"
RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"


def _d(description: str, **schema) -> dict:
    return {**schema, "description": description}


def _trigger() -> dict:
    cases = [{"if": {"required": [name]}, "then": kind.schema} for name, kind in TRIGGERS.items()]
    return _d("What starts the rule; exactly one of: " + ", ".join(TRIGGERS) + ".",
              type="object", minProperties=1, allOf=cases)


def _condition() -> dict:
    return _d("A condition: all/any/not/expr, or field paths mapped to operator tests; a list means all.",
              type=["object", "array"], minItems=1, minProperties=1, items={"$ref": "#/$defs/condition"},
              properties={name: kind.schema for name, kind in CONDITIONS.items()},
              additionalProperties={"$ref": "#/$defs/field_test"})


def _field_test() -> dict:
    props = {name: op.schema for name, op in OPERATORS.items()}
    props["ignore_case"] = _d("Compare text case-insensitively.", type="boolean")
    return _d("Operators the field's value must pass (all of them); a bare value means eq.",
              type=["object", "array", "string", "number", "boolean", "null"], minProperties=1,
              properties=props, additionalProperties=False)


def _step() -> dict:
    props = {"id": _d("Names the step so later steps can read its output as steps.<id>.",
                      type="string", pattern=RULE_ID_PATTERN)}
    props.update({name: kind.schema for name, kind in ACTIONS.items()})
    return _d("One step: an optional id and exactly one action.", type="object", minProperties=1,
              properties=props, additionalProperties=False)


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
        "trigger": {"$ref": "#/$defs/trigger", "description": "What starts the rule."},
        "if": {"$ref": "#/$defs/condition", "description": "Conditions that must hold for the rule to run."},
        "do": _d("The steps, run in order.", type="array", minItems=1, items={"$ref": "#/$defs/step"}),
        **_options(),
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "InLoox automation rule",
        "description": "One rule per YAML document: a trigger, optional conditions and the steps to run.",
        "type": "object",
        "required": ["id", "trigger", "do"],
        "additionalProperties": False,
        "properties": props,
        "$defs": {"trigger": _trigger(), "condition": _condition(), "field_test": _field_test(), "step": _step()},
    }
