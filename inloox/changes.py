"""Where InLoox records that a row changed, per entity set: the fact every change poll is built on.

InLoox has no webhooks and its plain `Task` and `TimeEntry` sets carry no timestamps, so changes are
found through the Dynamic views (`DynamicTaskItem.TaskItem_UpdatedAt`…), whose columns are the plain
set's fields with a table prefix, or through a set's own timestamp (`Project.LastChangedDateTime`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChangeFeed:
    """How to read changes of `entity_set`: from `view`, whose `prefix + field` column holds `field`."""

    entity_set: str
    view: str
    key: str  # the entity set's key field (plain name)
    stamp: str  # column of `view` moved by every write, in the server's clock
    prefix: str = ""
    changed_by: str | None = None  # column naming the contact who made the last change

    def column(self, field: str) -> str:
        """The view's column for a plain field name: `IsDone` → `TaskItem_IsDone`."""
        return self.prefix + field

    def field(self, column: str) -> str | None:
        """The plain field name of a view column, or None for columns of joined tables."""
        return column[len(self.prefix):] if column.startswith(self.prefix) else None


CHANGE_FEEDS = {
    feed.entity_set: feed
    for feed in (
        ChangeFeed("Task", "DynamicTaskItem", "TaskItemId", "TaskItem_UpdatedAt", "TaskItem_",
                   "TaskItem_ChangedByContactId"),
        ChangeFeed("TimeEntry", "DynamicTimeEntry", "TimeEntryId", "TimeEntry_UpdatedAt", "TimeEntry_",
                   "TimeEntry_ChangedByContactId"),
        ChangeFeed("Project", "Project", "ProjectId", "LastChangedDateTime", "", "ChangedByContactId"),
        ChangeFeed("Budget", "Budget", "BudgetId", "BudgetChangedDate"),
        ChangeFeed("LineItem", "LineItem", "LineItemId", "ChangedDate"),
        ChangeFeed("Document", "Document", "DocumentId", "UpdatedAt"),
    )
}


def change_feed(entity_set: str) -> ChangeFeed | None:
    """The change feed of `entity_set`, or None when InLoox records no change time for it."""
    return CHANGE_FEEDS.get(entity_set)
