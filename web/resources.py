"""Shared clients owned by the app: Redis and InLoox, opened lazily once per process.

As in Flask's tutorial `db.py`: `get_*()` opens on first use and caches; nothing is built at import
time, so tests and CLI commands that never touch Redis never connect to it.
"""
from __future__ import annotations

import redis
from flask import Flask, current_app

from inloox import Client

_EXTENSION = "inloox_automation"


def get_redis() -> redis.Redis:
    """The app's Redis client (a connection pool shared by all threads of this process)."""
    return _cached("redis", lambda: redis.Redis.from_url(
        current_app.config["REDIS_URL"], socket_connect_timeout=2, socket_timeout=5,
    ))


def get_inloox() -> Client:
    """The app's InLoox client for the configured base URL and token."""
    return _cached("inloox", lambda: Client(
        current_app.config["INLOOX_URL"],
        current_app.config["INLOOX_API_KEY"],
        timeout=float(current_app.config["INLOOX_TIMEOUT"]),
    ))


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
