"""What one template may cost: a budget of steps per render and a ceiling on the size of what it makes.

Rule files come from the people a workspace belongs to, and one web or worker process serves many
workspaces. Jinja's sandbox keeps a template away from Python's internals, not from the process's CPU
and memory: `{{ 7 ** (10 ** 8) }}` was folded into a constant while the rule was loaded, in C, holding
the GIL (the process stopped answering for every workspace), `"x" * 10**10` or `range(10**5) | join(big)`
asked for gigabytes, and three nested loops over `range(100000)` ran for days. So, following the
sandbox's own hooks (operator interception, `call`) and its code generator:

- every turn of a loop and every call (a macro's too) spends one of MAX_STEPS per render;
- `**`, `*`, `+` and `%` are worked out only when their result stays under MAX_BITS (numbers) or
  MAX_SIZE (text and lists), which also keeps Jinja from folding them while it compiles;
- the str methods and filters that pad, repeat or join (`center`, `ljust`, `replace`, `join`,
  `format`, `indent`, `slice`…) are checked before they allocate; `lipsum` is gone;
- a template's text, and an expression's value, may not grow past MAX_SIZE.

Past a limit the sandbox's SecurityError is raised, which `engine.templates.render` turns into the
step's TemplateError like any other template error: that event's run fails, nothing else does.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from string import Formatter
from typing import Any

from jinja2 import filters as jinja_filters
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_STEPS = 100_000  # loop turns and calls per render: tens of milliseconds
MAX_SIZE = 1_000_000  # characters (or items) of any value a template makes, its text included
MAX_BITS = 100_000  # bits of a number `**` or `*` may make (about 30,000 digits)

# What spends steps: a template without any of these needs no budget.
COSTLY_NODES = (nodes.For, nodes.Call, nodes.CallBlock, nodes.Macro)
_budget = threading.local()  # `left`: the steps left to the render under way on this thread, if any


class Budget:
    """Around one render: MAX_STEPS for this thread, restored to what it was after."""

    def __enter__(self) -> None:
        self._before = getattr(_budget, "left", None)
        _budget.left = MAX_STEPS

    def __exit__(self, *exc_info) -> None:
        _budget.left = self._before


def step() -> None:
    """One loop turn or call. Outside a render (Jinja folding constants while it compiles) nothing is counted."""
    left = getattr(_budget, "left", None)
    if left is None:
        return
    if left <= 0:
        raise SecurityError(f"the template took more than {MAX_STEPS:,} steps (loop turns and calls)")
    _budget.left = left - 1


def sized(value: Any) -> Any:
    """`value`, unless it is text or a collection longer than MAX_SIZE."""
    if isinstance(value, (str, bytes, list, tuple, dict, set)) and len(value) > MAX_SIZE:
        raise SecurityError(f"the template made a value of {len(value):,} characters or items, "
                            f"more than {MAX_SIZE:,}")
    return value


def bounded_text(chunks: Iterable[str]) -> str:
    """A template's text from its rendered chunks, stopping as soon as it passes MAX_SIZE."""
    parts, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_SIZE:
            raise SecurityError(f"the template's text grew past {MAX_SIZE:,} characters")
        parts.append(chunk)
    return "".join(parts)


