"""A workspace's webhook sources: each a name and its `whsec_` secrets (two during a rotation's overlap)."""
from __future__ import annotations

import re
import time

import redis

from workers import metrics
from workers.registry import _records
from workers.registry._store import ROTATION_OVERLAP, RegistryError, UnknownWorkspace, existing, read, update
from workers.secrets import Keyring

# Also part of the hooks URL and of event ids; `\Z`, not `$`, which also matches before a final newline ("forms\n").
SOURCE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}\Z")


class UnknownSource(RegistryError):
    """The workspace has no webhook source of that name."""


class SourceExists(RegistryError):
    """The workspace has a webhook source of that name already."""


def check_source(source: str) -> str:
    """`source` when it can name a webhook source; RegistryError otherwise."""
    if not isinstance(source, str) or not SOURCE.match(source):
        raise RegistryError(f"source {source!r}: lowercase letters, digits and '-', at most 40")
    return source


def add_webhook(connection: redis.Redis, keyring: Keyring, name: str, source: str) -> str:
    """Add webhook source `source` to workspace `name`; returns its new secret (shown this once)."""
    check_source(source)
    secret = _records.new_webhook_secret()

    def change(old):
        if source in old["webhooks"]:
            raise SourceExists(f"workspace {name!r} already has webhook source {source!r}; "
                                "rotate its secret instead")
        now = time.time()
        hook = {"created_at": now, "declared": False, "secrets": [_secret(keyring, secret, now)]}
        return {**old, "webhooks": {**old["webhooks"], source: hook}}

    update(connection, name, existing(connection, name)(change))
    return secret


def rotate_webhook(connection: redis.Redis, keyring: Keyring, name: str, source: str) -> str:
    """A new secret for `source`; the current one keeps verifying for ROTATION_OVERLAP. Returns the new one."""
    secret = _records.new_webhook_secret()

    def change(old):
        hook = _hook(old, name, source)
        now = time.time()
        kept = [{**s, "expires_at": s["expires_at"] or now + ROTATION_OVERLAP}
                for s in hook["secrets"] if not s["expires_at"] or s["expires_at"] > now]
        rotated = {**hook, "secrets": [_secret(keyring, secret, now), *kept]}
        return {**old, "webhooks": {**old["webhooks"], source: rotated}}

    update(connection, name, existing(connection, name)(change))
    return secret


def remove_webhook(connection: redis.Redis, name: str, source: str) -> None:
    """Remove webhook source `source`: its deliveries are refused from now on, and its counters go."""
    def change(old):
        _hook(old, name, source)
        return {**old, "webhooks": {k: v for k, v in old["webhooks"].items() if k != source}}

    update(connection, name, existing(connection, name)(change))
    # Its events' counters (metrics:counters, shared by every workspace) would stay for as long as the workspace
    # lives, a set more for each source ever removed: its deliveries now count as kind "unknown" (web/hooks.py).
    metrics.forget(connection, workspace=name, source="webhook", kind=source)


def webhooks(connection: redis.Redis, name: str) -> list[dict]:
    """The webhook sources of `name`: names and creation times only, never a secret."""
    old = read(connection, name)
    if old is None:
        raise UnknownWorkspace(f"no workspace {name!r}")
    return [{"source": source, "created_at": hook["created_at"],
             "rotating": len(hook["secrets"]) > 1}
            for source, hook in sorted(old["webhooks"].items())]


def declare_webhooks(keyring: Keyring, record: dict, declared: dict[str, list[str]]) -> dict:
    """`record` with the sources a file or WEBHOOK_SECRET_* declare set to exactly those secrets.

    Sources added through the API are left alone; a source the declaration used to hold and no
    longer does is removed (as WEBHOOK_SECRET_FORMS unset stops /hooks/forms).
    """
    hooks = {source: hook for source, hook in record["webhooks"].items()
             if not hook.get("declared") or source in declared}
    for source, secrets in declared.items():
        hook = hooks.get(source)
        if hook and hook.get("declared") and _holds(keyring, hook, secrets):
            continue
        now = time.time()
        hooks[source] = {"created_at": hook["created_at"] if hook else now, "declared": True,
                         "secrets": [_secret(keyring, s, now) for s in secrets]}
    return {**record, "webhooks": hooks}


def _holds(keyring: Keyring, hook: dict, secrets: list[str]) -> bool:
    stored = hook["secrets"]
    return len(stored) == len(secrets) and all(
        _records.same_secret(keyring, s["secret"], wanted) for s, wanted in zip(stored, secrets))


def _hook(record: dict, name: str, source: str) -> dict:
    if source not in record["webhooks"]:
        raise UnknownSource(f"workspace {name!r} has no webhook source {source!r}")
    return record["webhooks"][source]


def _secret(keyring: Keyring, secret: str, now: float) -> dict:
    return {"secret": keyring.seal(secret), "created_at": now, "expires_at": None}
