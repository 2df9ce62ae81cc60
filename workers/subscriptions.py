"""Subscriptions to the InLoox change feed: who wants which changes delivered as signed webhooks.

    <prefix>subs    hash: subscription id → JSON {id, url, events, fields, secrets, created_at,
                    disabled, failing_since}

`events` are patterns over "<entity set>.<created|updated|deleted>" ("Task.updated", "Project.*",
"*.deleted"); `fields`, when given, narrows updates to those changing one of the fields. Each
subscription signs with its secrets (Standard Webhooks, `whsec_…`): after a rotation the old secret
keeps signing alongside the new one for ROTATION_OVERLAP, so receivers can switch without a gap.
Deliveries are in workers/deliveries.py.
"""
from __future__ import annotations

import base64
import fnmatch
import json
import re
import secrets as random
import time
from dataclasses import asdict, dataclass, field

import redis

from workers.workspaces import key

ROTATION_OVERLAP = 24 * 3600  # seconds an old secret keeps signing after a rotation
DISABLE_AFTER = 5 * 86400  # seconds of failing deliveries (none succeeding) before a subscription is disabled
MAX_SUBSCRIPTIONS = 1000  # per workspace
KINDS = ("created", "updated", "deleted")
_PATTERN = re.compile(r"^(\*|[A-Za-z][A-Za-z0-9_]*)\.(\*|created|updated|deleted)$")


class SubscriptionError(ValueError):
    """A subscription request that cannot be accepted; the message names the field."""


@dataclass
class Subscription:
    id: str
    url: str
    events: list[str]
    fields: list[str] | None = None
    secrets: list[dict] = field(default_factory=list)  # [{"secret", "until"}]: until None = current
    created_at: float = 0.0
    disabled: str = ""  # why it was disabled ("" while active)
    failing_since: float | None = None  # first failed attempt since the last delivered one

    def wants(self, entity_set: str, kind: str, changed: set[str]) -> bool:
        """True when an event `<entity_set>.<kind>` changing `changed` fields is one to deliver."""
        if self.disabled or not any(fnmatch.fnmatchcase(f"{entity_set}.{kind}", p) for p in self.events):
            return False
        return kind != "updated" or not self.fields or bool(changed & set(self.fields))

    def signing_secrets(self, now: float) -> list[str]:
        """The secrets that sign now: the current one and any rotated out less than a day ago."""
        return [s["secret"] for s in self.secrets if s["until"] is None or s["until"] > now]

    def public(self) -> dict:
        """The subscription as shown by the API and the dashboard: no secret."""
        shown = asdict(self)
        del shown["secrets"]
        return shown


def create(connection: redis.Redis, body: dict, *, check_url=None, now: float | None = None) -> tuple[Subscription, str]:
    """Store a new subscription from an API body; returns it and its secret (shown this once)."""
    url, events, fields = body.get("url"), body.get("events"), body.get("fields")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise SubscriptionError("url: an http:// or https:// URL is needed")
    if check_url is not None:
        check_url(url)
    if not isinstance(events, list) or not events or not all(isinstance(e, str) and _PATTERN.match(e) for e in events):
        raise SubscriptionError('events: a list of patterns such as "Task.updated", "Project.*", "*.deleted"')
    if fields is not None and (not isinstance(fields, list) or not all(isinstance(f, str) and f for f in fields)):
        raise SubscriptionError("fields: a list of field names (deliver an update only when one of them changed)")
    if connection.hlen(key("subs")) >= MAX_SUBSCRIPTIONS:
        raise SubscriptionError(f"this workspace has {MAX_SUBSCRIPTIONS} subscriptions, the most it may have")
    secret = new_secret()
    sub = Subscription(id="sub_" + random.token_hex(8), url=url, events=events, fields=fields or None,
                       secrets=[{"secret": secret, "until": None}], created_at=time.time() if now is None else now)
    save(connection, sub)
    return sub, secret


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(random.token_bytes(32)).decode()


def save(connection: redis.Redis, sub: Subscription) -> None:
    connection.hset(key("subs"), sub.id, json.dumps(asdict(sub)))


def get(connection: redis.Redis, sub_id: str) -> Subscription | None:
    raw = connection.hget(key("subs"), sub_id)
    return Subscription(**json.loads(raw)) if raw is not None else None


def all_subscriptions(connection: redis.Redis) -> list[Subscription]:
    found = [Subscription(**json.loads(raw)) for raw in connection.hvals(key("subs"))]
    return sorted(found, key=lambda s: (s.created_at, s.id))


def delete(connection: redis.Redis, sub_id: str) -> bool:
    return bool(connection.hdel(key("subs"), sub_id))


def rotate(connection: redis.Redis, sub_id: str, *, now: float | None = None) -> tuple[Subscription, str] | None:
    """A new current secret; the old ones sign alongside it for ROTATION_OVERLAP. None: no such subscription."""
    sub = get(connection, sub_id)
    if sub is None:
        return None
    now = time.time() if now is None else now
    secret = new_secret()
    kept = [{**s, "until": now + ROTATION_OVERLAP if s["until"] is None else s["until"]}
            for s in sub.secrets if s["until"] is None or s["until"] > now]
    sub.secrets = [{"secret": secret, "until": None}, *kept]
    save(connection, sub)
    return sub, secret


def matching(connection: redis.Redis, event: dict) -> list[Subscription]:
    """The active subscriptions that want this InLoox event."""
    if event.get("source") != "inloox" or not connection.exists(key("subs")):
        return []
    changed = set(event.get("changes") or ())
    return [s for s in all_subscriptions(connection) if s.wants(event.get("entity_set") or "", event["kind"], changed)]


def watched_sets(connection: redis.Redis, known_sets) -> dict[str, frozenset[str] | None]:
    """Entity set → fields the active subscriptions want (None: any), for the poller; `*` means every known set."""
    watched: dict[str, set[str] | None] = {}
    for sub in all_subscriptions(connection):
        if sub.disabled:
            continue
        for pattern in sub.events:
            entity_set, _, kind = pattern.partition(".")
            for name in (known_sets if entity_set == "*" else [entity_set]):
                fields = watched.setdefault(name, set())
                if fields is None:
                    continue
                if kind != "updated" or not sub.fields:  # created/deleted, or every update: all fields
                    watched[name] = None
                else:
                    fields.update(sub.fields)
    return {name: None if fields is None else frozenset(fields) for name, fields in watched.items()}


def merged(*watched: dict[str, frozenset[str] | None]) -> dict[str, frozenset[str] | None]:
    """Watched sets of rules and of subscriptions together: a set's fields add up; None (any field) wins."""
    out: dict[str, frozenset[str] | None] = {}
    for one in watched:
        for name, fields in one.items():
            if name in out and (out[name] is None or fields is None):
                out[name] = None
            else:
                out[name] = (out.get(name) or frozenset()) | fields if fields is not None else None
    return out
