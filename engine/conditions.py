"""Conditions (`if:`): compiled once into checkers that return None when they hold, else a reason.

Condition kinds (each clause has exactly one of these keys; a list of clauses means all):
    path   {path: task.WorkAmount, op: gt, value: 0, ignore_case: false}   a field test
    all    {all: [clause, …]}       any    {any: [clause, …]}
    not    {not: clause}            expr   {expr: "{{ task.WorkAmount * 60 > 30 }}"}
Operators of a field test:
    eq ne lt le gt ge in not_in contains prefix suffix regex exists between older_than newer_than
A `value` may be a template ("{{ task.ProjectId }}"): it is rendered each time the clause is checked.
"""
from __future__ import annotations

import functools
from collections import abc
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping

from .documents import format_path
from .durations import parse_duration
from .edm import coercer, parse_datetime, parse_instant, same_value, type_problem
from .errors import TemplateError, did_you_mean
from .scope import Compilation, FieldType
from .templates import is_template, render

Checker = Callable[[Mapping[str, Any]], "str | None"]
MISSING = object()


@dataclass(frozen=True)
class Operator:
    """A field-test operator: its test, the operand it takes and the JSON Schema of its `value`."""

    name: str
    test: Callable[[Any, Any, datetime], bool]
    operand: str  # "value", "list", "pair", "text", "regex", "bool", "duration", "any"
    explanation: str
    schema: dict
    synonyms: tuple[str, ...] = ()  # words people write for it (`greater_than`): the did-you-mean by meaning


@dataclass(frozen=True)
class ConditionKind:
    """A condition kind: how to compile a clause holding its key, and the clause's schema."""

    name: str
    compile: Callable[[Mapping, tuple, Compilation], Checker]
    explanation: str
    schema: dict


OPERATORS: dict[str, Operator] = {}
CONDITIONS: dict[str, ConditionKind] = {}

_SCALAR = {"type": ["string", "number", "boolean", "null"]}
_TEMPLATE = {"type": "string", "pattern": r"\{[{%]", "description": "A template that renders to the operand."}
_OPERAND_SCHEMAS = {
    "value": _SCALAR, "any": _SCALAR, "text": {"type": "string"}, "regex": {"type": "string"},
    "bool": {"type": "boolean"},
    "list": {"anyOf": [{"type": "array", "items": _SCALAR}, _TEMPLATE]},
    "pair": {"anyOf": [{"type": "array", "items": _SCALAR, "minItems": 2, "maxItems": 2}, _TEMPLATE]},
    "duration": {"type": ["string", "number"]},
}


def operator(name: str, *, operand: str, explanation: str, synonyms: tuple[str, ...] = ()):
    """Register a field-test operator under `name`; `synonyms` are other words for it, suggested by meaning."""
    def register(test):
        schema = {**_OPERAND_SCHEMAS[operand], "description": f"The operand of {name}: {explanation}."}
        OPERATORS[name] = Operator(name, test, operand, explanation, schema, synonyms)
        return test
    return register


def operator_meanings() -> dict[str, str]:
    """Each synonym of a registered operator → the operator's name (for `did_you_mean(meanings=…)`)."""
    return {word: op.name for op in OPERATORS.values() for word in op.synonyms}


def condition(name: str, *, explanation: str, keys: dict, extra: dict | None = None):
    """Register a condition kind; `keys` are the JSON Schema properties of its clause."""
    def register(compile_fn):
        schema = {"type": "object", "properties": keys, "additionalProperties": False,
                  "description": explanation, **(extra or {})}
        CONDITIONS[name] = ConditionKind(name, compile_fn, explanation, schema)
        return compile_fn
    return register


# Booleans and numbers are unlike types, as in the JSON events carry them: Python's `True == 1` and
# `True > 0` made `{path: webhook.body.count, op: gt, value: 0}` hold for `"count": true`
# (equality is edm.same_value, which a trigger's from/to shares).
def _unlike(value: Any, operand: Any) -> bool:
    """A boolean against a number (or against a bound of a pair), which Python would order."""
    bounds = operand if isinstance(operand, tuple) else (operand,)
    return any(isinstance(value, bool) is not isinstance(bound, bool) for bound in bounds)


