"""OData URL text built from values (`$filter` expressions, literals, keys, query options), never by pasting.

    filter = and_(eq("ProjectId", project_id), eq("Name", "O'Brien) or (1 eq 1"))
    render_filter(filter)  # "(ProjectId eq 3fa8…) and (Name eq 'O''Brien) or (1 eq 1')"

Field names must be identifiers. Values become literals: None → null, bools, finite numbers, GUIDs
(`uuid.UUID`) unquoted, aware datetimes as UTC ISO unquoted, strings quoted with `'` doubled. Given the
entity set's schema, a string compared with an `Edm.Guid` or `Edm.DateTimeOffset` property is validated
and written as that type instead of as a string. Keys and `$select`/`$orderby`/`$top` are checked the
same way, so nothing from a rule reaches a URL unescaped.
"""
from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from urllib.parse import quote

from inloox.metadata import EntitySet

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_QUALIFIED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_ORDER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?: (asc|desc))?\Z")
_FRACTION = re.compile(r"T\d\d:\d\d:\d\d[.,](\d{7,})")  # a time's fraction finer than a microsecond


def identifier(name: str) -> str:
    """`name` if it is a plain OData identifier (field or entity set name); raises ValueError."""
    return _matching(_IDENTIFIER, name, "an OData identifier")


def qualified_name(name: str) -> str:
    """`name` if it is an identifier or a dotted one (`Default.AddNote`); raises ValueError."""
    return _matching(_QUALIFIED, name, "an OData name")


def _matching(pattern: re.Pattern, text: str, what: str) -> str:
    if not isinstance(text, str) or not pattern.match(text):
        raise ValueError(f"not {what}: {text!r}")
    return text


