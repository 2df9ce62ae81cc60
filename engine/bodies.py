"""Outside bytes → plain data, decoded once and within limits.

Every body, bundle file and form that reaches us from outside is hostile until this module has read
it. It refuses, with a message a sender can act on (the caller answers 4xx with it):
- bytes that are not UTF-8 (the offset of the first bad byte);
- JSON nested deeper than `MAX_DEPTH` (Python's parser recurses, and so does everything after it:
  schema checks, templates, copies; a 30,000-deep body would be a RecursionError somewhere later);
- NaN, Infinity and numbers beyond a float's range (`1e400`): Python's parser takes them, but JSON
  (RFC 8259) has no such numbers, and no later step can keep them: a run's record writes NaN as null,
  so a retry would write null to InLoox where the sender meant no number at all;
- text holding a lone surrogate (`"\\ud800"` is legal JSON but no UTF-8 can carry it, so every later
  step that stores or prints the event would fail on it: the poison event of issue 19). Where a
  person wrote the text (a rule file) it is refused; where a program sent it (a webhook, an InLoox
  answer: JavaScript that cut a string inside an emoji sends exactly this) each lone surrogate
  becomes U+FFFD, as the WHATWG encoding standard (TextEncoder, `String.toWellFormed`) does, and the
  event goes on.
The checks cost a C-speed scan of the raw text in the common case: a body with fewer brackets than
the depth limit and without a `\\ud800`-`\\udfff` escape cannot break either rule, and is not walked;
only a body with a long exponent or digit run has its fractions parsed by a check of ours.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 64  # webhook payloads nest ~10 deep (GitHub's deepest), rule documents ~15


class BodyError(ValueError):
    """Outside data we will not take; the message says what was wrong and where."""


def decode_text(raw: bytes, what: str = "the body") -> str:
    """`raw` as UTF-8 text (a leading BOM dropped), or a BodyError naming the first bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BodyError(f"{what} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}") from None


def parse_json(raw: bytes | str, what: str = "the body", *, max_depth: int = MAX_DEPTH,
               repair: bool = False) -> Any:
    """`raw` parsed as JSON, with every check of this module; a BodyError says what was wrong.

    `repair`: lone surrogates become U+FFFD instead of being refused.
    """
    text = decode_text(raw, what) if isinstance(raw, (bytes, bytearray)) else raw
    try:
        data = (_BOUNDED if _HUGE.search(text) else _DECODER).decode(text)
    except RecursionError:  # the C parser stops at the interpreter's recursion limit, cleanly
        raise BodyError(f"{what} nests deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise BodyError(f"{what} is not valid JSON: {exc}") from None
    # In JSON a lone surrogate can only arrive as an escape; "\\u00fc" (how .NET writes "ü") is not one.
    surrogates = _SURROGATE_ESCAPE.search(text) is not None
    if surrogates or _brackets(text) > max_depth:
        check_plain(data, what, max_depth=max_depth, may_have_surrogates=surrogates and not repair)
        if surrogates and repair:
            data = well_formed(data)
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value (send a number, or null)")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:40]} is beyond the range of a number (about ±1.8e308)")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_BOUNDED = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite)
# Only a number with an exponent of three digits or more, or 309 digits, can pass a float's range.
_HUGE = re.compile(r"[eE][+-]?\d{3}|\d{309}")


def well_formed(data: Any) -> Any:
    """`data` with each lone surrogate in its strings (keys too) replaced by U+FFFD.

    Recursive: call it on data whose depth `check_plain` has bounded.
    """
    if isinstance(data, str):
        return _SURROGATE.sub("\ufffd", data)
    if isinstance(data, dict):
        return {well_formed(k): well_formed(v) for k, v in data.items()}
    if isinstance(data, list):
        return [well_formed(v) for v in data]
    return data


def check_plain(data: Any, what: str = "the data", *, max_depth: int = MAX_DEPTH,
                may_have_surrogates: bool = True) -> None:
    """Refuse `data` (already parsed: JSON, YAML, a form) nested past `max_depth` or holding a lone surrogate."""
    stack = [(data, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, str):
            if may_have_surrogates:
                _check_text(value, what, path)
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > max_depth:
            raise BodyError(f"{what} nests deeper than {max_depth} levels")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            if isinstance(k, str) and may_have_surrogates:
                _check_text(k, what, path)
            if may_have_surrogates or isinstance(v, (dict, list)):
                stack.append((v, depth + 1, (*path, k)))


def check_text(text: str, what: str = "the text") -> None:
    """Refuse text holding a lone surrogate (a decoded escape that no UTF-8 can carry)."""
    _check_text(text, what, ())


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # also after an escaped backslash: a walk for nothing, no harm


def _check_text(text: str, what: str, path: tuple) -> None:
    found = _SURROGATE.search(text)
    if found:
        raise BodyError(f"{what} holds a lone surrogate \\u{ord(found.group()):04x} (not Unicode text; "
                        f"send a UTF-8 character or a valid pair) at {_where(path)}")


def _brackets(text: str) -> int:
    return text.count("[") + text.count("{")


def _where(path: tuple) -> str:
    """A JSON pointer to `path` (long ones cut in the middle)."""
    if not path:
        return "the top"
    parts = [str(p) for p in path]
    if len(parts) > 8:
        parts = [*parts[:4], "…", *parts[-3:]]
    return "/" + "/".join(parts)
