"""How changes of each InLoox entity set can be seen: the fact every change poll and scan is built on.

InLoox has no webhooks, so every change is found by reading. There are two ways:
- a change feed: the set (or a Dynamic view of it) has a column moved by every write, so one request
  reads what changed since the last poll (cost grows with the number of changes). The plain `Task`
  and `TimeEntry` sets carry no timestamps: their feeds read the Dynamic views
  (`DynamicTaskItem.TaskItem_UpdatedAt`…), whose columns are the plain set's fields with a table
  prefix. The Dynamic views are feeds of their own too, which is how custom-field columns
  (`Project_cf_2283e9e4_Budget`) and a task's planning (`Planning_EndDateTime`) are watched;
- a scan: every other set that can be read as a collection is read whole, key and watched fields
  only, PAGE_SIZE rows per request, and compared with the previous read (cost grows with the set's
  size, so scans run less often; see workers/poller/scan.py).
A few sets can be watched neither way; `unobservable` says why, and `flask rules check` refuses them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from inloox.metadata import EntitySet, load_metadata
from inloox.query import key_predicate

PAGE_SIZE = 100  # rows InLoox returns per request; a longer result continues at @odata.nextLink


@dataclass(frozen=True)
class Stamp:
    """A change-time column of a view, who made that change, and the columns it moves with (by prefix)."""

    column: str
    changed_by: str | None = None
    prefix: str = ""


@dataclass(frozen=True)
class ChangeFeed:
    """How to read changes of `entity_set`: from `view`, whose `prefix + field` column holds `field`."""

    entity_set: str
    view: str
    key: str  # the entity set's key field (plain name)
    stamp: str  # column of `view` moved by every write, in the server's clock
    prefix: str = ""
    changed_by: str | None = None  # column naming the contact who made the last change
    own: str = ""  # the view columns `stamp` moves with ("": all of them)
    # Tables joined into the view: their columns change with their own stamps, not with `stamp`.
    joined: tuple[Stamp, ...] = ()

    def column(self, field: str) -> str:
        """The view's column for a plain field name: `IsDone` → `TaskItem_IsDone`."""
        return self.prefix + field

    def field(self, column: str) -> str | None:
        """The plain field name of a view column, or None for columns of joined tables."""
        return column[len(self.prefix):] if column.startswith(self.prefix) else None

    def stamps(self, watched: Iterable[str] | None) -> tuple[Stamp, ...]:
        """The row's own stamp, plus the joined tables' stamps of the watched fields (None: every field)."""
        columns = None if watched is None else [self.column(f) for f in watched]
        joined = [s for s in self.joined if columns is None or any(c.startswith(s.prefix) for c in columns)]
        return (Stamp(self.stamp, self.changed_by, self.own), *joined)

    def unstamped(self, fields: Iterable[str]) -> list[str]:
        """Fields whose column no stamp of this feed moves with (a change to them is never seen)."""
        prefixes = [self.own, *(s.prefix for s in self.joined)]
        return [f for f in fields if not any(self.column(f).startswith(p) for p in prefixes)]


@dataclass(frozen=True)
class Scan:
    """How to see changes of a set without a change time: read every row, compare with the previous read."""

    entity_set: str
    key: tuple[str, ...]

    def key_text(self, row: dict) -> str:
        """The row's key as events carry it: the GUID, or `Name='…',ObjectId=…` for a composite key."""
        if len(self.key) == 1:
            return str(row[self.key[0]])
        return key_predicate({k: row[k] for k in self.key}, load_metadata().entity_set(self.entity_set))


def scan_requests(rows: int) -> int:
    """Requests one scan of a set of `rows` rows costs (one per page; an empty set still costs one)."""
    return max(1, math.ceil(rows / PAGE_SIZE))


@dataclass(frozen=True)
class Unobservable:
    """Why a trigger on an entity set can never fire, and what to do instead."""

    message: str
    hint: str
    field: str | None = None  # the watched field at fault, when the set itself can be watched


_DYNAMIC_STAMPS = {
    "Project_": Stamp("Project_LastChangedDateTime", "Project_ChangedByContactId", "Project_"),
    "TaskItem_": Stamp("TaskItem_UpdatedAt", "TaskItem_ChangedByContactId", "TaskItem_"),
    "Planning_": Stamp("Planning_UpdatedAt", "Planning_ChangedByContactId", "Planning_"),
    "TimeEntry_": Stamp("TimeEntry_UpdatedAt", "TimeEntry_ChangedByContactId", "TimeEntry_"),
}


def _view_feed(view: str, key: str, own: str, *joined: str) -> ChangeFeed:
    stamp = _DYNAMIC_STAMPS[own]
    return ChangeFeed(view, view, key, stamp.column, "", stamp.changed_by, own=own,
                      joined=tuple(_DYNAMIC_STAMPS[p] for p in joined))


