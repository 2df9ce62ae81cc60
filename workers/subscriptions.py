"""Subscriptions to the InLoox change feed: who wants which changes delivered as signed webhooks.

    <prefix>subs    hash: subscription id → JSON {id, url, events, fields, secrets, created_at,
                    disabled, failing_since}; each secret sealed (workers/secrets), never plain

`events` are patterns over "<entity set>.<created|updated|deleted>" ("Task.updated", "Project.*",
"*.deleted"); `fields`, when given, narrows updates to those changing one of the fields. Each
subscription signs with its secrets (Standard Webhooks, `whsec_…`): after a rotation the old secret
keeps signing alongside the new one for ROTATION_OVERLAP, so receivers can switch without a gap.
A secret is shown once, when made or rotated, and stored sealed under the newest key of SECRETS_KEY;
one stored in plain text before secrets were sealed still signs until `flask secrets rotate` seals
it (`reseal_all`). Deliveries are in workers/deliveries.py.
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

from workers import activity, watched
from workers.secrets import Keyring, SecretUnreadable, is_sealed
from workers.workspaces import key

ROTATION_OVERLAP = 24 * 3600  # seconds an old secret keeps signing after a rotation
DISABLE_AFTER = 5 * 86400  # seconds of failing deliveries (none succeeding) before a subscription is disabled
MAX_SUBSCRIPTIONS = 1000  # per workspace
KINDS = ("created", "updated", "deleted")
_PATTERN = re.compile(r"^(\*|[A-Za-z][A-Za-z0-9_]*)\.(\*|created|updated|deleted)$")
_ALL_SUBS = "ws:*:subs"  # every workspace's subscriptions hash (a workspace's keys start ws:<name>:)
_ATTEMPTS = 20  # compare-and-set attempts before giving up on a subscription many writers change at once


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

    def signing_secrets(self, now: float, keyring: Keyring | None) -> list[str]:
        """The secrets that sign now, unsealed: the current one and any rotated out less than a day ago.

        A plain one (stored before secrets were sealed) signs as it is. One this keyring cannot open
        (or any sealed one when the process has no SECRETS_KEY) is left out; when that leaves none,
        raises SecretUnreadable naming the key it needs, so nothing goes out unsigned.
        """
        opened, unreadable = [], []
        for stored in (s["secret"] for s in self.secrets if s["until"] is None or s["until"] > now):
            try:
                opened.append(_unsealed(stored, keyring))
            except SecretUnreadable as exc:
                unreadable.append(exc)
        if not opened and unreadable:
            raise SecretUnreadable(f"subscription {self.id}: {unreadable[0]}", unreadable[0].key_id)
        return opened

    def public(self) -> dict:
        """The subscription as shown by the API and the dashboard: no secret."""
        shown = asdict(self)
        del shown["secrets"]
        return shown


def create(connection: redis.Redis, body: dict, *, keyring: Keyring, check_url=None,
           now: float | None = None) -> tuple[Subscription, str]:
    """Store a new subscription from an API body, its secret sealed; returns it and the secret (shown this once)."""
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
                       secrets=[{"secret": keyring.seal(secret), "until": None}],
                       created_at=time.time() if now is None else now)
    save(connection, sub)
    return sub, secret


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(random.token_bytes(32)).decode()


def save(connection: redis.Redis, sub: Subscription) -> None:
    with connection.pipeline(transaction=False) as pipe:
        pipe.hset(key("subs"), sub.id, json.dumps(asdict(sub)))
        activity.note(pipe)  # the poller watches its sets within seconds, quiet or not
        pipe.execute()


def get(connection: redis.Redis, sub_id: str) -> Subscription | None:
    raw = connection.hget(key("subs"), sub_id)
    return Subscription(**json.loads(raw)) if raw is not None else None


def all_subscriptions(connection: redis.Redis) -> list[Subscription]:
    found = [Subscription(**json.loads(raw)) for raw in connection.hvals(key("subs"))]
    return sorted(found, key=lambda s: (s.created_at, s.id))


def delete(connection: redis.Redis, sub_id: str) -> bool:
    # Its index of deliveries goes with it: nothing reads it once the subscription is gone, and a workspace that
    # subscribes again and again left one behind each time (the records themselves expire).
    with connection.pipeline(transaction=False) as pipe:
        pipe.hdel(key("subs"), sub_id)
        pipe.delete(key(f"subs:{sub_id}:deliveries"))
        return bool(pipe.execute()[0])


def rotate(connection: redis.Redis, sub_id: str, *, keyring: Keyring,
           now: float | None = None) -> tuple[Subscription, str] | None:
    """A new current secret, sealed; the old ones sign alongside it for ROTATION_OVERLAP.

    Returns the subscription and the new secret (shown this once); None: no such subscription.
    """
    now = time.time() if now is None else now
    secret = new_secret()

    def change(sub: Subscription) -> None:
        kept = [{**s, "until": now + ROTATION_OVERLAP if s["until"] is None else s["until"]}
                for s in sub.secrets if s["until"] is None or s["until"] > now]
        sub.secrets = [{"secret": keyring.seal(secret), "until": None}, *kept]

    sub = update(connection, sub_id, change)
    return None if sub is None else (sub, secret)


def update(connection: redis.Redis, sub_id: str, change) -> Subscription | None:
    """Apply `change(sub)` to the stored subscription in one compare-and-set; the result, or None if none.

    A delivery noting a failure and a rotation (of the secret, or of the keys) may meet on one
    subscription: writing back a whole copy read earlier would undo the other's change.
    """
    return _update(connection, key("subs"), sub_id, change)


def _update(connection: redis.Redis, subs_key: str, sub_id: str, change) -> Subscription | None:
    def write(pipe) -> Subscription | None:
        raw = pipe.hget(subs_key, sub_id)
        if raw is None:
            return None
        sub = Subscription(**json.loads(raw))
        change(sub)
        pipe.multi()
        pipe.hset(subs_key, sub_id, json.dumps(asdict(sub)))
        return sub

    # Watched: the whole hash, so any subscription of the workspace written meanwhile makes it read again.
    return watched.transaction(connection, write, subs_key, attempts=_ATTEMPTS)


def reseal_all(connection: redis.Redis, keyring: Keyring, unreadable: list[str]) -> int:
    """Every workspace's subscription secrets sealed under the newest key, plain ones included; how many.

    Secrets past their overlap are dropped (they sign nothing any more). A subscription with a secret
    that cannot be opened is left as it is and named in `unreadable` (its workspace and id, the key
    it needs); every other one is still re-sealed.
    """
    count = 0
    for subs_key in connection.scan_iter(match=_ALL_SUBS, _type="hash"):
        subs_key = subs_key.decode()
        workspace = subs_key.split(":")[1]
        for sub_id in connection.hkeys(subs_key):
            try:
                count += _reseal(connection, keyring, subs_key, sub_id.decode(), workspace)
            except SecretUnreadable as exc:
                unreadable.append(str(exc))
    return count


def _reseal(connection: redis.Redis, keyring: Keyring, subs_key: str, sub_id: str, workspace: str) -> int:
    resealed = 0
    now = time.time()

    def change(sub: Subscription) -> None:
        nonlocal resealed
        resealed, live = 0, []
        for entry in sub.secrets:
            if entry["until"] is not None and entry["until"] <= now:
                continue
            stored = entry["secret"]
            if not keyring.is_current(stored):
                stored, resealed = _resealed(keyring, stored, workspace, sub_id), resealed + 1
            live.append({**entry, "secret": stored})
        sub.secrets = live

    _update(connection, subs_key, sub_id, change)
    return resealed


def _resealed(keyring: Keyring, stored: str, workspace: str, sub_id: str) -> str:
    try:
        return keyring.rotated(stored) if is_sealed(stored) else keyring.seal(stored)
    except SecretUnreadable as exc:
        raise SecretUnreadable(f"workspace {workspace!r}, subscription {sub_id}: {exc}", exc.key_id) from None


def _unsealed(stored: str, keyring: Keyring | None) -> str:
    if not is_sealed(stored):
        return stored  # stored before secrets were sealed; `flask secrets rotate` seals it
    if keyring is None:
        raise SecretUnreadable("it is sealed and this process has no SECRETS_KEY")
    return keyring.unseal(stored)


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
