"""What the poller last saw of each watched entity, kept in Redis so restarts and rule edits lose nothing.

Per entity set, under the workspace's key prefix:
    poll:<Set>:cursor   a change feed's newest change timestamp seen (the server's own clock, ISO
                        text); a scanned set's: when its last complete scan started (our clock)
    poll:<Set>:fields   a change feed's watched fields (JSON list) that every snapshot of the set holds:
                        when rules watch one more, the next poll reads every row once to learn it
    poll:<Set>:snap     hash: entity key → the watched fields' values and the row's timestamp (a
                        scanned set's rows have none; their key's parts are kept instead)
    poll:layouts        hash: layout id → JSON list of the field names a snapshot's values stand for
                        (one hash for every set of the workspace: a key costs ~100 bytes of its own)

A snapshot is stored as its layout's id and its values alone, as JSON, deflated when that is
shorter: field names repeated in every snapshot were most of its size (a Task with every field
watched took 576 bytes as a JSON object, ~140 like this), and Redis holds one per watched entity of
every workspace. The id is a digest of the names, so a layout read once is cached for good; it is
written in each transaction that writes a snapshot of it. A layout changes only with the watched
fields (rules), and the few ever written stay until the workspace is deleted. A key part equal to
the entity key itself (a GUID key) is not stored twice: it is the hash field. Snapshots written as
JSON objects, before layouts, still read.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Mapping

import redis
from redis.client import Pipeline

STAMP = "@stamp"  # the row's change timestamp, stored beside its fields

_LAYOUT_ID_LENGTH = 8
_DEFLATED = b"z"  # after the layout id: raw deflate of the values' JSON follows (else the JSON itself, "[…]")
_layouts: dict[bytes, tuple[str, ...]] = {}  # layout id → names: an id is a digest, so an entry never goes stale


class SnapshotStore:
    """Cursor and per-entity snapshots of one entity set.

    `key_field`: the field holding the entity key itself (a scanned set's one-part key), kept out of
    the stored values when it equals the key text and put back on reading.
    """

    def __init__(self, connection: redis.Redis, entity_set: str, prefix: str = "", *, key_field: str | None = None):
        self.connection = connection
        self.cursor_key = f"{prefix}poll:{entity_set}:cursor"
        self.fields_key = f"{prefix}poll:{entity_set}:fields"
        self.snap_key = f"{prefix}poll:{entity_set}:snap"
        self.layouts_key = f"{prefix}poll:layouts"
        self.key_field = key_field

    def cursor(self) -> str | None:
        """The newest timestamp seen, or None before the first (baseline) poll."""
        value = self.connection.get(self.cursor_key)
        return value.decode() if value is not None else None

    def position(self) -> tuple[str | None, list[str] | None]:
        """The cursor and the fields every snapshot holds, in one round trip (None: not known)."""
        cursor, fields = self.connection.mget(self.cursor_key, self.fields_key)
        return (cursor.decode() if cursor is not None else None), (json.loads(fields) if fields is not None else None)

    def load(self, keys: Iterable[str]) -> dict[str, dict | None]:
        """Snapshots of `keys` in one round trip (two the first time this process meets a layout); None: never seen."""
        keys = list(keys)
        if not keys:
            return {}
        values = self.connection.hmget(self.snap_key, keys)
        self._learn_layouts({value[:_LAYOUT_ID_LENGTH] for value in values if value and value[:1] != b"{"})
        return {key: self._decode(key, value) if value is not None else None for key, value in zip(keys, values)}

    def keys(self) -> set[str]:
        """Every entity key with a snapshot (for the deletion sweep)."""
        return {key.decode() for key in self.connection.hkeys(self.snap_key)}

    def save(self, pipe: Pipeline, key: str, snapshot: Mapping) -> None:
        """Queue one snapshot write on `pipe` (so it commits with the event it produced)."""
        self.save_all(pipe, {key: snapshot})

    def save_all(self, pipe: Pipeline, snapshots: Mapping[str, Mapping]) -> None:
        """Queue the writes of many snapshots, and of their layouts, on `pipe`."""
        encoded, layouts = {}, {}
        for key, snapshot in snapshots.items():
            names, values = self._fields(key, snapshot)
            layout = layout_id(names)
            layouts[layout] = names
            encoded[key] = layout + _pack(values)
        if encoded:
            pipe.hset(self.layouts_key, mapping={layout: json.dumps(names) for layout, names in layouts.items()})
            pipe.hset(self.snap_key, mapping=encoded)

    def forget(self, pipe: Pipeline, key: str) -> None:
        """Queue the removal of a deleted entity's snapshot on `pipe`."""
        pipe.hdel(self.snap_key, key)

    def save_many(self, snapshots: Mapping[str, Mapping], cursor: str | None, *, forget: Iterable[str] = (),
                  fields: list[str] | None = None) -> None:
        """Write many snapshots, drop those of `forget`, move the cursor and record `fields` (when given) as the
        ones every snapshot holds, in one transaction."""
        with self.connection.pipeline() as pipe:
            self.save_all(pipe, snapshots)
            for key in forget:
                self.forget(pipe, key)
            if cursor is not None:
                pipe.set(self.cursor_key, cursor)
            if fields is not None:
                pipe.set(self.fields_key, json.dumps(fields))
            pipe.execute()

    def _fields(self, key: str, snapshot: Mapping) -> tuple[tuple[str, ...], list]:
        """The names (sorted) and values to store: all of the snapshot but a key field the key restores."""
        names = tuple(sorted(name for name in snapshot if not (name == self.key_field and snapshot[name] == key)))
        return names, [snapshot[name] for name in names]

    def _learn_layouts(self, ids: set[bytes]) -> None:
        missing = sorted(ids - _layouts.keys())
        if missing:
            for layout, names in zip(missing, self.connection.hmget(self.layouts_key, missing)):
                names = _names(names)
                # Cached for every workspace of the process: only names that are the id's (its digest) are. Others,
                # in one workspace's hash, made every workspace's snapshots of that id read with the wrong fields.
                if names is not None and layout_id(names) == layout:
                    _layouts[layout] = names

    def _decode(self, key: str, value: bytes) -> dict:
        if value[:1] == b"{":  # written before layouts: the snapshot as a JSON object
            return json.loads(value)
        layout = value[:_LAYOUT_ID_LENGTH]
        if layout not in _layouts:
            raise LookupError(f"{self.snap_key} {key}: layout {layout.decode()} is missing from {self.layouts_key}")
        snapshot = dict(zip(_layouts[layout], _unpack(value[_LAYOUT_ID_LENGTH:])))
        if self.key_field and self.key_field not in snapshot:
            return {self.key_field: key, **snapshot}
        return snapshot


def layout_id(names: tuple[str, ...]) -> bytes:
    """The id of a list of field names: a digest, the same in every process and workspace."""
    return hashlib.sha256(json.dumps(names).encode()).hexdigest()[:_LAYOUT_ID_LENGTH].encode()


def _names(stored: bytes | None) -> tuple[str, ...] | None:
    """The field names a layout entry holds, or None when it holds no JSON list (the layout then counts as missing)."""
    try:
        names = json.loads(stored) if stored is not None else None
    except ValueError:
        return None
    return tuple(names) if isinstance(names, list) else None


def _pack(values: list) -> bytes:
    """The values as JSON, or deflated (raw, no header) behind a marker when that is shorter."""
    text = json.dumps(values, separators=(",", ":"), default=str).encode()
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = _DEFLATED + packer.compress(text) + packer.flush()
    return deflated if len(deflated) < len(text) else text


def _unpack(body: bytes) -> list:
    if body[:1] == _DEFLATED:
        return json.loads(zlib.decompress(body[1:], -15))
    return json.loads(body)
