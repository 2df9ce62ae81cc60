"""JSON from outside (request bodies, `$skiptoken`) decoded within limits, or a BadRequest naming why.

The sandbox is what fuzzers and tests throw hostile bytes at, so JSON is refused here, before any
of it reaches SQLite, the request log or an answer, when it is:
- not UTF-8 (OData's JSON format is UTF-8; Python's own parser would take UTF-16 and even UTF-8
  encoded surrogates);
- nested deeper than MAX_DEPTH (Python's parser recurses, and so do the JSON encoder and the checks
  after it: 30,000 brackets would be a RecursionError somewhere later);
- holding NaN or Infinity, which are not JSON though Python's parser takes them;
- holding a lone surrogate (`"\\ud800"` is legal JSON text, but no UTF-8 can carry the string it
  means, so SQLite, the request log and every client reading it back would fail on it).
The sandbox does not import engine/ (it stands in for InLoox, beside the engine, not on top of it),
so it keeps this small check of its own instead of engine/bodies.py.
"""
from __future__ import annotations

import json
import re
from typing import Any

from .errors import BadRequest

MAX_DEPTH = 32  # InLoox bodies are flat records; a complex or collection value adds a level or two
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json(raw: bytes | str, what: str = "The request body") -> Any:
    """`raw` parsed as JSON; raises BadRequest saying what is wrong with it and where."""
    text = _decode(raw, what) if isinstance(raw, (bytes, bytearray)) else raw
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # the parser stops cleanly at the interpreter's recursion limit
        raise BadRequest(f"{what} nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    _check_plain(value, what)
    return value


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{what} is not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value (send a number, or null)")


def _check_plain(value: Any, what: str) -> None:
    """Refuse `value` nested past MAX_DEPTH or holding a lone surrogate; walks without recursing."""
    stack = [(value, 1, ())]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            _check_text(item, what, path)
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > MAX_DEPTH:
            raise BadRequest(f"{what} nests deeper than {MAX_DEPTH} levels")
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in pairs:
            if isinstance(key, str):
                _check_text(key, what, path, is_name=True)
            stack.append((child, depth + 1, (*path, key)))


def _check_text(text: str, what: str, path: tuple, *, is_name: bool = False) -> None:
    found = _SURROGATE.search(text)
    if found is None:
        return
    where = "a property name" if is_name else "the value"
    # The target names the top-level property when it is printable: a named key was checked before.
    target = path[0] if path and isinstance(path[0], str) else None
    raise BadRequest(f"{what} holds a lone surrogate \\u{ord(found.group()):04x} in {where} at "
                     f"{_pointer(path)} (not Unicode text: send the character itself in UTF-8, or a "
                     f"valid surrogate pair)", target=target)


def _pointer(path: tuple) -> str:
    """A JSON pointer to `path`, or 'the top'."""
    return "/" + "/".join(str(p) for p in path) if path else "the top"
