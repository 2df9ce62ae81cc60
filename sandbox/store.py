"""The sandbox's SQLite database: one table per entity set of the metadata, behind one lock.

Each table has the set's properties as columns plus hidden change columns (`_created_at`,
`_updated_at`, `_created_by`, `_changed_by`) that feed the Dynamic views' `*_UpdatedAt`,
`*_ChangedDate` and `*_ChangedByContactId`. One connection guarded by a lock is plenty for a
local test double and keeps writes strictly ordered.
"""
from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager

from inloox.metadata import EntitySet, Metadata

from . import dynamic, edm
from .clock import Clock

HIDDEN_COLUMNS = ("_created_at", "_updated_at", "_created_by", "_changed_by")
# Foreign keys worth an index: filters (`Task?$filter=ProjectId eq …`) and cascading deletes use them.
INDEXED_REFERENCES = ("ProjectId", "TaskItemId", "BudgetId", "TaskItemStatusId", "ContactId", "ObjectId")
NOTE_TABLE = """CREATE TABLE IF NOT EXISTS _note (
    NoteId TEXT PRIMARY KEY, EntitySet TEXT NOT NULL, ObjectId TEXT NOT NULL, HtmlText TEXT,
    NotificationContactIds TEXT, CreatedByContactId TEXT, CreatedAt TEXT NOT NULL)"""


def quote(identifier: str) -> str:
    """An SQL identifier; names come from the metadata or are checked before they get here."""
    return '"' + identifier.replace('"', '""') + '"'


class Store:
    """The database plus the column lists of every set (Dynamic views' custom-field columns change)."""

    def __init__(self, metadata: Metadata, path: str | None = None):
        self.metadata = metadata
        self.lock = threading.RLock()
        self.clock = Clock()
        self.conn = sqlite3.connect(path or ":memory:", check_same_thread=False, isolation_level=None)
        if path:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        self.view_columns: dict[str, dict[str, str]] = {}
        self.custom_fields: list[tuple[str, str]] = []
        with self.lock:
            self._create_tables()
            self.rebuild_views()

    def table_sets(self) -> list[EntitySet]:
        """The entity sets stored as tables (every set but the Dynamic views)."""
        return [s for s in self.metadata.entity_sets.values() if s.name not in dynamic.VIEWS]

    def columns(self, set_name: str) -> dict[str, str]:
        """Column name → EDM type of a set as served (a view's include custom-field columns)."""
        if set_name in self.view_columns:
            return self.view_columns[set_name]
        return {p.name: p.type for p in self.metadata.entity_sets[set_name].properties.values()}

    @contextmanager
    def transaction(self):
        """The connection inside BEGIN … COMMIT under the lock; rolled back if the block raises."""
        with self.lock:
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                self.refresh_views()  # a rolled-back write may have rebuilt them
                raise
            self.conn.execute("COMMIT")

    @contextmanager
    def reading(self):
        """The connection under the lock, for reads."""
        with self.lock:
            yield self.conn

    def clear(self) -> None:
        """Delete every row of every table and drop custom-field columns from the views."""
        with self.transaction() as conn:
            for entity_set in self.table_sets():
                conn.execute(f"DELETE FROM {quote(entity_set.name)}")
            conn.execute("DELETE FROM _note")
            self.rebuild_views()

    def rebuild_views(self) -> None:
        """(Re)create the Dynamic views, picking up the custom fields that exist now."""
        self.custom_fields = dynamic.custom_fields(self.conn)
        self.view_columns = dynamic.create_views(self.conn, self.metadata)

    def refresh_views(self) -> None:
        """Rebuild the Dynamic views if the set of custom fields changed (call inside a write)."""
        if dynamic.custom_fields(self.conn) != self.custom_fields:
            self.rebuild_views()

    def _create_tables(self) -> None:
        for entity_set in self.table_sets():
            self.conn.execute(_table_ddl(entity_set))
            for ddl in _index_ddl(entity_set):
                self.conn.execute(ddl)
        self.conn.execute(NOTE_TABLE)
        self.conn.execute("CREATE INDEX IF NOT EXISTS _note_object ON _note (ObjectId)")


def _table_ddl(entity_set: EntitySet) -> str:
    columns = [f"{quote(p.name)} {edm.sql_type(p.type)}" for p in entity_set.properties.values()]
    columns += [f"{name} TEXT" for name in HIDDEN_COLUMNS]
    key = ", ".join(quote(k) for k in entity_set.key)
    return f"CREATE TABLE IF NOT EXISTS {quote(entity_set.name)} ({', '.join(columns)}, PRIMARY KEY ({key}))"


def _index_ddl(entity_set: EntitySet) -> list[str]:
    table = quote(entity_set.name)
    statements = [f"CREATE INDEX IF NOT EXISTS {quote(entity_set.name + '__updated_at')} ON {table} (_updated_at)"]
    for name in INDEXED_REFERENCES:
        if name in entity_set.properties and name not in entity_set.key:
            index = quote(f"{entity_set.name}_{name}")
            statements.append(f"CREATE INDEX IF NOT EXISTS {index} ON {table} ({quote(name)})")
    return statements