def guid(value) -> uuid.UUID:
    """A UUID from a UUID or its string form; raises ValueError for anything else."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and _GUID.match(value):
        return uuid.UUID(value)
    raise ValueError(f"not a GUID: {value!r}")


def datetime_literal(value) -> str:
    """An aware datetime (or ISO string with an offset) as UTC ISO `2025-04-01T09:00:00Z`.

    A string's digits past the microsecond are kept: a .NET server writes its instants in 100 ns ticks
    (`.1234567`), which Python's datetime cuts to microseconds, and a filter `eq` an instant the server
    wrote (a poll's keyset) must name that very instant, not one a little before it.
    """
    ticks = ""
    if isinstance(value, str):
        fraction = _FRACTION.search(value)
        ticks = fraction.group(1)[6:] if fraction else ""
        value = datetime.fromisoformat(value)  # cuts the fraction to microseconds (it never rounds up)
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"not a timezone-aware datetime: {value!r}")
    utc = value.astimezone(timezone.utc)
    if ticks:
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%f") + ticks + "Z"
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%f" if utc.microsecond else "%Y-%m-%dT%H:%M:%S") + "Z"


def string_literal(value: str) -> str:
    """A quoted OData string: the one escape the grammar has is doubling `'`."""
    return "'" + value.replace("'", "''") + "'"


def literal(value, edm_type: str | None = None) -> str:
    """`value` as an OData literal, checked against `edm_type` (e.g. `Edm.Guid`) when given."""
    if value is None:
        return "null"
    if edm_type == "Edm.Guid":
        return str(guid(value))
    if edm_type == "Edm.DateTimeOffset":
        return datetime_literal(value)
    return _literal_by_type(value)


def _literal_by_type(value) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (float, Decimal)):
        return _number_literal(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return datetime_literal(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return string_literal(value)
    raise TypeError(f"no OData literal for {type(value).__name__}")


def _number_literal(value: float | Decimal) -> str:
    finite = value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)
    if not finite:
        raise ValueError(f"OData has no literal for {value}")
    return repr(value) if isinstance(value, float) else format(value, "f")


class Filter:
    """A `$filter` expression; `render(entity_set)` writes it, typing literals by the schema."""

    def render(self, entity_set: EntitySet | None = None) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.render()


def _typed(field: str, value, entity_set: EntitySet | None) -> str:
    prop = entity_set.property(field) if entity_set else None
    return literal(value, prop.type if prop else None)


@dataclass(frozen=True)
class Comparison(Filter):
    """`field op value`, op one of eq ne gt ge lt le."""

    field: str
    op: str
    value: object

    def render(self, entity_set=None):
        return f"{self.field} {self.op} {_typed(self.field, self.value, entity_set)}"


@dataclass(frozen=True)
class In(Filter):
    """`field in (v1,v2,…)`."""

    field: str
    values: tuple

    def render(self, entity_set=None):
        return f"{self.field} in ({','.join(_typed(self.field, v, entity_set) for v in self.values)})"


@dataclass(frozen=True)
class StringCall(Filter):
    """`contains(field,'text')`, `startswith(…)` or `endswith(…)`."""

    function: str
    field: str
    value: str

    def render(self, entity_set=None):
        return f"{self.function}({self.field},{string_literal(self.value)})"


@dataclass(frozen=True)
class Logical(Filter):
    """Parts joined by `and` or `or`, each parenthesised."""

    op: str
    parts: tuple[Filter, ...]

    def render(self, entity_set=None):
        return f" {self.op} ".join(f"({part.render(entity_set)})" for part in self.parts)


@dataclass(frozen=True)
class Not(Filter):
    """`not (part)`."""

    part: Filter

    def render(self, entity_set=None):
        return f"not ({self.part.render(entity_set)})"


@dataclass(frozen=True)
class Raw(Filter):
    """Filter text used verbatim: only for trusted, hand-written expressions, never for rule data."""

    text: str

    def render(self, entity_set=None):
        return self.text


def eq(field: str, value) -> Comparison:
    """`field eq value`, the value escaped as a literal (None → `null`)."""
    return Comparison(identifier(field), "eq", value)


def ne(field: str, value) -> Comparison:
    """`field ne value`."""
    return Comparison(identifier(field), "ne", value)


def gt(field: str, value) -> Comparison:
    """`field gt value`."""
    return Comparison(identifier(field), "gt", value)


def ge(field: str, value) -> Comparison:
    """`field ge value`."""
    return Comparison(identifier(field), "ge", value)


def lt(field: str, value) -> Comparison:
    """`field lt value`."""
    return Comparison(identifier(field), "lt", value)


def le(field: str, value) -> Comparison:
    """`field le value`."""
    return Comparison(identifier(field), "le", value)


def in_(field: str, values) -> In:
    """`field in (values…)`; raises ValueError for an empty list (OData has no empty `in`)."""
    values = tuple(values)
    if not values:
        raise ValueError(f"in_({field!r}) needs at least one value")
    return In(identifier(field), values)


def contains(field: str, text: str) -> StringCall:
    """`contains(field,'text')`."""
    return _string_call("contains", field, text)


def startswith(field: str, text: str) -> StringCall:
    """`startswith(field,'text')`."""
    return _string_call("startswith", field, text)


def endswith(field: str, text: str) -> StringCall:
    """`endswith(field,'text')`."""
    return _string_call("endswith", field, text)


def _string_call(function: str, field: str, text: str) -> StringCall:
    if not isinstance(text, str):
        raise TypeError(f"{function}() needs a string, not {type(text).__name__}")
    return StringCall(function, identifier(field), text)


def and_(*parts: Filter) -> Filter:
    """All of `parts`."""
    return _logical("and", parts)


def or_(*parts: Filter) -> Filter:
    """Any of `parts`."""
    return _logical("or", parts)


def not_(part: Filter) -> Not:
    """The negation of `part`."""
    return Not(_checked(part))


def raw(text: str) -> Raw:
    """A trusted, hand-written filter used verbatim (never build one from rule data)."""
    return Raw(text)


def _logical(op: str, parts) -> Filter:
    if not parts:
        raise ValueError(f"{op}_() needs at least one part")
    parts = tuple(_checked(p) for p in parts)
    return parts[0] if len(parts) == 1 else Logical(op, parts)


def _checked(part) -> Filter:
    if not isinstance(part, Filter):
        raise TypeError(f"not a Filter: {part!r} (build one with eq(), and_() …)")
    return part


def render_filter(expr: Filter, entity_set: EntitySet | None = None) -> str:
    """The `$filter` text for `expr`, literals typed by `entity_set`'s schema when given."""
    return _checked(expr).render(entity_set)


def key_predicate(key, entity_set: EntitySet | None) -> str:
    """The text inside `Set(…)`: a GUID, or `Name='…',ObjectId=<guid>` for a dict (composite) key.

    Typed by the entity set's schema when known; an unknown set takes a GUID or a dict.
    """
    if isinstance(key, dict):
        return _composite_key(key, entity_set)
    if entity_set is not None and len(entity_set.key) != 1:
        raise ValueError(f"{entity_set.name} is keyed by {', '.join(entity_set.key)}: pass them as a dict")
    key_type = entity_set.property(entity_set.key[0]).type if entity_set is not None else "Edm.Guid"
    return _key_literal(key, key_type)


def _composite_key(key: dict, entity_set: EntitySet | None) -> str:
    names = entity_set.key if entity_set is not None else tuple(key)
    if set(key) != set(names):
        raise ValueError(f"key needs exactly {', '.join(names)}, got {', '.join(map(str, key))}")
    types = {n: entity_set.property(n).type for n in names} if entity_set is not None else {}
    return ",".join(f"{identifier(n)}={_key_literal(key[n], types.get(n))}" for n in names)


def _key_literal(value, edm_type: str | None) -> str:
    if value is None:
        raise ValueError("an entity key cannot be None")
    return _path_literal(value, edm_type)


def _path_literal(value, edm_type: str | None) -> str:
    return quote(literal(value, edm_type), safe="'")  # a string may hold '/', '?', '#' or ')'


def function_arguments(params: dict, parameters=()) -> str:
    """`a=1,b='x'` for a function call in a path, typed by the operation's `Parameter`s when given."""
    types = {p.name: p.type for p in parameters}
    return ",".join(f"{identifier(name)}={_path_literal(value, types.get(name))}"
                    for name, value in params.items())


def select_option(select: str | list[str] | None) -> str | None:
    """`$select` text from field names, each checked."""
    if select is None:
        return None
    return ",".join(identifier(name) for name in ([select] if isinstance(select, str) else select))


def orderby_option(orderby: str | list[str] | None) -> str | None:
    """`$orderby` text from `Field`, `Field asc` or `Field desc` clauses, each checked."""
    if orderby is None:
        return None
    clauses = [orderby] if isinstance(orderby, str) else orderby
    return ",".join(_matching(_ORDER, clause, "an $orderby clause") for clause in clauses)


def top_option(top: int | None) -> str | None:
    """`$top` text; raises ValueError unless an int >= 0."""
    if top is None:
        return None
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ValueError(f"top must be an int >= 0, not {top!r}")
    return str(top)