class _CountingCodeGenerator(CodeGenerator):
    """Jinja's code generator, with a step spent at the top of every loop body and a size check on `~`."""

    def blockvisit(self, nodes: Iterable, frame: Frame) -> None:
        if frame.loop_frame:
            self.writeline("environment.step()")
        super().blockvisit(nodes, frame)

    def visit_Concat(self, node, frame: Frame) -> None:
        self.write("environment.sized(")
        super().visit_Concat(node, frame)
        self.write(")")


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the limits above."""

    code_generator_class = _CountingCodeGenerator
    intercepted_binops = frozenset({"**", "*", "+", "%"})

    def __init__(self, **options):
        super().__init__(**options)
        self.globals.pop("lipsum", None)  # lipsum(n=10**6): paragraphs by the million, of no use in a rule
        for name, check in _FILTER_CHECKS.items():
            self.filters[name] = _checked_filter(self.filters[name], check)

    step = staticmethod(step)
    sized = staticmethod(sized)

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's signature
        step()
        _check_str_method(__obj, args, kwargs)
        return sized(super().call(__context, __obj, *args, **kwargs))


def _refuse(what: str) -> SecurityError:
    return SecurityError(f"{what}: the result would be larger than a template may make")


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (str, bytes, list, tuple))


def _check_binop(operator: str, left: Any, right: Any) -> None:
    numbers = isinstance(left, int) and isinstance(right, int)
    if operator == "**" and numbers and right > 0 and abs(left) > 1 and right * abs(left).bit_length() > MAX_BITS:
        raise _refuse(f"{left} ** {right}")
    if operator == "*":
        if numbers and abs(left).bit_length() + abs(right).bit_length() > MAX_BITS:
            raise _refuse("a product of such large numbers")
        for sequence, times in ((left, right), (right, left)):
            if _is_sequence(sequence) and isinstance(times, int) and len(sequence) * times > MAX_SIZE:
                raise _refuse(f"repeating {len(sequence):,} characters or items {times:,} times")
    if operator == "+" and _is_sequence(left) and _is_sequence(right) and len(left) + len(right) > MAX_SIZE:
        raise _refuse("joining these two")
    if operator == "%" and isinstance(left, str):
        _check_printf(left)


# A printf-style conversion's width and precision (`%-10.3f`, `%*d`).
_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_printf(template: str) -> None:
    for width, precision in _PRINTF.findall(template):
        for number in (width, precision):
            if number == "*" or (number and int(number) > MAX_SIZE):
                raise _refuse(f"the format {template[:40]!r}")


def _check_format_spec(template: str) -> None:
    """`str.format` widths and precisions (`{:>1000000000}`); a spec that holds a field is refused."""
    try:
        fields = list(Formatter().parse(template))
    except ValueError:
        return  # str.format will say what is wrong with it
    for _, _, spec, _ in fields:
        if spec and ("{" in spec or any(int(n) > MAX_SIZE for n in re.findall(r"\d+", spec))):
            raise _refuse(f"the format {template[:40]!r}")


_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _check_str_method(obj: Any, args: tuple, kwargs: dict) -> None:
    """Before a str method that may allocate much more than it is given runs."""
    method = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
    text = getattr(method, "__self__", None)
    if not isinstance(text, str):
        return
    name = getattr(method, "__name__", "")
    values = (*args, *kwargs.values())
    if name in _PADDING_METHODS and any(isinstance(v, int) and v > MAX_SIZE for v in values):
        raise _refuse(f"str.{name}")
    elif name in ("format", "format_map"):
        _check_format_spec(text)
    elif name == "replace" and len(args) >= 2:
        _check_replace(text, args[0], args[1])
    elif name == "join" and args:
        _check_join(args[0], text)


def _check_replace(text: Any, old: Any, new: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        times = len(text) + 1 if old == "" else text.count(old)
        if len(text) + times * len(new) > MAX_SIZE:
            raise _refuse("this replace")


def _check_join(items: Any, separator: Any) -> None:
    if isinstance(separator, str) and hasattr(items, "__len__") and len(items) * len(separator) > MAX_SIZE:
        raise _refuse("this join")


def _checked_filter(original, check):
    """`original` (a Jinja filter) with `check(args, kwargs)` run before it (it may return other
    arguments: a generator made a list, so that its length is known) and its value's size after."""
    pass_arg = getattr(original, "jinja_pass_arg", None)

    def checked(*args, **kwargs):
        passed, args = (args[:1], args[1:]) if pass_arg is not None else ((), args)
        args = check(args, kwargs) or args
        return sized(original(*passed, *args, **kwargs))

    if pass_arg is not None:
        checked.jinja_pass_arg = pass_arg  # pass_context, pass_eval_context, pass_environment
    checked.__name__ = getattr(original, "__name__", "filter")
    return checked


def _width_at(position: int, name: str):
    def check(args: tuple, kwargs: dict) -> None:
        width = kwargs.get(name, args[position] if len(args) > position else None)
        if isinstance(width, int) and width > MAX_SIZE:
            raise _refuse(f"a width of {width:,}")
        if isinstance(width, str) and len(width) * (str(args[0]).count("\n") + 1 if args else 1) > MAX_SIZE:
            raise _refuse("this indent")
    return check


def _join_check(args: tuple, kwargs: dict) -> tuple | None:
    if not args:
        return None
    items = args[0] if hasattr(args[0], "__len__") else list(args[0])  # a generator (`map`): counted first
    _check_join(items, kwargs.get("d", args[1] if len(args) > 1 else ""))
    return (items, *args[1:])


def _replace_check(args: tuple, kwargs: dict) -> None:
    if len(args) >= 3:
        _check_replace(str(args[0]), args[1], args[2])


def _format_check(args: tuple, kwargs: dict) -> None:
    if args and isinstance(args[0], str):
        _check_printf(args[0])


_FILTER_CHECKS = {
    "center": _width_at(1, "width"),
    "indent": _width_at(1, "width"),
    "join": _join_check,
    "replace": _replace_check,
    "format": _format_check,
    "slice": _width_at(1, "slices"),
    "batch": _width_at(1, "linecount"),
}
assert set(_FILTER_CHECKS) <= set(jinja_filters.FILTERS)
