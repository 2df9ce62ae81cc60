"""A process's live view of the registry: the workspaces it serves, re-read only when the version changed."""
from __future__ import annotations

import logging
import threading
import time

import redis

from workers.registry import _records
from workers.registry._store import RECORDS, VERSION
from workers.secrets import Keyring, SecretUnreadable
from workers.workspaces import Workspace

log = logging.getLogger(__name__)
_NOTHING_READ: dict[str, Workspace] = {}  # `held` before the first read: one object, so a follower sees no change


class RegistryUnavailable(RuntimeError):
    """Redis could not be read and there is no earlier copy of the registry to serve."""


class View:
    """The registry as this process sees it: unsealed workspaces, cached between changes.

    At most one GET of the version per `refresh_seconds`; the records are read again only when it
    moved, so an idle process costs about one Redis command a second and sees a change within
    `refresh_seconds` plus one request. While Redis cannot be reached the last good set is served.
    """

    def __init__(self, connection: redis.Redis, keyring: Keyring, *, refresh_seconds: float = 1.0):
        self._connection, self._keyring, self._refresh = connection, keyring, refresh_seconds
        self._lock = threading.Lock()
        self._version: bytes | None = None
        self._checked_at = float("-inf")
        self._workspaces: dict[str, Workspace] | None = None
        self._unreadable: dict[str, str] = {}
        self._needed_keys: dict[str, str] = {}
        self._next_expiry = float("inf")

    def workspaces(self) -> dict[str, Workspace]:
        """Every workspace this process can serve, by name (those with unreadable secrets left out)."""
        self._follow()
        return self._workspaces

    def unreadable(self) -> dict[str, str]:
        """Workspaces left out because a secret of theirs cannot be unsealed: name → why (no secret in it)."""
        self._follow()
        return dict(self._unreadable)

    def needed_keys(self) -> dict[str, str]:
        """The same workspaces: name → the id of the key a secret of theirs is sealed with and this process
        lacks ("" when their record is damaged, or their key is held and the secret does not verify)."""
        self._follow()
        return dict(self._needed_keys)

    def held(self) -> dict[str, Workspace]:
        """The workspaces as last read, without looking at Redis (none before the first read): for what
        must never wait on Redis, such as the redaction of a log line (workers/logs.py)."""
        return self._workspaces if self._workspaces is not None else _NOTHING_READ

    def refresh(self) -> None:
        """Look at the version now, whatever the time since the last look (after this process wrote)."""
        self._checked_at = float("-inf")
        self._follow()

    def _follow(self) -> None:
        if self._workspaces is not None and time.monotonic() - self._checked_at < self._refresh:
            return
        # One thread looks while the others serve the copy they have: a Redis that answers slowly
        # (or not at all, until the socket timeout) must not hold up every request.
        if not self._lock.acquire(blocking=self._workspaces is None):
            return
        try:
            now = time.monotonic()
            if now - self._checked_at < self._refresh and self._workspaces is not None:
                return
            try:
                self._reload_if_changed()
                self._checked_at = now
            except redis.RedisError as exc:
                if self._workspaces is None:
                    raise RegistryUnavailable(f"the workspace registry cannot be read: {exc}") from exc
                log.warning("the workspace registry cannot be read (%s); serving the last good copy", exc)
                self._checked_at = now  # look again after refresh_seconds, not on every call
        finally:
            self._lock.release()

    def _reload_if_changed(self) -> None:
        seen = self._connection.get(VERSION)
        if seen == self._version and self._workspaces is not None and time.time() < self._next_expiry:
            return
        with self._connection.pipeline(transaction=True) as pipe:
            pipe.get(VERSION).hgetall(RECORDS)
            self._version, records = pipe.execute()
        self._workspaces, self._unreadable, self._needed_keys = _unsealed(self._keyring, records)
        # A webhook secret at the end of its rotation overlap stops verifying then, not at the next change.
        self._next_expiry = min((s["expires_at"] for raw in records.values()
                                 for hook in _records.decode(raw).get("webhooks", {}).values()
                                 for s in hook["secrets"] if s["expires_at"]), default=float("inf"))


def _unsealed(keyring: Keyring, records: dict) -> tuple[dict[str, Workspace], dict[str, str], dict[str, str]]:
    served, unreadable, needed = {}, {}, {}
    now = time.time()
    for raw_name, raw in records.items():
        name = raw_name.decode()
        try:
            served[name] = _records.to_workspace(keyring, _records.live_secrets(_records.decode(raw), now))
        except SecretUnreadable as exc:
            unreadable[name] = f"workspace {name!r} cannot be served: a secret of it cannot be read: {exc}"
            needed[name] = "" if exc.key_id in keyring.key_ids else exc.key_id  # held: the secret is damaged
            log.error("%s", unreadable[name])
        except (ValueError, KeyError, TypeError) as exc:  # a damaged record: this workspace only
            unreadable[name] = f"workspace {name!r} cannot be served: its registry record is damaged ({exc!r})"
            needed[name] = ""
            log.error("%s", unreadable[name])
    return served, unreadable, needed