def _ordered(test):
    def safe(value, operand, now):
        try:
            return value is not None and not _unlike(value, operand) and test(value, operand)
        except TypeError:  # comparing unlike types (text with a number) simply does not hold
            return False
    return safe


operator("eq", operand="value", explanation="equals",
         synonyms=("equals", "equal", "equal_to", "is", "=", "==", "same_as"))(lambda v, o, now: same_value(v, o))
operator("ne", operand="value", explanation="does not equal",
         synonyms=("not_equal", "not_equals", "not_equal_to", "neq", "is_not", "!=", "<>", "differs_from"))(
    lambda v, o, now: not same_value(v, o))
operator("lt", operand="value", explanation="is less than",
         synonyms=("less_than", "lower_than", "smaller_than", "fewer_than", "below", "<"))(_ordered(lambda v, o: v < o))
operator("le", operand="value", explanation="is at most",
         synonyms=("less_than_or_equal", "less_than_or_equal_to", "less_or_equal", "lte", "at_most", "<="))(
    _ordered(lambda v, o: v <= o))
operator("gt", operand="value", explanation="is greater than",
         synonyms=("greater_than", "more_than", "larger_than", "bigger_than", "higher_than", "above", ">"))(
    _ordered(lambda v, o: v > o))
operator("ge", operand="value", explanation="is at least",
         synonyms=("greater_than_or_equal", "greater_than_or_equal_to", "greater_or_equal", "gte", "at_least", ">="))(
    _ordered(lambda v, o: v >= o))
operator("in", operand="list", explanation="is one of the listed values",
         synonyms=("in_list", "one_of", "is_one_of", "any_of", "is_in"))(
    lambda v, o, now: any(same_value(v, item) for item in o))
operator("not_in", operand="list", explanation="is none of the listed values",
         synonyms=("not_in_list", "none_of", "not_one_of", "nin", "is_not_in"))(
    lambda v, o, now: not any(same_value(v, item) for item in o))
operator("between", operand="pair", explanation="lies between two values, inclusive",
         synonyms=("in_range", "range", "within_range"))(_ordered(lambda v, o: o[0] <= v <= o[1]))


@operator("contains", operand="any", explanation="text contains a substring, or a list contains an item",
          synonyms=("includes", "has", "contains_text", "includes_text"))
def _contains(value, operand, now):
    if isinstance(value, str):
        return isinstance(operand, str) and operand in value
    return isinstance(value, (list, tuple)) and any(same_value(item, operand) for item in value)


operator("prefix", operand="text", explanation="text starts with",
         synonyms=("starts_with", "startswith", "begins_with"))(
    lambda v, o, now: isinstance(v, str) and v.startswith(o))
operator("suffix", operand="text", explanation="text ends with", synonyms=("ends_with", "endswith"))(
    lambda v, o, now: isinstance(v, str) and v.endswith(o))
operator("regex", operand="regex", explanation="text matches a regular expression (search)",
         synonyms=("matches", "match", "regexp", "re", "pattern", "like"))(
    lambda v, o, now: isinstance(v, str) and o.search(v) is not None)
operator("exists", operand="bool", explanation="the value is present and not null (no value, or true) or absent (false)",
         synonyms=("is_set", "present", "is_present", "not_null", "is_not_null", "has_value", "defined"))(
    lambda v, o, now: (v is not MISSING and v is not None) == o)


@operator("older_than", operand="duration", explanation="a date-time lies further back than a duration before now")
def _older_than(value, operand, now):
    # A date-time without an offset holds no more than text that is none (Python cannot compare it with `now`).
    moment = parse_instant(value)
    return moment is not None and moment < now - operand


