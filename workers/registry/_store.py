"""Reading and writing registry records: each write is one compare-and-set that also bumps the version."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from workers import activity, scripts
from workers.registry import _records
from workers.secrets import Keyring
from workers.workspaces import NAME, Workspace

RECORDS = "registry:workspaces"  # hash: workspace name → record JSON (workers/registry/_records.py)
VERSION = "registry:version"  # a counter bumped by every change, so processes re-read only then
ROTATION_OVERLAP = 24 * 3600  # seconds an old webhook secret keeps verifying after a rotation
_ATTEMPTS = 20  # compare-and-set attempts before giving up on a record many writers change at once

# KEYS: records hash, version. ARGV: name, the record JSON read ("" when none), the new record JSON
# ("" to delete). Writes only when nobody changed the record since it was read; returns 1 if written.
_SWAP = scripts.script("""
local stored = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if stored ~= ARGV[2] then return 0 end
-- The version first: Redis keeps what a script wrote before an error, and a record written before an INCR it refused
-- (a version that is no counter) was a workspace made, answered as an error, and never re-read by any process.
redis.call('INCR', KEYS[2])
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1
""")


class RegistryError(ValueError):
    """A registry request that cannot be done; the message says why (an unknown workspace, a bad name)."""


class UnknownWorkspace(RegistryError):
    """No workspace of that name."""


@dataclass(frozen=True)
class Change:
    """What a write did: the workspace now, whether it was created, and its new admin token (shown once)."""

    workspace: dict  # the public record (no secret)
    created: bool
    admin_token: str = ""
    changed: bool = True


def check_name(name: str) -> str:
    """`name` when it can name a workspace; RegistryError otherwise."""
    if not isinstance(name, str) or not NAME.match(name):
        raise RegistryError(f"workspace name {name!r}: lowercase letters, digits and '-', at most 40, "
                            "starting with a letter or digit")
    return name


def read(connection: redis.Redis, name: str) -> dict | None:
    """The stored record of `name` (secrets sealed), or None."""
    raw = connection.hget(RECORDS, name)
    return _records.decode(raw) if raw is not None else None


def names(connection: redis.Redis) -> list[str]:
    """Every workspace in the registry, sorted."""
    return sorted(n.decode() for n in connection.hkeys(RECORDS))


def get(connection: redis.Redis, name: str) -> dict | None:
    """The workspace `name` as the API shows it (no secret), or None."""
    record = read(connection, name)
    return _records.public(record) if record else None


def version(connection: redis.Redis) -> int:
    """The registry's version: it changes on every write."""
    return int(connection.get(VERSION) or 0)


def update(connection: redis.Redis, name: str, change: Callable[[dict | None], dict | None]) -> tuple[dict | None, dict | None]:
    """Apply `change` (old record or None → new record, or None to delete) atomically; returns (old, new).

    A change that leaves the record as it was writes nothing and leaves the version alone.
    """
    for _ in range(_ATTEMPTS):
        raw = connection.hget(RECORDS, name)
        old = _records.decode(raw) if raw is not None else None
        new = change(old)
        if _same(old, new):
            return old, old
        encoded = "" if new is None else _records.encode({**new, "updated_at": time.time()})
        if scripts.call(connection, _SWAP, keys=[RECORDS, VERSION], args=[name, raw or "", encoded]):
            if new is not None:
                # A changed workspace is a lively one: its workers look after it at full speed (a raised
                # limit releases its waiting runs within seconds, workers/consumer/).
                connection.set(activity.key(name), int(time.time() * 1000))
            return old, (None if new is None else _records.decode(encoded))
    raise RegistryError(f"workspace {name!r} changed {_ATTEMPTS} times while being written; try again")


def _same(old: dict | None, new: dict | None) -> bool:
    if old is None or new is None:
        return old is new
    return {**old, "updated_at": 0} == {**new, "updated_at": 0}


def existing(connection: redis.Redis, name: str) -> Callable[[Callable[[dict], dict]], Callable]:
    """Wrap a change of an existing record so that a missing one raises UnknownWorkspace."""
    def wrap(change: Callable[[dict], dict]):
        def checked(old: dict | None):
            if old is None:
                raise UnknownWorkspace(f"no workspace {name!r}")
            return change(old)
        return checked
    return wrap


def put(connection: redis.Redis, keyring: Keyring, name: str, fields: dict) -> Change:
    """Create workspace `name` or update the fields given; the same fields twice change nothing.

    On create, a new admin token is made and returned in the Change, the only time it is seen.
    """
    check_name(name)
    unknown = set(fields) - set(_records.FIELDS)
    if unknown:
        raise RegistryError(f"unknown fields: {', '.join(sorted(unknown))}")
    token = _records.new_admin_token()

    def change(old):
        if old is None and not fields.get("inloox_url"):
            raise RegistryError("inloox_url: a new workspace needs its InLoox URL")
        base = old or {**_records.empty_record(name, time.time()), "admin_token_sha256": _records.token_hash(token)}
        return _records.with_fields(keyring, base, fields)

    old, new = update(connection, name, change)
    return Change(_records.public(new), created=old is None, admin_token=token if old is None else "",
                  changed=old != new)


def set_paused(connection: redis.Redis, name: str, paused: bool) -> dict:
    """Pause or resume `name`; returns its public record. Paused: events are accepted, nothing runs."""
    _, new = update(connection, name, existing(connection, name)(lambda old: {**old, "paused": paused}))
    return _records.public(new)


def pause(connection: redis.Redis, name: str) -> dict:
    """Pause `name` (its events wait in its log until it is resumed)."""
    return set_paused(connection, name, True)


def resume(connection: redis.Redis, name: str) -> dict:
    """Resume `name`: what waited runs, in order."""
    return set_paused(connection, name, False)


def new_admin_token(connection: redis.Redis, name: str) -> str:
    """A new admin token for `name` (returned this once); the old one stops working at once."""
    token = _records.new_admin_token()
    update(connection, name, existing(connection, name)(
        lambda old: {**old, "admin_token_sha256": _records.token_hash(token)}))
    return token


def set_admin_token(connection: redis.Redis, name: str, token: str) -> None:
    """Store the hash of a token chosen elsewhere (a workspaces file, ADMIN_TOKEN)."""
    update(connection, name, existing(connection, name)(
        lambda old: {**old, "admin_token_sha256": _records.token_hash(token)}))


def workspace(keyring: Keyring, record: dict) -> Workspace:
    """The Workspace of a stored record, secrets unsealed (raises SecretUnreadable)."""
    return _records.to_workspace(keyring, _records.live_secrets(record, time.time()))
