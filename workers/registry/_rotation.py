"""`flask secrets rotate`: every sealed secret re-sealed under the newest key of SECRETS_KEY: the
registry's, then every workspace's subscription secrets (workers/subscriptions.py)."""
from __future__ import annotations

import copy

import redis

from workers import subscriptions
from workers.registry import _records
from workers.registry._store import names, update
from workers.secrets import Keyring, SecretUnreadable


def rotate_secrets(connection: redis.Redis, keyring: Keyring) -> int:
    """Re-seal every secret not yet under the newest key, in the registry and in every workspace's
    subscriptions (sealing those stored in plain text before sealing began); returns how many.

    A workspace (or subscription) with a secret these keys cannot open is left as it is, and every
    other one is still re-sealed: one customer's lost key must not keep every other secret under the
    old key. Then it raises SecretUnreadable naming each one left and the key it needs (never a
    secret), after the others are done: the old keys must stay in SECRETS_KEY until those are fixed.
    """
    count, unreadable = 0, []
    for name in names(connection):
        try:
            count += _rotate_record(connection, keyring, name)
        except SecretUnreadable as exc:
            unreadable.append(str(exc))
    count += subscriptions.reseal_all(connection, keyring, unreadable)
    if unreadable:
        raise SecretUnreadable(f"re-sealed {count} secret(s) under key {keyring.newest}, but {len(unreadable)} "
                               "workspace record(s) or subscription(s) hold a secret SECRETS_KEY cannot open, left as "
                               "they are (keep their key in SECRETS_KEY, or set those secrets again): "
                               + "; ".join(unreadable))
    return count


def _rotate_record(connection: redis.Redis, keyring: Keyring, name: str) -> int:
    rotated = 0

    def change(old):
        nonlocal rotated
        if old is None:
            return None
        rotated = 0
        new = copy.deepcopy(old)
        for path, sealed in _records.sealed_values(old):
            if not keyring.is_current(sealed):
                _set(new, path, _with_workspace(name, keyring.rotated, sealed))
                rotated += 1
        return new

    update(connection, name, change)
    return rotated


def _with_workspace(name: str, rotate, sealed: str) -> str:
    try:
        return rotate(sealed)
    except SecretUnreadable as exc:
        raise SecretUnreadable(f"workspace {name!r}: {exc}", exc.key_id) from None


def _set(record: dict, path: tuple, value: str) -> None:
    for part in path[:-1]:
        record = record[part]
    record[path[-1]] = value
