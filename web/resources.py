"""Shared clients owned by the app: Redis, and per workspace InLoox and the rules, opened lazily.

As in Flask's tutorial `db.py`: `get_*()` opens on first use and caches; nothing is built at import
time, so tests and CLI commands that never touch Redis never connect to it. InLoox and the rules
are those of the request's workspace (see web/workspace.py).
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from flask import Flask, current_app

from inloox import Client
from inloox.errors import Throttled
from web import bundle_check
from workers import registry, workspaces
from workers.logs import follow_registry
from workers.secrets import Keyring, SecretsKeyError
from workers.settings import send_once
from workers.worker_context import WorkerContext, build_context, forget, inloox_client

_EXTENSION = "inloox_automation"
# What the web asks InLoox (who a chat user is, which task they mean; /readyz's question) a person or a probe waits
# for, on a thread every customer's webhooks need too: Slack wants its answer within 3 s. One workspace's InLoox
# that hung held a thread per request for INLOOX_TIMEOUT, and a few chat commands held every thread of the web.
WEB_INLOOX_SECONDS = 2.5
WEB_INLOOX_SLOTS = 2  # requests of one workspace waiting for its InLoox at once, per web process; the others are told
_slots: dict[str, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()
_PER_WORKSPACE = ("context:", "inloox:")  # the store's keys built for one workspace: <prefix><name>
_SEEN = "served_seen"  # the store's key of the registry's set last swept against (the View keeps one dict per read)
_sweep_lock = threading.Lock()


def get_redis() -> redis.Redis:
    """The app's Redis client (a connection pool shared by all threads of this process)."""
    return _cached("redis", lambda: redis.Redis.from_url(
        current_app.config["REDIS_URL"], socket_connect_timeout=2, socket_timeout=5, retry=send_once(),
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

    def needed_keys(self) -> dict:
        return {}

    def refresh(self) -> None:
        pass


def let_go_of_unserved(known: dict) -> None:
    """Drop what this process built for a workspace `known` (the registry's set, as the View read it) no longer lists.

    A hosted service creates and deletes workspaces all day, and a deleted one's context, InLoox client, slot and
    compiled rules would otherwise stay until the process restarts. The View keeps one dict until the registry
    changes, so this is an identity check per request and a sweep of the store once per change. The sweep takes
    every name not served, not only those the change removed: a request that resolved a workspace just before its
    deletion may build its context after a sweep, and the next change lets go of it.
    """
    store = current_app.extensions[_EXTENSION]
    if store.get(_SEEN) is known or not _sweep_lock.acquire(blocking=False):
        return  # another thread sweeps: this one serves on
    try:
        if store.get(_SEEN) is known:
            return
        gone = set()
        for key in list(store):  # a copy: other threads build contexts meanwhile
            prefix, _, name = key.partition(":")
            if f"{prefix}:" in _PER_WORKSPACE and name not in known:
                store.pop(key, None)
                gone.add(name)
        with _slots_lock:
            for name in [name for name in _slots if name not in known]:
                del _slots[name]  # a request holding it releases its own; the next one is given a new one
        for name in gone:
            forget(name)  # its compiled rules (workers.worker_context keeps them across its context's rebuilds)
        store[_SEEN] = known
    finally:
        _sweep_lock.release()


def get_context() -> WorkerContext:
    """The current workspace's InLoox client, rules and settings (built again when the workspace changed)."""
    workspace = workspaces.current()
    store = current_app.extensions[_EXTENSION]
    built = store.get(f"context:{workspace.name}")
    if built is None or built[0] != workspace:
        # A large bundle's YAML is parsed in a child, off the GIL every workspace's webhooks on this process need.
        compile_bundle = functools.partial(bundle_check.compile_bundle,
                                           cpu_seconds=int(current_app.config["BUNDLE_CHECK_CPU_SECONDS"]))
        built = store[f"context:{workspace.name}"] = (workspace, build_context(
            current_app.config, workspace, get_redis(), compile_bundle=compile_bundle))
    return built[1]


def get_inloox() -> Client:
    """The InLoox client of the current workspace for the web: answers within WEB_INLOOX_SECONDS (or INLOOX_TIMEOUT,
    if shorter). Use it inside `inloox_slot()`."""
    workspace = workspaces.current()
    store = current_app.extensions[_EXTENSION]
    built = store.get(f"inloox:{workspace.name}")
    if built is None or built[0] != workspace:
        timeout = min(float(current_app.config["INLOOX_TIMEOUT"]), WEB_INLOOX_SECONDS)
        built = store[f"inloox:{workspace.name}"] = (workspace, inloox_client(current_app.config, workspace, get_redis(),
                                                                              timeout=timeout))
    return built[1]


@contextmanager
def inloox_slot() -> Iterator[None]:
    """One of the current workspace's WEB_INLOOX_SLOTS in this process, for the InLoox requests inside (and the reading
    of their answers); Throttled at once when every one is taken: its InLoox is slow, and no more of the web's
    threads wait for it."""
    name = workspaces.current().name
    with _slots_lock:
        slot = _slots.setdefault(name, threading.BoundedSemaphore(WEB_INLOOX_SLOTS))
    if not slot.acquire(blocking=False):
        raise Throttled(f"{WEB_INLOOX_SLOTS} requests of workspace {name!r} are already waiting for its InLoox")
    try:
        yield
    finally:
        slot.release()


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
