"""`flask secrets rotate`: every sealed secret re-sealed under the newest key of SECRETS_KEY: the
registry's, then every workspace's subscription secrets (workers/subscriptions.py)."""
from __future__ import annotations

import copy

import redis

from workers import subscriptions
from workers.registry import _records
from workers.registry._store import names, update
from workers.secrets import Keyring


def rotate_secrets(connection: redis.Redis, keyring: Keyring) -> int:
    """Re-seal every secret not yet under the newest key, in the registry and in every workspace's
    subscriptions (sealing those stored in plain text before sealing began); returns how many.

    Raises SecretUnreadable (naming the workspace and the key) when one cannot be opened with these
    keys: nothing of that workspace is changed, and the ones rotated before it stay rotated.
    """
    count = 0
    for name in names(connection):
        count += _rotate_record(connection, keyring, name)
    return count + subscriptions.reseal_all(connection, keyring)


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
    from workers.secrets import SecretUnreadable

    try:
        return rotate(sealed)
    except SecretUnreadable as exc:
        raise SecretUnreadable(f"workspace {name!r}: {exc}", exc.key_id) from None


def _set(record: dict, path: tuple, value: str) -> None:
    for part in path[:-1]:
        record = record[part]
    record[path[-1]] = value
