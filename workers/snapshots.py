"""What the poller last saw of each watched entity, kept in Redis so restarts and rule edits lose nothing.

Per entity set, under the workspace's key prefix:
    poll:<Set>:cursor   a change feed's newest change timestamp seen (the server's own clock, ISO
                        text); a scanned set's: when its last complete scan started (our clock)
    poll:<Set>:snap     hash: entity key → JSON of the watched fields and the row's timestamp
                        (a scanned set's rows have none; their key's parts are kept instead)
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import redis
from redis.client import Pipeline

STAMP = "@stamp"  # the row's change timestamp, stored beside its fields


class SnapshotStore:
    """Cursor and per-entity snapshots of one entity set."""

    def __init__(self, connection: redis.Redis, entity_set: str, prefix: str = ""):
        self.connection = connection
        self.cursor_key = f"{prefix}poll:{entity_set}:cursor"
        self.snap_key = f"{prefix}poll:{entity_set}:snap"

    def cursor(self) -> str | None:
        """The newest timestamp seen, or None before the first (baseline) poll."""
        value = self.connection.get(self.cursor_key)
        return value.decode() if value is not None else None

    def load(self, keys: Iterable[str]) -> dict[str, dict | None]:
        """Snapshots of `keys` in one round trip; None for an entity never seen."""
        keys = list(keys)
        if not keys:
            return {}
        values = self.connection.hmget(self.snap_key, keys)
        return {key: json.loads(value) if value is not None else None for key, value in zip(keys, values)}

    def keys(self) -> set[str]:
        """Every entity key with a snapshot (for the deletion sweep)."""
        return {key.decode() for key in self.connection.hkeys(self.snap_key)}

    def save(self, pipe: Pipeline, key: str, snapshot: Mapping) -> None:
        """Queue one snapshot write on `pipe` (so it commits with the event it produced)."""
        pipe.hset(self.snap_key, key, json.dumps(snapshot, sort_keys=True, default=str))

    def forget(self, pipe: Pipeline, key: str) -> None:
        """Queue the removal of a deleted entity's snapshot on `pipe`."""
        pipe.hdel(self.snap_key, key)

    def save_many(self, snapshots: Mapping[str, Mapping], cursor: str | None, *, forget: Iterable[str] = ()) -> None:
        """Write many snapshots, drop those of `forget`, and move the cursor, in one transaction."""
        with self.connection.pipeline() as pipe:
            for key, snapshot in snapshots.items():
                self.save(pipe, key, snapshot)
            for key in forget:
                self.forget(pipe, key)
            if cursor is not None:
                pipe.set(self.cursor_key, cursor)
            pipe.execute()
