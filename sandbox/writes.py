"""Creating, updating and deleting entities: body checks, defaults, change stamps, cascades.

Every write runs in one transaction (no partial writes) and stamps the row's hidden change columns
with the write clock and the caller, which is what the Dynamic views' `*_UpdatedAt`,
`*_ChangedDate` and `*_ChangedByContactId` show.
"""
from __future__ import annotations

import difflib
import sqlite3
import uuid

from inloox.metadata import EntitySet

from . import behaviour, dynamic, edm
from .behaviour import WriteContext
from .errors import BadRequest, Conflict, MethodNotAllowed, NotFound
from .queries import to_entity
from .store import Store, quote

# Deleting one of these deletes every row, in any set, whose column names it.
CASCADES = {"Project": "ProjectId", "Budget": "BudgetId"}
_USER_COLUMNS = ("GroupId",)


def check_body(entity_set: EntitySet, body) -> dict:
    """Body values converted for storage; raises BadRequest naming an unknown or mistyped property."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    values = {}
    for name, value in body.items():
        if name.startswith("@") or "@odata." in name:
            continue  # annotations such as @odata.type carry no data
        prop = entity_set.properties.get(name)
        if prop is None:
            hint = difflib.get_close_matches(name, entity_set.properties, n=1)
            raise BadRequest(f"Unknown property '{name}' on {entity_set.name}"
                             + (f" (did you mean '{hint[0]}'?)" if hint else ""), target=name)
        values[name] = edm.to_sql(prop, value)
    return values


def writable(entity_set: EntitySet) -> None:
    """Raise MethodNotAllowed for the read-only Dynamic views."""
    if entity_set.name in dynamic.VIEWS:
        raise MethodNotAllowed(f"{entity_set.name} is a read-only view; write to its tables instead")


def create(store: Store, entity_set: EntitySet, body, user: str) -> dict:
    """Insert an entity from a partial body; returns it as stored."""
    writable(entity_set)
    values = check_body(entity_set, body)
    with store.transaction() as conn:
        ctx = WriteContext(conn, store, user, store.clock.now())
        return _as_entity(store, entity_set, insert(ctx, entity_set, values))


def insert(ctx: WriteContext, entity_set: EntitySet, values: dict) -> dict:
    """Insert a row inside an open write; returns the full row written."""
    row = dict(values)
    for name in entity_set.key:
        if row.get(name) is None and entity_set.properties[name].type == "Edm.Guid":
            row[name] = str(uuid.uuid4())
        elif row.get(name) is None:
            raise BadRequest(f"Key property '{name}' of {entity_set.name} is required", target=name)
    for name in behaviour.REQUIRED.get(entity_set.name, ()):
        if row.get(name) is None:
            raise BadRequest(f"Property '{name}' of {entity_set.name} is required", target=name)
    _prepare(ctx, entity_set, row, values, None)
    _fill_defaults(ctx, entity_set, row)
    row.update(_created_at=ctx.now, _updated_at=ctx.now, _created_by=ctx.user, _changed_by=ctx.user)
    columns = list(row)
    try:
        ctx.conn.execute(f"INSERT INTO {quote(entity_set.name)} ({', '.join(map(quote, columns))})"
                         f" VALUES ({', '.join('?' for _ in columns)})", [row[c] for c in columns])
    except sqlite3.IntegrityError:
        raise Conflict(f"{entity_set.name} {key_text(key_of(entity_set, row))} already exists") from None
    _after(ctx, entity_set, row)
    return row


def _fill_defaults(ctx: WriteContext, entity_set: EntitySet, row: dict) -> None:
    for prop in entity_set.properties.values():
        if prop.name in row or prop.nullable:
            continue
        if prop.type == "Edm.Guid" and (prop.name.endswith("ContactId") or prop.name in _USER_COLUMNS):
            row[prop.name] = ctx.user
        elif prop.type == "Edm.DateTimeOffset":
            row[prop.name] = ctx.now
        else:
            row[prop.name] = edm.type_default(prop)


def update(store: Store, entity_set: EntitySet, key: dict, body, user: str) -> dict:
    """Apply a partial body to an existing entity; returns it as stored. Raises NotFound."""
    writable(entity_set)
    values = check_body(entity_set, body)
    for name in entity_set.key:
        if name in values and values[name] != key[name]:
            raise BadRequest(f"Key property '{name}' cannot be changed", target=name)
    with store.transaction() as conn:
        ctx = WriteContext(conn, store, user, store.clock.now())
        return _as_entity(store, entity_set, modify(ctx, entity_set, key, values))


def modify(ctx: WriteContext, entity_set: EntitySet, key: dict, values: dict) -> dict:
    """Update a row inside an open write; returns the full row written."""
    before = _fetch_row(ctx.conn, entity_set, key)
    row = {**before, **values}
    _prepare(ctx, entity_set, row, values, before)
    row.update(_updated_at=ctx.now, _changed_by=ctx.user)
    changed = [c for c in row if c not in entity_set.key]
    ctx.conn.execute(f"UPDATE {quote(entity_set.name)} SET {', '.join(quote(c) + ' = ?' for c in changed)}"
                     f" WHERE {_key_where(entity_set)}", [row[c] for c in changed] + list(key.values()))
    _after(ctx, entity_set, row)
    return row


def delete(store: Store, entity_set: EntitySet, key: dict, user: str) -> None:
    """Delete an entity and its children (see CASCADES), its notes and custom fields."""
    writable(entity_set)
    with store.transaction() as conn:
        ctx = WriteContext(conn, store, user, store.clock.now())
        row = _fetch_row(conn, entity_set, key)
        _delete_children(ctx, entity_set, key)
        conn.execute(f"DELETE FROM {quote(entity_set.name)} WHERE {_key_where(entity_set)}", list(key.values()))
        if len(entity_set.key) == 1:
            _delete_attachments(conn, "?", [key[entity_set.key[0]]])
        _after(ctx, entity_set, row)
        store.refresh_views()


def _delete_children(ctx: WriteContext, entity_set: EntitySet, key: dict) -> None:
    column = CASCADES.get(entity_set.name)
    if column is None:
        return
    parent = key[entity_set.key[0]]
    for child in ctx.store.table_sets():
        if column not in child.properties or column in child.key:
            continue
        if len(child.key) == 1:
            _delete_attachments(ctx.conn, f"SELECT {quote(child.key[0])} FROM {quote(child.name)}"
                                          f" WHERE {quote(column)} = ?", [parent])
        ctx.conn.execute(f"DELETE FROM {quote(child.name)} WHERE {quote(column)} = ?", (parent,))


def _delete_attachments(conn, ids_sql: str, params: list) -> None:
    # Notes and custom-field values hang off an object by ObjectId, with no set of their own.
    conn.execute(f"DELETE FROM _note WHERE ObjectId IN ({ids_sql})", params)
    conn.execute(f'DELETE FROM "CustomField" WHERE ObjectId IN ({ids_sql})', params)


def _prepare(ctx, entity_set, row, changes, before) -> None:
    hook = behaviour.PREPARE.get(entity_set.name)
    if hook:
        hook(row, changes, ctx, before)


def _after(ctx, entity_set, row) -> None:
    hook = behaviour.AFTER.get(entity_set.name)
    if hook:
        hook(row, ctx)


def _fetch_row(conn, entity_set: EntitySet, key: dict) -> dict:
    cursor = conn.execute(f"SELECT * FROM {quote(entity_set.name)} WHERE {_key_where(entity_set)}",
                          list(key.values()))
    found = cursor.fetchone()
    if found is None:
        raise NotFound(f"{entity_set.name} {key_text(key)} does not exist")
    return dict(zip([d[0] for d in cursor.description], found))


def _as_entity(store: Store, entity_set: EntitySet, row: dict) -> dict:
    # The row just written is what a read-back would return; skipping the SELECT saves a round trip.
    columns = list(store.columns(entity_set.name))
    return to_entity(store, entity_set.name, columns, [row.get(c) for c in columns])


def read_entity(store: Store, entity_set: EntitySet, key: dict) -> dict:
    """One entity by key, as served; raises NotFound."""
    columns = list(store.columns(entity_set.name))
    with store.reading() as conn:
        found = conn.execute(f"SELECT {', '.join(map(quote, columns))} FROM {quote(entity_set.name)}"
                             f" WHERE {_key_where(entity_set)}", [key[k] for k in entity_set.key]).fetchone()
    if found is None:
        raise NotFound(f"{entity_set.name} {key_text(key)} does not exist")
    return to_entity(store, entity_set.name, columns, found)


def key_of(entity_set: EntitySet, row: dict) -> dict:
    """The key values of a row."""
    return {name: row[name] for name in entity_set.key}


def key_text(key: dict) -> str:
    """`(3fa8…)` or `(Name='x',ObjectId=…)` for messages."""
    if len(key) == 1:
        return f"({next(iter(key.values()))})"
    return "(" + ",".join(f"{k}={v!r}" for k, v in key.items()) + ")"


def _key_where(entity_set: EntitySet) -> str:
    return " AND ".join(f"{quote(k)} = ?" for k in entity_set.key)
