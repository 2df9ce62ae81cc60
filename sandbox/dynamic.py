"""The read-only Dynamic views (DynamicTaskItem, DynamicTimeEntry, DynamicProject) as SQL views.

Each view column is `<Prefix>_<Rest>` (`TaskItem_Name`, `Project_Number`). A column is filled from
the prefix's table when it has that property, from the hidden change columns for
`UpdatedAt`/`ChangedDate`/`CreatedAt`/`CreatedDate`/`*ContactId`, from a derivation below, and
otherwise is NULL (or the type's zero when the metadata says it is not nullable). Custom fields
become extra columns `<Prefix>_cf_<8hex>_<Label>`. Being SQL views over indexed tables, a filter on
`TaskItem_UpdatedAt` is answered from the Task table's `_updated_at` index.
"""
from __future__ import annotations

import re
import sqlite3

from inloox.metadata import Metadata

from .edm import EMPTY_GUID

# Table aliases used by every view, so derivations can name them: t Task, p Project,
# pl Planning, e TimeEntry, s TaskStatus.
_PREFIXES = {"TaskItem": ("Task", "t"), "Project": ("Project", "p"),
             "Planning": ("Planning", "pl"), "TimeEntry": ("TimeEntry", "e")}
_OWNER_KEY = {"TaskItem": "t.TaskItemId", "Project": "p.ProjectId", "TimeEntry": "e.TimeEntryId"}

VIEWS = {
    "DynamicTaskItem": ('"Task" t LEFT JOIN "Project" p ON p.ProjectId = t.ProjectId'
                        ' LEFT JOIN "Planning" pl ON pl.PlanningId = t.PlanningId'
                        ' LEFT JOIN "TaskStatus" s ON s.TaskItemStatusId = t.TaskItemStatusId'),
    "DynamicTimeEntry": ('"TimeEntry" e LEFT JOIN "Project" p ON p.ProjectId = e.ProjectId'
                         ' LEFT JOIN "Task" t ON t.TaskItemId = e.TaskItemId'
                         ' LEFT JOIN "Planning" pl ON pl.PlanningId = e.PhaseId'
                         ' LEFT JOIN "TaskStatus" s ON s.TaskItemStatusId = t.TaskItemStatusId'),
    "DynamicProject": '"Project" p',
}
_CUSTOM_FIELD_PREFIXES = {"DynamicTaskItem": ("TaskItem", "Project"),
                          "DynamicTimeEntry": ("TimeEntry", "Project", "TaskItem"),
                          "DynamicProject": ("Project",)}

_HIDDEN = {"UpdatedAt": "_updated_at", "ChangedDate": "_updated_at", "CreatedAt": "_created_at",
           "CreatedDate": "_created_at", "ChangedByContactId": "_changed_by", "CreatedByContactId": "_created_by"}
_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


def _contact_name(column: str) -> str:
    return f'(SELECT c.DisplayName FROM "Contact" c WHERE c.ContactId = {column})'


def _notes(column: str) -> str:
    return f"(SELECT COUNT(*) FROM _note n WHERE n.ObjectId = {column})"


