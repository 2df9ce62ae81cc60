"""EDM types of InLoox fields: checking rule literals against them and coercing event values."""
from __future__ import annotations

import re
import reprlib
from datetime import datetime
from typing import Any, Callable

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_guid(value: Any) -> bool:
    """True for text shaped like a GUID."""
    return isinstance(value, str) and bool(_GUID.match(value))


def parse_datetime(value: Any) -> datetime | None:
    """An aware datetime from a datetime or ISO string (`Z` allowed), else None."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def parse_instant(value: Any) -> datetime | None:
    """`parse_datetime`, but only a moment: None also for a date-time without an offset ("2025-03-01T09:00:00",
    a webhook's or a row's), which names a time on no clock we know and which Python cannot compare with one."""
    moment = parse_datetime(value)
    return moment if moment is not None and moment.utcoffset() is not None else None


def key_problem(value: Any) -> str:
    """Why `value` cannot be an entity's key ("" when it can): "missing", or what it is instead of text or a
    number. Not always a GUID: FeatureFlagInfo's key is text."""
    if value is None or value == "":
        return "missing"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return f"{reprlib.repr(value)}, not text or a number"
    return ""


def same_value(a: Any, b: Any) -> bool:
    """Equal as JSON values are: true is not 1, nor false 0 (for Python, `True == 1`), in lists and objects too."""
    if a != b or isinstance(a, bool) is not isinstance(b, bool):
        return False
    if isinstance(a, dict):  # equal, so the same keys
        return all(same_value(value, b[key]) for key, value in a.items())
    if isinstance(a, (list, tuple)):
        return all(map(same_value, a, b))
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# EDM type → (accepts a literal?, what a user should write instead)
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "Edm.Boolean": (lambda v: isinstance(v, bool), "true or false"),
    "Edm.Guid": (lambda v: isinstance(v, str) and bool(_GUID.match(v)), "a GUID like 3fa85f64-5717-4562-b3fc-2c963f66afa6"),
    "Edm.String": (lambda v: isinstance(v, str), "a string"),
    "Edm.Int32": (_is_int, "an integer"),
    "Edm.Int64": (_is_int, "an integer"),
    "Edm.Double": (_is_number, "a number"),
    "Edm.Single": (_is_number, "a number"),
    "Edm.Decimal": (_is_number, "a number"),
    # With its offset: InLoox refuses a date-time without one (it names a time on no clock), in a body and a filter.
    "Edm.DateTimeOffset": (lambda v: parse_instant(v) is not None,
                           "an ISO date-time with its offset, like 2025-04-01T09:00:00Z"),
}


def type_problem(edm_type: str, value: Any, *, nullable: bool = True) -> str:
    """Why `value` cannot be a value of `edm_type` ("" when it can; unknown types accept anything)."""
    if value is None:
        return "" if nullable else "the field is not nullable"
    check = _CHECKS.get(edm_type)
    if check is None or check[0](value):
        return ""
    return f"{value!r} is not a valid {edm_type}, wanted {check[1]}"


def coercer(edm_type: str | None) -> Callable[[Any], Any]:
    """A function that turns event values of this type into comparable Python values."""
    if edm_type == "Edm.DateTimeOffset":
        return lambda v: parse_datetime(v) if v is not None else None
    if edm_type == "Edm.Guid":
        return lambda v: v.lower() if isinstance(v, str) else v  # GUIDs compare case-insensitively
    return lambda v: v