@operator("newer_than", operand="duration", explanation="a date-time lies within a duration before now",
          synonyms=("within_last", "within_the_last", "younger_than"))
def _newer_than(value, operand, now):
    moment = parse_instant(value)
    return moment is not None and moment >= now - operand


def compile_condition(config: Any, path: tuple, comp: Compilation) -> Checker:
    """A checker for one clause, or for a list of clauses (all must hold)."""
    if isinstance(config, list):
        return _all_of([compile_condition(c, path + (i,), comp) for i, c in enumerate(config)])
    kinds = [k for k in config if k in CONDITIONS]
    if len(kinds) != 1:
        comp.fail(path, f"a condition needs exactly one of {', '.join(CONDITIONS)} "
                        f"(found {', '.join(kinds) or 'none'})", hint=_kind_hint(config))
    return CONDITIONS[kinds[0]].compile(config, path, comp)


def _kind_hint(config: Mapping) -> str:
    for key in config:
        if "." in key:  # the shape `task.WorkAmount: {gt: 0}` of other tools
            return f"write a field test as {{path: {key}, op: …, value: …}}"
        if did_you_mean(key, CONDITIONS):
            return did_you_mean(key, CONDITIONS)
    return ""


def _all_of(checkers: list[Checker]) -> Checker:
    """All must hold. Clauses that render no template are checked first: they cost ~1 µs, a
    rendered one ~10 µs, and most candidate rules fail a literal test. The verdict does not depend
    on the order (clauses have no effects); the reason given is the first failure in checking order."""
    ordered = sorted(checkers, key=renders)  # stable: written order within each kind

    def check(ctx):
        for checker in ordered:
            reason = checker(ctx)
            if reason:
                return reason
        return None
    if len(checkers) == 1:
        return checkers[0]
    check.renders = any(map(renders, checkers))
    return check


def renders(checker: Checker) -> bool:
    """Whether a checker renders templates (unknown checkers are assumed to)."""
    return getattr(checker, "renders", True)


