"""Jinja templates in rules, rendered in an immutable sandbox with strict undefined variables.

What a template may cost (steps, sizes) is engine/template_limits.py's.

A string that is exactly one `{{ expression }}` renders to the expression's native value (a number
stays a number); any other template renders to text. Functions and filters available to rules are
the `TemplateFunction` records in FUNCTIONS.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.sandbox import SecurityError
from jinja2.runtime import Undefined

from inloox.query import literal

from .edm import is_guid, parse_datetime
from .errors import TemplateError
from .template_limits import COSTLY_NODES, Budget, LimitedEnvironment, bounded_text, sized


@dataclass(frozen=True)
class TemplateFunction:
    """A global function or filter offered to rule templates."""

    name: str
    kind: str  # "global", "filter" or "test"
    func: Callable
    doc: str


def isoformat(value: Any) -> str:
    """An ISO date-time in UTC with a `Z`, from a datetime or an ISO string; raises ValueError without an offset."""
    moment = parse_datetime(value)
    if moment is None:
        raise ValueError(f"isoformat wants a date-time, got {value!r}")
    return _with_offset(moment, value).astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _to_datetime(value: Any) -> datetime:
    moment = parse_datetime(value)
    if moment is None:
        raise ValueError(f"{value!r} is not an ISO date-time")
    return _with_offset(moment, value)


def _with_offset(moment: datetime, value: Any) -> datetime:
    """`moment`, if it names an instant. "2025-03-01T09:00:00" (a webhook's) is a time on no clock we
    know: Python reads it in the host's local zone, so the same rule wrote another StartDateTime on
    a host outside UTC (or met `now` with a TypeError)."""
    if moment.utcoffset() is None:
        shown = value if isinstance(value, str) else moment.isoformat()
        raise ValueError(f"{shown!r} is not a date-time with an offset (write Z or +01:00 after it)")
    return moment


_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})\Z")


def odata(value: Any, edm_type: str | None = None) -> str:
    """`value` as an OData literal for a $filter: text quoted with ' doubled, GUIDs and date-times bare.

    Text shaped like a GUID or an ISO date-time with an offset is written as that type (InLoox keys
    are GUIDs and compare unquoted); `odata('Edm.String')` keeps such text a string.
    """
    if edm_type is None and isinstance(value, str):
        edm_type = "Edm.Guid" if is_guid(value) else "Edm.DateTimeOffset" if _ISO_DATETIME.match(value) else None
    return literal(value, edm_type)


FUNCTIONS = (
    TemplateFunction("hours", "global", lambda x: timedelta(hours=float(x)), "hours(1.5) → a timedelta"),
    TemplateFunction("minutes", "global", lambda x: timedelta(minutes=float(x)), "minutes(90) → a timedelta"),
    TemplateFunction("days", "global", lambda x: timedelta(days=float(x)), "days(3) → a timedelta"),
    TemplateFunction("datetime", "global", _to_datetime, "datetime('2025-04-01T09:00:00Z') → an aware datetime"),
    TemplateFunction("datetime", "filter", _to_datetime, "'2025-04-01T09:00:00Z' | datetime → an aware datetime"),
    TemplateFunction("isoformat", "filter", isoformat, "now | isoformat → '2025-04-01T09:00:00Z' (UTC)"),
    TemplateFunction("guid", "test", is_guid, "{% if x is guid %} → true for text shaped like a GUID"),
    TemplateFunction("odata", "filter", odata, "\"O'Brien\" | odata → 'O''Brien' (an OData literal; required in filters)"),
)


def _environment() -> LimitedEnvironment:
    env = LimitedEnvironment(undefined=StrictUndefined, autoescape=False)
    tables = {"global": env.globals, "filter": env.filters, "test": env.tests}
    for fn in FUNCTIONS:
        tables[fn.kind][fn.name] = fn.func
    return env


_ENV = _environment()
BUILTIN_NAMES = frozenset(_ENV.globals)


def is_template(text: Any) -> bool:
    """True for strings containing Jinja syntax."""
    return isinstance(text, str) and ("{{" in text or "{%" in text)


@dataclass(frozen=True)
class Template:
    """A compiled template: its source, the names and attribute chains it reads, its step needs."""

    source: str
    chains: tuple[tuple[str, ...], ...]  # e.g. ("task", "WorkAmount"), ("steps", "find", "value")
    _render: Callable[[Mapping], Any]
    counted: bool = True  # it loops or calls: its renders get a budget of steps (engine/template_limits.py)

    # Cached: a plan asks each template for both, every event.
    @functools.cached_property
    def variables(self) -> frozenset[str]:
        return frozenset(c[0] for c in self.chains) - BUILTIN_NAMES

    @functools.cached_property
    def steps(self) -> tuple[str, ...]:
        """Ids of the earlier steps this template reads (`steps.<id>`)."""
        return tuple(dict.fromkeys(c[1] for c in self.chains if c[0] == "steps" and len(c) > 1))


def _chain(node: nodes.Node, *, names_only: bool = False) -> tuple[str, ...] | None:
    """`("task", "Name")` for `task.Name`; `names_only`: None unless every index is a text constant."""
    parts: list[str] = []
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
        elif isinstance(node.arg, nodes.Const) and (isinstance(node.arg.value, str) or not names_only):
            parts.append(str(node.arg.value))
        elif names_only:
            return None
        else:
            parts.clear()  # a computed index: only the part before it is known
        node = node.node
    if not isinstance(node, nodes.Name):
        return None
    return (node.name, *reversed(parts))


def _chains(ast: nodes.Node) -> tuple[tuple[str, ...], ...]:
    """The longest attribute chains rooted in a variable, in source order."""
    found: list[tuple[str, ...]] = []
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        chain = _chain(node)
        if chain and not any(f[:len(chain)] == chain for f in found):
            found = [f for f in found if chain[:len(f)] != f] + [chain]
    return tuple(found)


@functools.lru_cache(maxsize=4096)  # rules repeat the same templates; compiling costs ~0.5 ms
def compile_template(source: str) -> Template:
    """Compile once; raises jinja2.TemplateSyntaxError for bad syntax."""
    ast = _ENV.parse(source)
    body = source.strip()
    single = (body.startswith("{{") and body.endswith("}}") and len(ast.body) == 1
              and isinstance(ast.body[0], nodes.Output) and len(ast.body[0].nodes) == 1)
    if single:
        expression = _ENV.compile_expression(body[2:-2].strip("-"), undefined_to_none=False)
        render = lambda ctx: expression(**ctx)  # noqa: E731
        path = _item_path(ast.body[0].nodes[0])
        if path is not None:
            render = _path_render(path, render)
    else:
        template = _ENV.from_string(source)
        render = lambda ctx: bounded_text(template.generate(ctx))  # noqa: E731 - stops at the size limit
    free = meta.find_undeclared_variables(ast)  # loop and {% set %} names are the template's own
    counted = any(True for _ in ast.find_all(COSTLY_NODES))
    return Template(source, tuple(c for c in _chains(ast) if c[0] in free), render, counted)


_DICT_ATTRIBUTES = frozenset(dir(dict))


def _item_path(node: nodes.Node) -> tuple[str, ...] | None:
    """`("task", "Name")` for an expression that only reads names through a chain (`task.Name`,
    `task["Name"]`), none of which is also a dict attribute (`items`, `get`…); else None."""
    path = _chain(node, names_only=True)
    return None if path is None or any(name in _DICT_ATTRIBUTES for name in path[1:]) else path


def _path_render(path: tuple[str, ...], jinja: Callable[[Mapping], Any]) -> Callable[[Mapping], Any]:
    """`{{ webhook.body.task.Name }}` read straight from the context's dicts, as Jinja's sandbox reads it
    there (a name no dict attribute has is the dict's item), in a tenth of a microsecond instead of ten;
    whatever is not a plain dict item on the way (a missing key, another type, a global) is Jinja's."""
    root, names = path[0], path[1:]

    def render(ctx: Mapping) -> Any:
        value = ctx.get(root, _NOT_THERE)
        if value is _NOT_THERE:
            return jinja(ctx)
        for name in names:
            if type(value) is not dict or name not in value:
                return jinja(ctx)
            value = value[name]
        return value
    return render


_NOT_THERE = object()


def render(template: Template, context: Mapping[str, Any], *, rule_id: str = "", step: str = "") -> Any:
    """The template's value in `context`; raises TemplateError naming the undefined variable."""
    try:
        if template.counted:
            with Budget():
                value = sized(template._render(context))
        else:  # nothing in it spends a step: most templates (`{{ task.Name }}`), spared the budget's set-up
            value = sized(template._render(context))
        if isinstance(value, Undefined):
            str(value)  # a strict undefined raises only when used
    except UndefinedError as exc:
        variable, note = _missing_chain(template, context)
        raise TemplateError(f"{variable or exc.message} is undefined in {template.source!r}{note}",
                            rule_id=rule_id, step=step, variable=variable) from exc
    except (SecurityError, TypeError, ValueError, ArithmeticError) as exc:
        raise TemplateError(f"{exc} in {template.source!r}", rule_id=rule_id, step=step) from exc
    return value


def _missing_chain(template: Template, context: Mapping[str, Any]) -> tuple[str, str]:
    """The first `a.b.c` chain of the template that the context cannot resolve, and a note when it
    stopped at a list: `steps.found.value.0` of a query that found nothing is an empty list, which
    "is undefined" alone does not say."""
    for chain in template.chains:
        value: Any = context
        for i, part in enumerate(chain):
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            elif i == 0 and part in BUILTIN_NAMES:
                break
            else:
                note = ""
                if isinstance(value, list) and i:
                    held = f"has {len(value)} item(s)" if value else "is an empty list (did its query find nothing?)"
                    note = f": {'.'.join(chain[:i])} {held}"
                return ".".join(chain[: i + 1]), note
    return "", ""


_EXPRESSION = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_REWRITING = (nodes.FilterBlock, nodes.CallBlock, nodes.Macro)  # could rewrite what | odata wrote


def unescaped_expressions(source: str) -> list[str]:
    """The `{{ … }}` expressions of a template that do not end in `| odata` (all of them if it rewrites output)."""
    if not is_template(source):
        return []
    try:
        if any(True for _ in _ENV.parse(source).find_all(_REWRITING)):
            return _EXPRESSION.findall(source) or [source]
    except TemplateSyntaxError:
        return []  # reported as a syntax error by the template check
    return [e for e in _EXPRESSION.findall(source) if not _ends_in_odata(e)]


def _ends_in_odata(expression: str) -> bool:
    try:
        (output,) = _ENV.parse(expression).body
        (node,) = output.nodes
    except (TemplateSyntaxError, ValueError, AttributeError):
        return False
    return isinstance(node, nodes.Filter) and node.name == "odata"


def syntax_problem(exc: TemplateSyntaxError) -> str:
    """A one-line description of a template syntax error."""
    return f"template syntax error: {exc.message} (template line {exc.lineno})"
