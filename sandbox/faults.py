"""Injected faults: rules that delay, fail, drop or hang requests to /api/odata/.

Kinds: `latency` (sleep latency_ms, then serve normally), `status` (answer `status` with an OData
error body, or with `body` (any JSON) when given, and optional Retry-After, without touching data), `drop` (close the connection before
doing anything), `commit_then_hang` (apply and commit the write, hold the response hang_s seconds,
then close the connection without answering), `commit_then_status` (apply and commit the write, then
answer `status` with an OData error body instead of the write's answer, as a gateway in front of
InLoox does when InLoox took longer than it waits: 504). Either status kind answers `text` instead, when
given, as text/plain, `repeat` times over: an answer that is no JSON, or one too big to read, to a write
that landed or not. A rule matches by method and a regex on the path
after /api/odata/, fires with probability `fraction`, and expires after `count` firings.
"""
from __future__ import annotations

import itertools
import random
import re
import threading
from dataclasses import asdict, dataclass, field

from .errors import BadRequest

KINDS = ("latency", "status", "drop", "commit_then_hang", "commit_then_status")
# A fault holds a server thread while it sleeps: beyond an hour it is a typo, and past ~1e10 s
# time.sleep raises OverflowError, which would be a 500 on every request the rule fires for.
_MAX_LATENCY_MS, _MAX_HANG_S = 3_600_000, 3600
_MAX_TEXT = 64 * 1024 * 1024  # characters a `text` answer runs to, repeats included: past the client's 8 MB limit
_FIELDS = {"kind", "status", "body", "text", "repeat", "retry_after", "latency_ms", "hang_s", "count", "fraction", "methods", "path"}


@dataclass
class FaultRule:
    """One rule as posted to /_sandbox/faults; `count` counts down as it fires (None = forever)."""

    id: int
    kind: str
    status: int | None = None
    body: object = None  # what a `status` fault answers instead of an OData error (an InLoox answering nonsense)
    text: str | None = None  # answered as is instead of any JSON (a proxy's HTML page, a body that is no JSON)
    repeat: int = 1  # `text` this many times over: an answer of megabytes from a rule of a few bytes
    retry_after: float | None = None
    latency_ms: int = 0
    hang_s: float = 30.0
    count: int | None = None
    fraction: float = 1.0
    methods: list[str] | None = None
    path: str | None = None
    _pattern: re.Pattern | None = field(default=None, repr=False)

    def matches(self, method: str, path: str) -> bool:
        if self.methods and method.upper() not in self.methods:
            return False
        return self._pattern is None or self._pattern.search(path) is not None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


class Faults:
    """The active rules, thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)

    def add(self, spec) -> FaultRule:
        """Add a rule from a JSON body; raises BadRequest naming a bad field."""
        rule = _rule_from(spec, next(self._ids))
        with self._lock:
            self._rules.append(rule)
        return rule

    def list(self) -> list[dict]:
        with self._lock:
            return [r.to_dict() for r in self._rules]

    def remove(self, rule_id: int) -> bool:
        with self._lock:
            kept = [r for r in self._rules if r.id != rule_id]
            removed, self._rules = len(kept) != len(self._rules), kept
            return removed

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    def fire(self, method: str, path: str) -> list[FaultRule]:
        """The rules that fire for this request: every latency rule, then at most one other."""
        fired = []
        with self._lock:
            for rule in list(self._rules):
                if not rule.matches(method, path) or random.random() >= rule.fraction:
                    continue
                if rule.kind != "latency" and any(r.kind != "latency" for r in fired):
                    continue
                fired.append(rule)
                if rule.count is not None:
                    rule.count -= 1
                    if rule.count <= 0:
                        self._rules.remove(rule)
        return fired


def _rule_from(spec, rule_id: int) -> FaultRule:
    if not isinstance(spec, dict):
        raise BadRequest("A fault rule must be a JSON object")
    unknown = set(spec) - _FIELDS
    if unknown:
        raise BadRequest(f"Unknown fault field(s): {', '.join(sorted(unknown))}", target=sorted(unknown)[0])
    kind = spec.get("kind")
    if kind not in KINDS:
        raise BadRequest(f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}", target="kind")
    status = _number(spec, "status", int, 100, 599)
    if kind in ("status", "commit_then_status") and status is None:
        raise BadRequest(f"A '{kind}' fault needs 'status' (e.g. 429 or 503)", target="status")
    if spec.get("body") is not None and kind != "status":
        raise BadRequest("Only a 'status' fault answers a 'body'", target="body")
    text = spec.get("text")
    if text is not None and (kind not in ("status", "commit_then_status") or not isinstance(text, str)
                             or spec.get("body") is not None):
        raise BadRequest("Only a 'status' or 'commit_then_status' fault answers a 'text' (a string), and not "
                         "with a 'body'", target="text")
    methods = spec.get("methods")
    if methods is not None and (not isinstance(methods, list) or not all(isinstance(m, str) for m in methods)):
        raise BadRequest("'methods' must be a list of HTTP methods", target="methods")
    return FaultRule(
        id=rule_id, kind=kind, status=status, body=spec.get("body"), text=text,
        repeat=_number(spec, "repeat", int, 1, _MAX_TEXT // max(1, len(text or ""))) or 1,
        retry_after=_number(spec, "retry_after", (int, float), 0, None),
        latency_ms=_number(spec, "latency_ms", int, 0, _MAX_LATENCY_MS) or 0,
        hang_s=_number(spec, "hang_s", (int, float), 0, _MAX_HANG_S) if spec.get("hang_s") is not None else 30.0,
        count=_number(spec, "count", int, 1, None),
        fraction=_number(spec, "fraction", (int, float), 0, 1) if spec.get("fraction") is not None else 1.0,
        methods=[m.upper() for m in methods] if methods else None,
        path=spec.get("path"), _pattern=_pattern(spec.get("path")),
    )


def _number(spec: dict, name: str, kind, low, high):
    value = spec.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"'{name}' must be a number {bound}, got {value!r}", target=name)
    return value


def _pattern(text):
    if text is None:
        return None
    try:
        return re.compile(text)
    except (re.error, TypeError) as exc:
        raise BadRequest(f"'path' is not a valid regular expression: {exc}", target="path") from None
