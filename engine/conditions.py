"""Conditions: compiled once into checkers that return None when they hold, else a reason.

Condition kinds (the YAML key selects one; any other key is a field path such as `task.WorkAmount`):
    all, any, not, expr
Operators of a field test:
    eq ne lt le gt ge in not_in contains prefix suffix regex exists between older_than newer_than
    (`ignore_case: true` folds case for the text operators)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping

from .documents import format_path
from .durations import PATTERN as DURATION_PATTERN, parse_duration
from .edm import coercer, parse_datetime, type_problem
from .errors import TemplateError, did_you_mean
from .scope import Compilation, FieldType
from .templates import render

Checker = Callable[[Mapping[str, Any]], "str | None"]
MISSING = object()


@dataclass(frozen=True)
class Operator:
    """A field-test operator: its test, the operand it takes and its JSON Schema."""

    name: str
    test: Callable[[Any, Any, datetime], bool]
    operand: str  # "value", "list", "pair", "text", "regex", "bool", "duration", "any"
    explanation: str
    schema: dict


@dataclass(frozen=True)
class ConditionKind:
    """A structural condition (all/any/not/expr): how to compile it, and its schema."""

    name: str
    compile: Callable[[Any, tuple, Compilation], Checker]
    explanation: str
    schema: dict


OPERATORS: dict[str, Operator] = {}
CONDITIONS: dict[str, ConditionKind] = {}

_SCALAR = {"type": ["string", "number", "boolean", "null"]}
_OPERAND_SCHEMAS = {
    "value": _SCALAR, "any": _SCALAR, "text": {"type": "string"}, "regex": {"type": "string"},
    "bool": {"type": "boolean"},
    "list": {"type": "array", "items": _SCALAR},
    "pair": {"type": "array", "items": _SCALAR, "minItems": 2, "maxItems": 2},
    "duration": {"type": ["string", "number"], "pattern": DURATION_PATTERN},
}


def operator(name: str, *, operand: str, explanation: str):
    """Register a field-test operator under `name`."""
    def register(test):
        schema = {**_OPERAND_SCHEMAS[operand], "description": f"{name}: {explanation}"}
        OPERATORS[name] = Operator(name, test, operand, explanation, schema)
        return test
    return register


def condition(name: str, *, explanation: str, schema: dict):
    """Register a structural condition kind under `name`."""
    def register(compile_fn):
        CONDITIONS[name] = ConditionKind(name, compile_fn, explanation, {**schema, "description": explanation})
        return compile_fn
    return register


def _ordered(test):
    def safe(value, operand, now):
        try:
            return value is not None and test(value, operand)
        except TypeError:  # comparing unlike types (text with a number) simply does not hold
            return False
    return safe


operator("eq", operand="value", explanation="equals")(lambda v, o, now: v == o)
operator("ne", operand="value", explanation="does not equal")(lambda v, o, now: v != o)
operator("lt", operand="value", explanation="is less than")(_ordered(lambda v, o: v < o))
operator("le", operand="value", explanation="is at most")(_ordered(lambda v, o: v <= o))
operator("gt", operand="value", explanation="is greater than")(_ordered(lambda v, o: v > o))
operator("ge", operand="value", explanation="is at least")(_ordered(lambda v, o: v >= o))
operator("in", operand="list", explanation="is one of the listed values")(lambda v, o, now: v in o)
operator("not_in", operand="list", explanation="is none of the listed values")(lambda v, o, now: v not in o)
operator("between", operand="pair", explanation="lies between two values, inclusive")(
    _ordered(lambda v, o: o[0] <= v <= o[1]))


@operator("contains", operand="any", explanation="text contains a substring, or a list contains an item")
def _contains(value, operand, now):
    if isinstance(value, str):
        return isinstance(operand, str) and operand in value
    return isinstance(value, (list, tuple)) and operand in value


operator("prefix", operand="text", explanation="text starts with")(
    lambda v, o, now: isinstance(v, str) and v.startswith(o))
operator("suffix", operand="text", explanation="text ends with")(
    lambda v, o, now: isinstance(v, str) and v.endswith(o))
operator("regex", operand="regex", explanation="text matches a regular expression (search)")(
    lambda v, o, now: isinstance(v, str) and o.search(v) is not None)
operator("exists", operand="bool", explanation="the value is present and not null (true) or absent (false)")(
    lambda v, o, now: (v is not MISSING and v is not None) == o)


@operator("older_than", operand="duration", explanation="a date-time lies further back than a duration before now")
def _older_than(value, operand, now):
    moment = parse_datetime(value)
    return moment is not None and moment < now - operand


@operator("newer_than", operand="duration", explanation="a date-time lies within a duration before now")
def _newer_than(value, operand, now):
    moment = parse_datetime(value)
    return moment is not None and moment >= now - operand


def compile_condition(config: Any, path: tuple, comp: Compilation) -> Checker:
    """A checker for a condition mapping, or for a list of them (all must hold)."""
    if isinstance(config, list):
        return _all_of([compile_condition(c, path + (i,), comp) for i, c in enumerate(config)])
    checkers = []
    for key, value in config.items():
        kind = CONDITIONS.get(key)
        if kind is not None:
            checkers.append(kind.compile(value, path + (key,), comp))
        else:
            checkers.append(_compile_field_test(key, value, path + (key,), comp))
    return _all_of(checkers)


def _all_of(checkers: list[Checker]) -> Checker:
    def check(ctx):
        for checker in checkers:
            reason = checker(ctx)
            if reason:
                return reason
        return None
    return checkers[0] if len(checkers) == 1 else check


@condition("all", explanation="every listed condition holds", schema={"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/condition"}})
def _compile_all(config, path, comp):
    return _all_of([compile_condition(c, path + (i,), comp) for i, c in enumerate(config)])


@condition("any", explanation="at least one listed condition holds", schema={"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/condition"}})
def _compile_any(config, path, comp):
    checkers = [compile_condition(c, path + (i,), comp) for i, c in enumerate(config)]

    def check(ctx):
        reasons = []
        for checker in checkers:
            reason = checker(ctx)
            if reason is None:
                return None
            reasons.append(reason)
        return f"{format_path(path)}: none held ({'; '.join(reasons)})"
    return check


@condition("not", explanation="the condition (or every condition of a list) does not hold", schema={"$ref": "#/$defs/condition"})
def _compile_not(config, path, comp):
    inner = compile_condition(config, path, comp)
    return lambda ctx: f"{format_path(path)}: held, wanted it not to" if inner(ctx) is None else None


@condition("expr", explanation="a Jinja expression such as '{{ task.WorkAmount > 0 }}' is true", schema={"type": "string"})
def _compile_expr(config, path, comp):
    template = comp.check_template(path, config)
    where = format_path(path)

    def check(ctx):
        try:
            value = render(template, ctx, rule_id=comp.rule_id, step=where)
        except TemplateError as exc:  # reported as the reason, so explain shows it
            return f"{where}: {exc.message}"
        if isinstance(value, str):
            value = value.strip().lower() not in ("", "false", "0", "none", "no")
        return None if value else f"{where}: {config} was false"
    return check


def _compile_field_test(key: str, spec: Any, path: tuple, comp: Compilation) -> Checker:
    parts = tuple(key.split("."))
    problem, hint, field_type = comp.scope.check(parts)
    if problem:
        if not hint and len(parts) == 1:
            hint = did_you_mean(key, [*CONDITIONS, *comp.scope.names()])
        comp.fail(path, problem, hint=hint, key=True)
    if isinstance(spec, list):  # allowed by the schema only so that a misspelt `all:` gets the hint above
        comp.fail(path, f"{key}: a field test takes operators or one value, not a list", hint="use in: [...]")
    tests = spec if isinstance(spec, dict) else {"eq": spec}
    ignore_case = bool(tests.get("ignore_case", False))
    checkers = [_compile_operator(key, parts, op, operand, path + (op,), field_type, ignore_case, comp)
                for op, operand in tests.items() if op != "ignore_case"]
    if not checkers:
        comp.fail(path, "no operator given", hint="e.g. {gt: 0}")
    return _all_of(checkers)


def _compile_operator(key, parts, op_name, operand, path, field_type, ignore_case, comp) -> Checker:
    op = OPERATORS.get(op_name)
    if op is None:
        comp.fail(path, f"unknown operator {op_name!r}", hint=did_you_mean(op_name, OPERATORS), key=True)
    prepared = _prepare(op, operand, path, field_type, comp)
    coerce = _value_coercer(field_type, prepared)
    fold = _fold if ignore_case else (lambda v: v)
    prepared = fold(prepared)
    where = format_path(path[:-2])

    def check(ctx):
        raw = resolve(ctx, parts)
        if raw is MISSING and op.name != "exists":
            return f"{where}: {key} was missing, wanted {op.name} {operand!r}"
        value = raw if raw is MISSING else fold(coerce(raw))
        if op.test(value, prepared, ctx.get("now")):
            return None
        shown = "missing" if raw is MISSING else repr(raw)
        return f"{where}: {key} was {shown}, wanted {op.name} {operand!r}"
    return check


def _prepare(op: Operator, operand: Any, path: tuple, field_type: FieldType | None, comp: Compilation) -> Any:
    """Check an operand against the operator and the field's EDM type; return it ready to compare."""
    if op.operand == "duration":
        delta = parse_duration(operand)
        if delta is None:
            comp.fail(path, f"{operand!r} is not a duration", hint="write e.g. 90s, 10m, 2h, 3d or 1w")
        if field_type and field_type.edm_type != "Edm.DateTimeOffset":
            comp.fail(path, f"{op.name} needs a date-time field, this one is {field_type.edm_type}")
        return delta
    if op.operand == "regex":
        try:
            return re.compile(operand)
        except re.error as exc:
            comp.fail(path, f"invalid regular expression: {exc}")
    if op.operand in ("list", "pair"):
        items = [_typed(item, path + (i,), field_type, comp) for i, item in enumerate(operand)]
        return tuple(items)
    if op.operand in ("value", "any") and not (op.operand == "any" and field_type is None):
        return _typed(operand, path, field_type, comp)
    return operand


def _typed(value: Any, path: tuple, field_type: FieldType | None, comp: Compilation) -> Any:
    if field_type is None:
        return parse_datetime(value) if isinstance(value, datetime) else value
    problem = type_problem(field_type.edm_type, value)
    if problem:
        comp.fail(path, problem)
    return coercer(field_type.edm_type)(value)


def _value_coercer(field_type: FieldType | None, operand: Any) -> Callable[[Any], Any]:
    if field_type is not None:
        return coercer(field_type.edm_type)
    sample = operand[0] if isinstance(operand, tuple) and operand else operand
    if isinstance(sample, datetime):  # an untyped field compared with a date-time literal
        return lambda v: parse_datetime(v) or v
    return lambda v: v


def _fold(value: Any) -> Any:
    if isinstance(value, str):
        return value.casefold()
    if isinstance(value, (tuple, list)):
        return type(value)(_fold(v) for v in value)
    if isinstance(value, re.Pattern):
        return re.compile(value.pattern, value.flags | re.IGNORECASE)
    return value


def resolve(ctx: Mapping[str, Any], parts: tuple[str, ...]) -> Any:
    """The value at a dotted path in a context (list items by index), or MISSING."""
    value: Any = ctx
    for part in parts:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value