CHANGE_FEEDS = {
    feed.entity_set: feed
    for feed in (
        ChangeFeed("Task", "DynamicTaskItem", "TaskItemId", "TaskItem_UpdatedAt", "TaskItem_",
                   "TaskItem_ChangedByContactId"),
        ChangeFeed("TimeEntry", "DynamicTimeEntry", "TimeEntryId", "TimeEntry_UpdatedAt", "TimeEntry_",
                   "TimeEntry_ChangedByContactId"),
        ChangeFeed("Project", "Project", "ProjectId", "LastChangedDateTime", "", "ChangedByContactId"),
        ChangeFeed("Budget", "Budget", "BudgetId", "BudgetChangedDate"),
        ChangeFeed("LineItem", "LineItem", "LineItemId", "ChangedDate", "", "ChangedByContactId"),
        ChangeFeed("Document", "Document", "DocumentId", "UpdatedAt"),
    )
}
# The Dynamic views as sets of their own: their columns, custom fields included (writing a custom
# field moves its owner's stamp), each with the stamp of the table it comes from. Kept apart from
# CHANGE_FEEDS because a view's row is a row of those sets again: "every set" means the plain ones.
VIEW_FEEDS = {
    feed.entity_set: feed
    for feed in (
        _view_feed("DynamicProject", "Project_ProjectId", "Project_"),
        _view_feed("DynamicTaskItem", "TaskItem_TaskItemId", "TaskItem_", "Project_", "Planning_"),
        _view_feed("DynamicTimeEntry", "TimeEntry_TimeEntryId", "TimeEntry_", "Project_", "TaskItem_", "Planning_"),
    )
}

# Entity sets of the $metadata that no poll can watch, and why.
NOT_OBSERVABLE = {
    "Connection": Unobservable(
        "Connection holds the account's database connection strings; the engine never copies them "
        "into its snapshots, so it cannot watch them",
        "there is nothing to automate here: connection settings change with the InLoox installation"),
    "LicenseInfo": Unobservable(
        "LicenseInfo is not a collection of rows: InLoox computes the account's licence summary in the "
        "function UserLicense/GetLicenseInfo()",
        "watch UserLicense instead: one row per user's licence"),
}


def change_feed(entity_set: str) -> ChangeFeed | None:
    """The change feed of `entity_set` (a Dynamic view's too), or None when InLoox records no change time for it."""
    return CHANGE_FEEDS.get(entity_set) or VIEW_FEEDS.get(entity_set)


def observation(entity_set: str) -> ChangeFeed | Scan | None:
    """How the poller sees changes of `entity_set`: its change feed, else a scan; None if it cannot."""
    feed = change_feed(entity_set)
    if feed is not None:
        return feed
    meta = load_metadata().entity_set(entity_set)
    if meta is None or entity_set in NOT_OBSERVABLE:
        return None
    return Scan(entity_set, meta.key)


def unobservable(entity_set: str, fields: Iterable[str] = ()) -> Unobservable | None:
    """Why a trigger on `entity_set` watching `fields` could never fire, or None when the poller sees it."""
    if entity_set in NOT_OBSERVABLE:
        return NOT_OBSERVABLE[entity_set]
    meta = load_metadata().entity_set(entity_set)
    if meta is None:
        return _operation(entity_set)
    feed = change_feed(entity_set)
    unseen = feed.unstamped(fields) if feed is not None else []
    if unseen:
        return Unobservable(
            f"{entity_set}.{unseen[0]} changes without any change time InLoox records, so no poll sees it",
            _stamped_hint(feed, meta), field=unseen[0])
    return None


def _stamped_hint(feed: ChangeFeed, meta: EntitySet) -> str:
    prefixes = [feed.own, *(s.prefix for s in feed.joined)]
    return f"watch {meta.name} columns that start with {' or '.join(prefixes)}: they carry change times"


def _operation(name: str) -> Unobservable | None:
    """`UserInfo/Me()`, `Task/StartStopwatch` or `Default.AddNote`: an operation, not an entity set."""
    binding, _, operation = name.rpartition("/")
    operation = operation.split("(", 1)[0].rsplit(".", 1)[-1]
    found = [op for op in load_metadata().operations if op.name == operation]
    if not found:
        return None
    sets = sorted({s for op in found for s in op.binding_sets})
    watch = binding if binding in sets else (sets[0] if sets else "the entity set it changes")
    # Steps call operations bound to one entity (inloox.action needs a key); not those of a whole set.
    callable_ = any(not op.collection for op in found)
    return Unobservable(
        f"{name!r} is an operation ({found[0].kind.lower()} {operation} of {', '.join(sets)}), not an entity "
        "set: operations are called, and there is nothing of theirs to watch",
        f"watch the entity set whose rows it reads or changes (inloox: {watch})"
        + (f", or call it from a step (inloox.action: {operation})" if callable_ else ""))
