"""How individual InLoox sets behave on a write, beyond the generic metadata-driven store.

Each `prepare` hook adjusts the row about to be written (`before` is None on create) and each
`after` hook reacts once it is written. Kinds registered here:
Task (assignee name, DoneDate), TimeEntry (ProjectId from its task, DurationMinutes from start/end),
Project (Number, status names, created/changed stamps), LineItem/Budget/Document (their own
created/changed dates), UserStopwatch (project/task names), CustomField and
CustomFieldDefinition (touch the owner, refresh the Dynamic views' custom-field columns).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from . import edm
from .store import Store, quote

PREPARE: dict = {}
AFTER: dict = {}
# Sets whose missing parent makes no sense: a POST without it is a 400, not an empty GUID.
REQUIRED = {"TaskStatus": ("ProjectId",), "Planning": ("ProjectId",), "Budget": ("ProjectId",),
            "LineItem": ("BudgetId",), "UserStopwatch": ("ProjectId",)}


@dataclass(frozen=True)
class WriteContext:
    """One write: the open connection, the store, the caller's ContactId and the write's timestamp."""

    conn: object
    store: Store
    user: str
    now: str

    def lookup(self, set_name: str, column: str, key: str | None):
        """One column of the row of `set_name` with that (single) key, or None."""
        if key is None:
            return None
        key_name = self.store.metadata.entity_sets[set_name].key[0]
        row = self.conn.execute(f"SELECT {quote(column)} FROM {quote(set_name)} WHERE {quote(key_name)} = ?",
                                (key,)).fetchone()
        return row[0] if row else None


def prepares(set_name: str):
    """Register a hook `(row, changes, ctx, before)` run before `set_name` rows are written."""
    def register(hook):
        PREPARE[set_name] = hook
        return hook
    return register


def after_write(*set_names: str):
    """Register a hook `(row, ctx)` run after `set_names` rows are written or deleted."""
    def register(hook):
        for name in set_names:
            AFTER[name] = hook
        return hook
    return register


@prepares("Task")
def _task(row, changes, ctx, before):
    if "ContactId" in changes:
        row["ContactDisplayName"] = ctx.lookup("Contact", "DisplayName", row["ContactId"])
    if "IsDone" in changes and "DoneDate" not in changes:
        row["DoneDate"] = ctx.now if row["IsDone"] else None


@prepares("TimeEntry")
def _time_entry(row, changes, ctx, before):
    if not row.get("ProjectId") and row.get("TaskItemId"):
        row["ProjectId"] = ctx.lookup("Task", "ProjectId", row["TaskItemId"])
    if row.get("StartDateTime") and row.get("EndDateTime"):
        elapsed = _moment(row["EndDateTime"]) - _moment(row["StartDateTime"])
        row["DurationMinutes"] = round(elapsed.total_seconds() / 60)


@prepares("Project")
def _project(row, changes, ctx, before):
    user_name = ctx.lookup("Contact", "DisplayName", ctx.user)
    if before is None:
        row.setdefault("Number", _next_project_number(ctx))
        row.update(CreatedDateTime=ctx.now, CreatedByName=user_name)
        row.setdefault("CreatedByContactId", ctx.user)
    row.update(LastChangedDateTime=ctx.now, ChangedByContactId=ctx.user, LastChangedByName=user_name)
    if "ProjectStatusId" in changes:
        status = row["ProjectStatusId"]
        row["ProjectStatusName"] = row["StatusLabel"] = ctx.lookup("ProjectStatus", "Name", status)
        row["ProjectStatusProgress"] = ctx.lookup("ProjectStatus", "Progress", status)
    row["ProjectNumberAndName"] = " ".join(p for p in (row.get("Number"), row.get("Name")) if p)


def _next_project_number(ctx: WriteContext) -> str:
    year = ctx.now[:4]
    taken = ctx.conn.execute('SELECT COUNT(*) FROM "Project" WHERE Number LIKE ?', (f"{year}\\_%",)).fetchone()[0]
    number = taken + 1
    while ctx.conn.execute('SELECT 1 FROM "Project" WHERE Number = ?', (f"{year}_{number:04d}",)).fetchone():
        number += 1
    return f"{year}_{number:04d}"


@prepares("LineItem")
def _line_item(row, changes, ctx, before):
    if before is None:
        row.update(CreatedDate=ctx.now)
        row.setdefault("CreatedByContactId", ctx.user)
    row.update(ChangedDate=ctx.now, ChangedByContactId=ctx.user)
    if not row.get("ProjectId") and row.get("BudgetId"):
        row["ProjectId"] = ctx.lookup("Budget", "ProjectId", row["BudgetId"])


@prepares("Budget")
def _budget(row, changes, ctx, before):
    if before is None:
        row["BudgetCreatedDate"] = ctx.now
    row["BudgetChangedDate"] = ctx.now


@prepares("Document")
def _document(row, changes, ctx, before):
    if before is None:
        row["CreatedAt"] = ctx.now
        row.setdefault("CreatedByContactId", ctx.user)
    row["UpdatedAt"] = ctx.now


@prepares("UserStopwatch")
def _stopwatch(row, changes, ctx, before):
    row["ProjectName"] = ctx.lookup("Project", "Name", row.get("ProjectId"))
    row["ProjectNumber"] = ctx.lookup("Project", "Number", row.get("ProjectId"))
    row["TaskItemName"] = ctx.lookup("Task", "Name", row.get("TaskItemId"))


@after_write("CustomField")
def _custom_field(row, ctx):
    # A custom field's value is part of its owner: the owner's change stamps move with it.
    for set_name, key in (("Project", "ProjectId"), ("Task", "TaskItemId"), ("TimeEntry", "TimeEntryId")):
        ctx.conn.execute(f"UPDATE {quote(set_name)} SET _updated_at = ?, _changed_by = ? WHERE {key} = ?",
                         (ctx.now, ctx.user, row["ObjectId"]))
    ctx.conn.execute('UPDATE "Project" SET LastChangedDateTime = ?, ChangedByContactId = ? WHERE ProjectId = ?',
                     (ctx.now, ctx.user, row["ObjectId"]))
    ctx.store.refresh_views()


@after_write("CustomFieldDefinition")
def _custom_field_definition(row, ctx):
    ctx.store.refresh_views()


def _moment(text: str) -> datetime:
    return edm.parse_datetime(text)
