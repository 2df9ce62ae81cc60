"""What a worker, poller or scheduler process serves: its declared workspaces and the registry's others, live.

A process declares workspaces in its settings (WORKSPACES_FILE, or `make run`'s `default`); those it
serves as declared, whatever another process applied, so that processes started with different
settings (tests do this; a deployment should not) never take each other's tokens. Every other
workspace of the registry (created through the operator API) is served as the registry holds it,
and `paused` always comes from the registry. The view is re-read within a second of a change, so a
workspace created, paused, resumed or deleted is followed within `refresh_seconds` + one turn.

Without SECRETS_KEY the registry cannot be read: the process serves its declared workspaces alone,
and says so once.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import redis

from workers.registry._view import RegistryUnavailable, View
from workers.secrets import Keyring, SecretsKeyError
from workers.workspaces import Workspace

log = logging.getLogger(__name__)
_NONE: dict[str, Workspace] = {}  # the registry's set when it cannot be read: one object, so `workspaces` is built once


class Served:
    """The workspaces this process serves, by name; `paused` and `incarnation` as the registry says."""

    def __init__(self, connection: redis.Redis, config: Mapping, *, refresh_seconds: float = 1.0):
        self.declared: dict[str, Workspace] = dict(config.get("WORKSPACES") or {})
        try:
            self.view: View | None = View(connection, Keyring.from_config(config), refresh_seconds=refresh_seconds)
        except SecretsKeyError as exc:
            log.warning("no workspace registry for this process (%s): it serves only %s", exc,
                        ", ".join(self.declared) or "nothing")
            self.view = None
        self._warned = False
        self._built_from: dict | None = None
        self._served: dict[str, Workspace] | None = None

    def workspaces(self) -> dict[str, Workspace]:
        """Every workspace served now (paused ones included: their changes are still accepted).

        Built again only when the view's set changed (the View keeps one dict until it re-reads):
        workers ask for every event, and a deployment may serve a thousand workspaces.
        """
        live = self._live()
        if live is not self._built_from or self._served is None:
            self._served, self._built_from = self._merge(live), live
        return self._served

    def _merge(self, live: dict[str, Workspace]) -> dict[str, Workspace]:
        served = {name: ws for name, ws in live.items() if name not in self.declared}
        for name, declared in self.declared.items():
            # The incarnation too: a declared workspace deleted and made again is another life of it, whose bundle
            # numbers start at v1 again (what its processes compiled of the other must not be kept for it).
            paused, incarnation = (live[name].paused, live[name].incarnation) if name in live else (declared.paused, "")
            same = paused == declared.paused and incarnation == declared.incarnation
            served[name] = declared if same else dataclasses.replace(declared, paused=paused, incarnation=incarnation)
        return served

    def running(self) -> dict[str, Workspace]:
        """The served workspaces that are not paused: whose events and jobs are handled."""
        return {name: ws for name, ws in self.workspaces().items() if not ws.paused}

    def _live(self) -> dict[str, Workspace]:
        if self.view is None:
            return _NONE
        try:
            live = self.view.workspaces()
        except RegistryUnavailable as exc:  # Redis never read yet: the declared ones meanwhile
            if not self._warned:
                log.warning("workspace registry not readable yet (%s); serving the declared workspaces", exc)
                self._warned = True
            return _NONE
        self._warned = False
        return live


class Shard:
    """The workspaces of `served` named in `names` (a worker's WORKER_WORKSPACES); every one when `names` is empty.

    What a worker that also polls (WORKER_POLLS) polls and schedules: its shard's workspaces, as it
    handles only their events.
    """

    def __init__(self, served: Served, names: frozenset[str]):
        self.served, self.names = served, names
        self._from: dict[str, Workspace] | None = None
        self._shard: dict[str, Workspace] = {}

    def workspaces(self) -> dict[str, Workspace]:
        every = self.served.workspaces()
        if not self.names:
            return every
        if every is not self._from:  # Served keeps one dict until the registry changes: filtered once per change
            self._from, self._shard = every, {name: ws for name, ws in every.items() if name in self.names}
        return self._shard