_CLAUSES = {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/condition"}}


@condition("all", explanation="every listed condition holds", keys={"all": {**_CLAUSES, "description": "The clauses."}})
def _compile_all(config, path, comp):
    path += ("all",)
    return _all_of([compile_condition(c, path + (i,), comp) for i, c in enumerate(config["all"])])


@condition("any", explanation="at least one listed condition holds",
           keys={"any": {**_CLAUSES, "description": "The clauses."}})
def _compile_any(config, path, comp):
    path += ("any",)
    checkers = [compile_condition(c, path + (i,), comp) for i, c in enumerate(config["any"])]

    def check(ctx):
        reasons = []
        for checker in checkers:
            reason = checker(ctx)
            if reason is None:
                return None
            reasons.append(reason)
        return f"{format_path(path)}: none held ({'; '.join(reasons)})"
    check.renders = any(map(renders, checkers))
    return check


@condition("not", explanation="the condition (or every condition of a list) does not hold",
           keys={"not": {"$ref": "#/$defs/condition", "description": "The clause that must not hold."}})
def _compile_not(config, path, comp):
    path += ("not",)
    inner = compile_condition(config["not"], path, comp)

    def check(ctx):
        return f"{format_path(path)}: held, wanted it not to" if inner(ctx) is None else None
    check.renders = renders(inner)
    return check


@condition("expr", explanation="a Jinja expression such as '{{ task.WorkAmount > 0 }}' is true",
           keys={"expr": {"type": "string", "description": "The expression, in {{ }}."}})
def _compile_expr(config, path, comp):
    source = config["expr"]
    path += ("expr",)
    template = comp.check_template(path, source)
    where = format_path(path)

    def check(ctx):
        try:
            value = render(template, ctx, rule_id=comp.rule_id, step=where)
        except TemplateError as exc:  # reported as the reason, so explain shows it
            return f"{where}: {exc.message}"
        if isinstance(value, str):
            value = value.strip().lower() not in ("", "false", "0", "none", "no")
        return None if value else f"{where}: {source} was false"
    check.renders = True
    return check


_FIELD_TEST = {
    "path": {"type": "string", "minLength": 1,
             "description": "A dotted path into the event: task.Name, change.IsDone.from, webhook.body.x, actor.ContactId."},
    "op": {"enum": list(OPERATORS), "description": "The operator: " + ", ".join(OPERATORS) + "."},
    "value": {"description": "The operand (a literal, or a template rendered when checked); exists takes none."},
    "ignore_case": {"type": "boolean", "description": "Fold case for the text operators."},
}


_OPERANDS = {"required": ["path", "op"], "allOf": [
    {"if": {"properties": {"op": {"const": name, "description": f"The operator is {name}."}}},
     "then": {"properties": {"value": op.schema}}}
    for name, op in OPERATORS.items()]}


@condition("path", explanation="the value at a path passes an operator test", keys=_FIELD_TEST, extra=_OPERANDS)
def _compile_field_test(config, path, comp):
    key = config["path"]
    parts = tuple(key.split("."))
    problem, hint, field_type = comp.scope.check(parts)
    if problem:
        comp.fail(path + ("path",), problem, hint=hint)
    op = OPERATORS[config["op"]]  # the schema allows only registered names
    fold = _fold if config.get("ignore_case") else (lambda v: v)
    operand = _operand(op, config, path, field_type, fold, comp)
    coerce = coercer(field_type.edm_type) if field_type else None
    where = format_path(path)

    def check(ctx):
        try:
            shown, prepared = operand(ctx)
        except (TemplateError, ValueError) as exc:
            return f"{where}: value: {getattr(exc, 'message', exc)}"
        wanted = f"{op.name} {shown!r}" if "value" in config else op.name
        raw = resolve(ctx, parts)
        if raw is MISSING and op.name != "exists":
            return f"{where}: {key} was missing, wanted {wanted}"
        value = raw if raw is MISSING else fold((coerce or _value_coercer(prepared))(raw))
        if op.test(value, prepared, ctx.get("now")):
            return None
        return f"{where}: {key} was {'missing' if raw is MISSING else repr(raw)}, wanted {wanted}"
    check.renders = any(True for _ in _template_strings(config.get("value"), ()))
    return check


def _operand(op: Operator, config: Mapping, path: tuple, field_type: FieldType | None, fold, comp: Compilation):
    """A function of the context giving (value as written or rendered, operand ready to compare)."""
    if "value" not in config:
        if op.operand != "bool":
            comp.fail(path, f"{op.name} needs a value", hint=f"{{path: …, op: {op.name}, value: …}}")
        return lambda ctx: (True, True)
    given, at = config["value"], path + ("value",)
    templates = {sub: comp.check_template(at + sub, s) for sub, s in _template_strings(given, ())}
    if not templates:
        try:
            ready = (given, fold(_prepare(op, given, field_type)))
        except OperandProblem as exc:
            comp.fail(at + exc.where, exc.message, hint=exc.hint)
        return lambda ctx: ready

    def rendered(ctx):
        value = _with_rendered(given, templates, ctx, comp.rule_id, format_path(at))
        return value, fold(_prepare(op, value, field_type))
    return rendered


def _template_strings(value: Any, sub: tuple):
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _template_strings(item, sub + (i,))
    elif is_template(value):
        yield sub, value


def _with_rendered(value: Any, templates: dict, ctx, rule_id: str, where: str) -> Any:
    if () in templates:
        return render(templates[()], ctx, rule_id=rule_id, step=where)
    return [render(templates[(i,)], ctx, rule_id=rule_id, step=where) if (i,) in templates else item
            for i, item in enumerate(value)]


class OperandProblem(ValueError):
    """An operand that does not suit its operator or field; `where` is the path inside `value`."""

    def __init__(self, message: str, where: tuple = (), hint: str = ""):
        super().__init__(message)
        self.message, self.where, self.hint = message, where, hint


def _prepare(op: Operator, operand: Any, field_type: FieldType | None) -> Any:
    """Check an operand against the operator and the field's EDM type; return it ready to compare."""
    if op.operand == "duration":
        delta = parse_duration(operand)
        if delta is None:
            raise OperandProblem(f"{operand!r} is not a duration", hint="write e.g. 90s, 10m, 2h, 3d or 1w")
        if field_type and field_type.edm_type != "Edm.DateTimeOffset":
            raise OperandProblem(f"{op.name} needs a date-time field, this one is {field_type.edm_type}")
        return delta
    if op.operand in ("text", "regex") and not isinstance(operand, str):
        raise OperandProblem(f"{op.name} wants text, got {operand!r}")
    if op.operand == "regex":
        return _regex(operand)
    if op.operand == "bool" and not isinstance(operand, bool):
        raise OperandProblem(f"{op.name} wants true or false, got {operand!r}")
    if op.operand in ("list", "pair"):
        if not isinstance(operand, (list, tuple)) or (op.operand == "pair" and len(operand) != 2):
            raise OperandProblem(f"{op.name} wants {'two values' if op.operand == 'pair' else 'a list'}, "
                                 f"got {operand!r}")
        return tuple(_typed(item, (i,), field_type) for i, item in enumerate(operand))
    if op.operand in ("value", "any") and not (op.operand == "any" and field_type is None):
        return _typed(operand, (), field_type)
    return operand


@dataclass(frozen=True)
class _Regex:
    """A compiled `regex` operand, and the pattern as written (for `ignore_case`)."""

    pattern: str
    compiled: Any  # re2's pattern object

    def search(self, text: str):
        return self.compiled.search(text)


@functools.cache
def _re2():
    """google-re2 and its options, imported at the first `regex` operand: 2.5 MB a process that has none.

    `regex` patterns come from rule files and are matched against what events carry, in processes that
    serve every workspace. Python's `re` backtracks: `(a+)+$` against 30 a's and a "!" took minutes of
    CPU in C, holding the GIL. RE2 matches in time linear in the text (it has no backreferences or
    lookarounds, which a rule is told at load time), within max_mem; log_errors off: a refused pattern
    is the rule's load error, not a line on stderr.
    """
    import re2

    options = re2.Options()
    options.log_errors = False
    return re2, options


def _regex(pattern: str, *, ignore_case: bool = False) -> _Regex:
    re2, options = _re2()
    try:
        return _Regex(pattern, re2.compile(("(?i)" if ignore_case else "") + pattern, options))
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise OperandProblem(f"invalid regular expression: {reason}",
                             hint="RE2 syntax: no backreferences (\\1) or lookarounds ((?=…), (?<=…))") from None


def _typed(value: Any, where: tuple, field_type: FieldType | None) -> Any:
    if field_type is None:
        return parse_datetime(value) if isinstance(value, datetime) else value
    problem = type_problem(field_type.edm_type, value)
    if problem:
        raise OperandProblem(problem, where)
    return coercer(field_type.edm_type)(value)


def _value_coercer(operand: Any) -> Callable[[Any], Any]:
    """How to read an untyped field's value: as a date-time when compared with one."""
    sample = operand[0] if isinstance(operand, tuple) and operand else operand
    if isinstance(sample, datetime):
        return lambda v: parse_datetime(v) or v
    return lambda v: v


def _fold(value: Any) -> Any:
    if isinstance(value, str):
        return value.casefold()
    if isinstance(value, (tuple, list)):
        return type(value)(_fold(v) for v in value)
    if isinstance(value, _Regex):
        return _regex(value.pattern, ignore_case=True)
    return value


def resolve(ctx: Mapping[str, Any], parts: tuple[str, ...]) -> Any:
    """The value at a dotted path in a context (list items by index), or MISSING."""
    value: Any = ctx
    for part in parts:
        # typing.Mapping's isinstance runs typing's own Python: a fifth of a plan's time went there.
        if (type(value) is dict or isinstance(value, abc.Mapping)) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value

