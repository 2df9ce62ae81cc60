"""EDM values: JSON body values checked and stored as SQLite values, and read back as JSON.

Storage: Guid as lowercase hyphenated TEXT, DateTimeOffset as UTC `YYYY-MM-DDTHH:MM:SS.fffZ` TEXT
(so text order is time order and filters can compare strings in SQL), Boolean as 0/1, numbers as
INTEGER/REAL, collections and complex values as JSON TEXT.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from datetime import datetime, timezone

from inloox.metadata import Property

from .errors import BadRequest

EMPTY_GUID = "00000000-0000-0000-0000-000000000000"
_INT_RANGES = {"Edm.Int32": 2**31, "Edm.Int64": 2**63, "Edm.Int16": 2**15, "Edm.Byte": 2**8}
_FLOATS = {"Edm.Double", "Edm.Single", "Edm.Decimal"}


def normalize_guid(text: str) -> str:
    """The canonical lowercase form of a GUID; raises ValueError for anything else."""
    if not isinstance(text, str) or len(text) not in (32, 36, 38):
        raise ValueError(text)
    return str(uuid.UUID(text))


def normalize_datetime(text: str) -> str:
    """A DateTimeOffset string as UTC with milliseconds; a bare date means midnight UTC."""
    if not isinstance(text, str) or len(text) < 10:
        raise ValueError(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_datetime(text: str) -> datetime:
    """A stored DateTimeOffset back as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def sql_type(edm_type: str) -> str:
    """The SQLite column type for an EDM type."""
    if edm_type in _INT_RANGES or edm_type == "Edm.Boolean":
        return "INTEGER"
    return "REAL" if edm_type in _FLOATS else "TEXT"


def to_sql(prop: Property, value):
    """`value` from a JSON body as stored for `prop`; raises BadRequest naming the property."""
    if value is None:
        if not prop.nullable:
            raise BadRequest(f"Property '{prop.name}' may not be null ({prop.type}).", target=prop.name)
        return None
    try:
        return _convert(prop.type, value)
    except (ValueError, TypeError, OverflowError, binascii.Error):
        raise BadRequest(
            f"Property '{prop.name}' expects {_describe(prop.type)}, got {json.dumps(value)[:80]}.",
            target=prop.name,
        ) from None


def _convert(edm_type: str, value):
    if edm_type == "Edm.String":
        return _require(value, str)
    if edm_type == "Edm.Guid":
        return normalize_guid(value)
    if edm_type == "Edm.DateTimeOffset":
        return normalize_datetime(_with_offset(_require(value, str)))
    if edm_type == "Edm.Boolean":
        return int(_require(value, bool))
    if edm_type in _INT_RANGES:
        return _integer(edm_type, value)
    if edm_type in _FLOATS:
        return _number(edm_type, value)
    if edm_type == "Edm.Binary":
        base64.b64decode(_require(value, str), validate=True)
        return value
    if edm_type.startswith("Collection("):
        return json.dumps([_convert(edm_type[11:-1], item) for item in _require(value, list)])
    return json.dumps(value)  # complex and enum types: kept as given


def _with_offset(text: str) -> str:
    """`text` if it is a bare date or names its offset; InLoox's OData reader refuses a date-time
    without one ("the time zone information is missing"), where this sandbox would guess UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None and len(text) > 10:
        raise ValueError(text)
    return text


def _require(value, kind):
    # bool is an int in Python; a JSON true must not pass as a number, nor 1 as a boolean.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise TypeError(value)
    return value


def _integer(edm_type: str, value) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    value = _require(value, int)
    if not -_INT_RANGES[edm_type] <= value < _INT_RANGES[edm_type]:
        raise OverflowError(value)
    return value


def _number(edm_type: str, value) -> float:
    if edm_type == "Edm.Decimal" and isinstance(value, str):
        number = float(value)  # IEEE754Compatible clients send decimals as strings
    else:
        number = float(_require(value, (int, float)))
    # JSON has neither infinity nor NaN, but 1e400 parses as infinity and a decimal string may say
    # "NaN": stored, one would be answered as `Infinity` (which strict parsers refuse), the other as null.
    if not math.isfinite(number):
        raise OverflowError(value)
    return number


def _describe(edm_type: str) -> str:
    return {
        "Edm.String": "a string", "Edm.Guid": "a GUID such as 3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "Edm.DateTimeOffset": "an ISO date-time with its offset, such as 2025-04-01T09:00:00Z",
        "Edm.Boolean": "true or false", "Edm.Binary": "base64 text",
    }.get(edm_type, f"a value of type {edm_type}")


def reader(edm_type: str):
    """A function turning a stored value back into JSON for `edm_type`, or None when it is as stored."""
    if edm_type == "Edm.Boolean":
        return lambda v: None if v is None else bool(v)
    if edm_type.startswith("Collection(") or not edm_type.startswith("Edm."):
        return lambda v: None if v is None else json.loads(v)
    return None


def type_default(prop: Property):
    """The stored default for a non-nullable property missing from a POST (None if nullable)."""
    if prop.nullable:
        return None
    if prop.type == "Edm.Boolean" or prop.type in _INT_RANGES:
        return 0
    if prop.type in _FLOATS:
        return 0.0
    if prop.type == "Edm.String":
        return ""
    if prop.type.startswith("Collection("):
        return "[]"
    return EMPTY_GUID if prop.type == "Edm.Guid" else None