_DERIVED = {
    "TaskItem": {
        "TaskItemStatusName": "s.Name", "TaskItemStatusOrdinalPosition": "s.OrdinalPosition",
        "TaskItemStatusColor": "s.Color", "NotesCount": _notes("t.TaskItemId"),
        "ChangedByDisplayName": _contact_name("t._changed_by"),
        "CreatedByDisplayName": _contact_name("t.CreatedByContactId"),
        "AssignedByDisplayName": _contact_name("t.AssignedByContactId"),
        "HasStartDate": "(t.StartDateTime IS NOT NULL)", "HasEndDate": "(t.EndDateTime IS NOT NULL)",
        "CombinedStartDateTime": "COALESCE(t.StartDateTime, pl.StartDateTime)",
        "CombinedEndDateTime": "COALESCE(t.EndDateTime, pl.EndDateTime)",
        "IsOverdue": f"(t.IsDone = 0 AND t.EndDateTime IS NOT NULL AND t.EndDateTime < {_NOW})",
        "HasTimeEntries": 'EXISTS (SELECT 1 FROM "TimeEntry" x WHERE x.TaskItemId = t.TaskItemId)',
        "TimeEntriesDuration": '(SELECT COALESCE(SUM(x.DurationMinutes), 0) FROM "TimeEntry" x'
                               ' WHERE x.TaskItemId = t.TaskItemId)',
    },
    "Project": {
        "ListItemId": "p.ProjectId", "NotesCount": _notes("p.ProjectId"),
        "Locked": "(p.LockMode <> 0)",
    },
    "TimeEntry": {
        "DurationHours": "(e.DurationMinutes / 60.0)", "DurationWorkingDays": "(e.DurationMinutes / 480.0)",
        "PerformedByDisplayName": _contact_name("e.PerformedByContactId"),
        "ChangedByDisplayName": _contact_name("e._changed_by"),
        "CreatedByDisplayName": _contact_name("e._created_by"),
    },
}
# Counting a project's tasks costs a scan per row: only DynamicProject (one row per project) has it,
# so a page of 100 task rows in a 100,000-task project stays cheap.
_PROJECT_VIEW_ONLY = {"Project_TasksCount": '(SELECT COUNT(*) FROM "Task" x WHERE x.ProjectId = p.ProjectId)'}
_CUSTOM_FIELD_NAME = re.compile(r"cf_[0-9A-Fa-f]{8}_\w+", re.ASCII)
_CUSTOM_FIELD_SOURCES = """
    SELECT DISTINCT Name, CASE
        WHEN EXISTS (SELECT 1 FROM "Project" WHERE ProjectId = cf.ObjectId) THEN 'Project'
        WHEN EXISTS (SELECT 1 FROM "Task" WHERE TaskItemId = cf.ObjectId) THEN 'TaskItem'
        WHEN EXISTS (SELECT 1 FROM "TimeEntry" WHERE TimeEntryId = cf.ObjectId) THEN 'TimeEntry' END
    FROM "CustomField" cf
    UNION SELECT ColumnName, CASE TableName WHEN 'Task' THEN 'TaskItem' ELSE TableName END
    FROM "CustomFieldDefinition" WHERE ColumnName IS NOT NULL"""


def custom_fields(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(prefix, name) of every custom field that rows or definitions mention, names checked."""
    found = {(prefix, name) for name, prefix in conn.execute(_CUSTOM_FIELD_SOURCES)
             if prefix in _OWNER_KEY and name and _CUSTOM_FIELD_NAME.fullmatch(name)}
    return sorted(found)


def create_views(conn: sqlite3.Connection, metadata: Metadata) -> dict[str, dict[str, str]]:
    """(Re)create the three views; returns each view's column → EDM type."""
    fields = custom_fields(conn)
    columns = {}
    for view, source in VIEWS.items():
        selected, types = _view_columns(metadata, view, fields)
        conn.execute(f'DROP VIEW IF EXISTS "{view}"')
        conn.execute(f'CREATE VIEW "{view}" AS SELECT {", ".join(selected)} FROM {source}')
        columns[view] = types
    return columns


def _view_columns(metadata: Metadata, view: str, fields: list[tuple[str, str]]):
    selected, types = [], {}
    for prop in metadata.entity_sets[view].properties.values():
        if view == "DynamicProject" and prop.name in _PROJECT_VIEW_ONLY:
            selected.append(f'{_PROJECT_VIEW_ONLY[prop.name]} AS "{prop.name}"')
            continue
        selected.append(f'{_column_sql(metadata, prop)} AS "{prop.name}"')
        types[prop.name] = prop.type
    for prefix, name in fields:
        if prefix in _CUSTOM_FIELD_PREFIXES[view]:
            column = f"{prefix}_{name}"  # the name matched _CUSTOM_FIELD_NAME: safe to inline
            selected.append(f"(SELECT Value FROM \"CustomField\" WHERE ObjectId = {_OWNER_KEY[prefix]}"
                            f" AND Name = '{name}') AS \"{column}\"")
            types[column] = "Edm.String"
    return selected, types


def _column_sql(metadata: Metadata, prop) -> str:
    prefix, _, rest = prop.name.partition("_")
    if prefix == "ProjectPermission":
        # The Project set carries its permission columns already prefixed.
        if f"ProjectPermission_{rest}" in metadata.entity_sets["Project"].properties:
            return f'p."ProjectPermission_{rest}"'
        return _fallback(prop)
    if prefix not in _PREFIXES:
        return _fallback(prop)
    table, alias = _PREFIXES[prefix]
    if rest in metadata.entity_sets[table].properties:
        return f'{alias}."{rest}"'
    if rest in _HIDDEN:
        return f"{alias}.{_HIDDEN[rest]}"
    return _DERIVED.get(prefix, {}).get(rest) or _fallback(prop)


def _fallback(prop) -> str:
    if prop.nullable or prop.type == "Edm.DateTimeOffset":
        return "NULL"
    if prop.type == "Edm.Guid":
        return f"'{EMPTY_GUID}'"
    return "''" if prop.type == "Edm.String" else "0"
