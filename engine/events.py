"""Events: something happened in a source (InLoox, a webhook, chat, the scheduler, a person).

Sources and their `kind`:
    inloox    created | updated | deleted  (entity_set, key, changes, entity, actor)
    webhook   the hook's name              (payload: body, headers)
    chat      the command's name           (payload: args, user, text)
    schedule  the id of the rule it fires  (payload: time)
    manual    the id of the rule it fires  (payload: anything the person passed)
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from collections import abc
from typing import Any, Mapping

from .edm import parse_datetime

SOURCES = ("inloox", "webhook", "chat", "schedule", "manual")
# What an event id may hold as it is: a person pastes ids into a shell (`flask events show ID`), so an
# id is one shell word. The same set as `shlex.quote` leaves alone, less `%`, which escapes the rest.
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_@+=:,./-]")


@dataclass(frozen=True)
class Event:
    """One thing that happened; `changes` maps field → (from, to); `id` is the dedup id."""

    source: str
    kind: str
    occurred_at: datetime
    id: str = ""
    entity_set: str | None = None
    key: str | None = None
    changes: Mapping[str, tuple[Any, Any]] = field(default_factory=dict, hash=False)
    entity: Mapping[str, Any] = field(default_factory=dict, hash=False)
    actor: Mapping[str, Any] = field(default_factory=dict, hash=False)
    payload: Mapping[str, Any] = field(default_factory=dict, hash=False)
    chained: bool = False  # caused by one of our own writes; rules opt in with allow_chained

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"unknown event source {self.source!r}, wanted one of {', '.join(SOURCES)}")
        if self.occurred_at.tzinfo is None:
            raise ValueError("occurred_at must be timezone-aware")
        if not self.id:
            object.__setattr__(self, "id", _content_id(self))

    def to_dict(self) -> dict:
        """JSON-safe form; `from_dict` reverses it."""
        return {
            "id": self.id, "source": self.source, "kind": self.kind,
            "occurred_at": self.occurred_at.isoformat(),
            "entity_set": self.entity_set, "key": self.key,
            "changes": {f: [a, b] for f, (a, b) in self.changes.items()},
            "entity": dict(self.entity), "actor": dict(self.actor),
            "payload": dict(self.payload), "chained": self.chained,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Event":
        """An Event from `to_dict` output or a fixture; changes may be [from, to] or {from, to}."""
        occurred = parse_datetime(d.get("occurred_at"))
        if occurred is None:
            raise ValueError(f"occurred_at {d.get('occurred_at')!r} is not an ISO date-time")
        return cls(
            source=d["source"], kind=d["kind"], occurred_at=occurred, id=d.get("id") or "",
            entity_set=d.get("entity_set"), key=d.get("key"),
            changes={f: _pair(v) for f, v in (d.get("changes") or {}).items()},
            entity=d.get("entity") or {}, actor=d.get("actor") or {},
            payload=d.get("payload") or {}, chained=bool(d.get("chained", False)),
        )


_FIELDS = ("source", "kind", "occurred_at", "id", "entity_set", "key", "changes", "entity", "actor", "payload",
           "chained")
_REQUIRED = {"source": "one of " + ", ".join(SOURCES), "kind": "e.g. updated, or the webhook's name",
             "occurred_at": "an ISO date-time with an offset, e.g. 2025-04-01T09:00:00Z"}


def event_from_file(data: Any) -> Event:
    """An Event from what a person wrote (a fixture's `event:`, `flask rules explain --event FILE`).

    `from_dict` reads stored events and takes no notice of keys it does not know; a person's file is
    checked, since a webhook's `body:` written beside `source:` instead of under `payload:` would
    otherwise make every condition on `webhook.body` read "missing", with nothing to say why.
    `flask events show --json` output (the event under `event`, beside its `summary`) is taken as it is.
    Raises ValueError saying what to write.
    """
    if not isinstance(data, abc.Mapping):
        raise ValueError(f"an event is a mapping with {', '.join(_REQUIRED)}, not {type(data).__name__}")
    if "source" not in data and isinstance(data.get("event"), abc.Mapping):
        data = data["event"]
    unknown = [str(k) for k in data if k not in _FIELDS]
    if unknown:
        webhook = " (a webhook's body and headers go under payload: {body: …, headers: …})" \
            if data.get("source") == "webhook" or {"body", "headers"} & set(unknown) else ""
        raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: an event "
                         f"has {', '.join(_FIELDS)}{webhook}")
    for name, example in _REQUIRED.items():
        if data.get(name) in (None, ""):
            raise ValueError(f"{name} is missing: {example}")
    for name in ("changes", "entity", "actor", "payload"):
        if data.get(name) is not None and not isinstance(data[name], abc.Mapping):
            raise ValueError(f"{name} is a mapping, not {type(data[name]).__name__}")
    return Event.from_dict(data)


def id_part(text: str) -> str:
    """`text` made fit for an event id: each character a shell would split or strip at becomes %XX (UTF-8).

    Deterministic and one-to-one, so the same change always gets the same id (and dedupes the same).
    """
    return _ID_UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), text)


def _pair(value: Any) -> tuple[Any, Any]:
    if isinstance(value, abc.Mapping):
        return (value.get("from"), value.get("to"))
    a, b = value
    return (a, b)


def _content_id(event: Event) -> str:
    """A deterministic id from the event's content, for sources that have no id of their own."""
    body = {k: v for k, v in event.to_dict().items() if k != "id"}
    text = json.dumps(body, sort_keys=True, default=str)
    return "ev_" + hashlib.sha256(text.encode()).hexdigest()[:24]


def entity_name(entity_set: str) -> str:
    """The template name of an entity set's entity: Task → task, TimeEntry → time_entry."""
    out = ""
    for i, ch in enumerate(entity_set):
        if ch.isupper() and i and not entity_set[i - 1].isupper():
            out += "_"
        out += ch.lower()
    return out
