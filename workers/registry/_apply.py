"""Declared workspaces (WORKSPACES_FILE, or `make run`'s `default` from the classic settings) applied
to the registry: idempotent, so every process may apply them at start.

What a declaration says wins over the registry (as `terraform apply` corrects drift): its fields,
its admin token (stored as a hash) and its webhook sources are set to what it declares. A field
it leaves empty is left as the registry has it, so a token or a webhook source added through the API
survives a restart. A declared secret stored sealed with a key this process does not hold is
left as stored (and logged): it cannot be compared, and sealing it again would lock out the processes
that hold that key. Workspaces in the registry that the file does not list are left running, not
deleted (as `kubectl apply` without --prune): deleting a workspace loses its events and runs, so it
takes an explicit `flask workspaces delete`; `apply_file` returns their names so the caller can say so.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict

import redis

from workers.registry import _records
from workers.registry._store import names, update
from workers.registry._webhooks import declare_webhooks
from workers.secrets import Keyring
from workers.workspaces import DEFAULT, Workspace, default_workspace, read_workspaces_file

log = logging.getLogger(__name__)


def apply_config(connection: redis.Redis, keyring: Keyring, config: Mapping) -> list[str]:
    """Apply what this process was configured with; returns registry workspaces the file does not list.

    config["WORKSPACES"] when given (tests pass Workspace objects there), else WORKSPACES_FILE,
    else `default` from the classic settings.
    """
    given = config.get("WORKSPACES")
    if given:
        return apply_workspaces(connection, keyring, given)
    if config.get("WORKSPACES_FILE"):
        return apply_file(connection, keyring, config["WORKSPACES_FILE"])
    return apply_default(connection, keyring, config)


def apply_file(connection: redis.Redis, keyring: Keyring, path: str) -> list[str]:
    """Apply a workspaces file (raises WorkspaceConfigError); returns registry workspaces it does not list."""
    return apply_workspaces(connection, keyring, read_workspaces_file(path))


def apply_default(connection: redis.Redis, keyring: Keyring, config: Mapping) -> list[str]:
    """Apply `make run`'s `default` workspace (INLOOX_URL, INLOOX_API_KEY, WEBHOOK_SECRET_*, …)."""
    apply_workspaces(connection, keyring, {DEFAULT: default_workspace(config)})
    return []


def apply_workspaces(connection: redis.Redis, keyring: Keyring, declared: Mapping[str, Workspace]) -> list[str]:
    """Create or update each declared workspace; returns the registry's others (left as they are)."""
    for workspace in declared.values():
        apply_one(connection, keyring, workspace)
    others = [name for name in names(connection) if name not in declared]
    if others:
        log.info("workspaces in the registry but not declared here, left running: %s", ", ".join(others))
    return others


def apply_one(connection: redis.Redis, keyring: Keyring, workspace: Workspace) -> None:
    """Set the fields `workspace` declares (empty ones are not declarations) on its registry record."""
    fields = _declared_fields(workspace)
    hooks = {s: list(v) for s, v in workspace.webhook_sources.items()}
    left: dict[str, str] = {}  # declared secret (field or webhook source) → the key id this process lacks

    def change(old):
        base = old or _records.empty_record(workspace.name, time.time())
        # A stored secret sealed with a key this process does not hold cannot be compared with the declared one.
        # Sealing the declared one again under this process's key would make the workspace unreadable to every
        # process that holds the stored key (all of them, when this one has a typo in SECRETS_KEY or dropped a
        # key too early): it is left as stored, and this process alone cannot serve the workspace, saying why.
        left.clear()
        for path, sealed in _records.sealed_values(base):
            missing = keyring.missing_key(sealed)
            if missing and (path[0] in fields or (path[0] == "webhooks" and path[1] in hooks)):
                left[path[0] if path[0] != "webhooks" else f"webhook source {path[1]!r}"] = missing
        declared = {name: value for name, value in fields.items() if name not in left}
        record = _records.with_fields(keyring, base, declared)
        if workspace.admin_token and not _records.token_matches(workspace.admin_token, record["admin_token_sha256"]):
            record["admin_token_sha256"] = _records.token_hash(workspace.admin_token)
        record = declare_webhooks(keyring, record, hooks)
        for source in hooks:
            if f"webhook source {source!r}" in left:
                record["webhooks"][source] = base["webhooks"][source]
        return record

    update(connection, workspace.name, change)
    if left:
        log.error("workspace %r: %s sealed with key %s, which SECRETS_KEY does not hold: the declared value is not "
                  "applied, the stored one is kept for the processes that hold that key",
                  workspace.name, ", ".join(left), ", ".join(sorted(set(left.values()))))


def _declared_fields(workspace: Workspace) -> dict:
    fields = {"inloox_url": workspace.inloox_url, "rules": workspace.rules_path, "limits": asdict(workspace.limits),
              "inloox_api_key": workspace.inloox_api_key, "slack_signing_secret": workspace.slack_signing_secret,
              "teams_security_token": workspace.teams_security_token, "chat_user_map": workspace.chat_user_map,
              "alerts": workspace.alerts}
    return {name: value for name, value in fields.items() if value not in ("", None)}
