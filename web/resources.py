"""Shared clients owned by the app: Redis, and per workspace InLoox and the rules, opened lazily.

As in Flask's tutorial `db.py`: `get_*()` opens on first use and caches; nothing is built at import
time, so tests and CLI commands that never touch Redis never connect to it. InLoox and the rules
are those of the request's workspace (see web/workspace.py).
"""
from __future__ import annotations

import redis
from flask import Flask, current_app

from inloox import Client
from workers import registry, workspaces
from workers.logs import follow_registry
from workers.secrets import Keyring, SecretsKeyError
from workers.worker_context import WorkerContext, build_context

_EXTENSION = "inloox_automation"


def get_redis() -> redis.Redis:
    """The app's Redis client (a connection pool shared by all threads of this process)."""
    return _cached("redis", lambda: redis.Redis.from_url(
        current_app.config["REDIS_URL"], socket_connect_timeout=2, socket_timeout=5,
    ))


def get_keyring() -> Keyring:
    """The keys of SECRETS_KEY, which seal and unseal every secret the registry keeps."""
    return _cached("keyring", lambda: Keyring.from_config(current_app.config))


def get_registry() -> registry.View:
    """The app's live view of the workspace registry; the first call applies this app's declared
    workspaces (WORKSPACES_FILE, or `default` from the settings) to it.

    Without SECRETS_KEY no registry can be read or written: the app serves the workspaces its own
    settings declare (as before the registry existed), says so once, and the operator routes that
    need the registry answer 503 naming the setting; never a 500 on every request.
    """
    store = current_app.extensions[_EXTENSION]
    if "registry" not in store:
        try:
            keyring = get_keyring()
        except SecretsKeyError as exc:
            current_app.logger.warning("no workspace registry (%s): serving the declared workspaces only", exc)
            store["registry"] = DeclaredOnly(current_app.config.get("WORKSPACES") or {}, str(exc))
            return store["registry"]
        registry.apply_config(get_redis(), keyring, current_app.config)
        store["registry"] = registry.View(get_redis(), keyring,
                                          refresh_seconds=float(current_app.config.get("REGISTRY_REFRESH_SECONDS", 1)))
        follow_registry(store["registry"])  # workspaces added or rotated later have their secrets redacted too
    return store["registry"]


class DeclaredOnly:
    """A View's stand-in when this process has no SECRETS_KEY: its declared workspaces, nothing live."""

    def __init__(self, declared: dict, why: str):
        self._declared, self.why = dict(declared), why

    def workspaces(self) -> dict:
        return self._declared

    def unreadable(self) -> dict:
        return {}

    def refresh(self) -> None:
        pass


def get_context() -> WorkerContext:
    """The current workspace's InLoox client, rules and settings (built again when the workspace changed)."""
    workspace = workspaces.current()
    store = current_app.extensions[_EXTENSION]
    built = store.get(f"context:{workspace.name}")
    if built is None or built[0] != workspace:
        built = store[f"context:{workspace.name}"] = (workspace, build_context(current_app.config, workspace,
                                                                               get_redis()))
    return built[1]


def get_inloox() -> Client:
    """The InLoox client of the current workspace."""
    return get_context().client


def _cached(name: str, build):
    # Cached on the app, not on `g`: both clients pool connections and are thread-safe, and a
    # pool per request would cost a new TCP connection on every request.
    store = current_app.extensions[_EXTENSION]
    if name not in store:
        store[name] = build()
    return store[name]


def init_app(app: Flask) -> None:
    """Give the app an empty resource cache."""
    app.extensions[_EXTENSION] = {}
