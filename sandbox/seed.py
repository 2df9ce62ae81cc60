"""Seed datasets: `empty` (just the caller's own user and account) and `demo` (a believable account).

Ids are uuid5 of a readable name (`seed_id("task", "Website Relaunch", "Design mockups")`), so tests
and demos can refer to rows by name. Dates are relative to today (UTC) so that "overdue" stays true.
"""
from __future__ import annotations

import uuid
from datetime import datetime, time, timedelta, timezone

from . import edm, writes
from .behaviour import WriteContext
from .errors import BadRequest
from .store import Store

_NAMESPACE = uuid.UUID("6f1c2b0a-58d4-4c1e-9a57-7d0a3e2b9c11")
ME = ("Alex", "Meyer", "alex.meyer@example.com")
COLLEAGUES = [("Brigitte", "Koch", "brigitte.koch@example.com"), ("Chen", "Wei", "chen.wei@example.com"),
              ("Dmitri", "Ivanov", "dmitri.ivanov@example.com"), ("Emma", "O'Brien", "emma.obrien@example.com")]
PROJECT_STATUSES = [("Planned", 0), ("Active", 50), ("Completed", 100)]
TASK_STATUSES = ["To do", "In progress", "Review", "Done"]
PROJECTS = {
    "Website Relaunch": ("2026_0001", "Active", ["Kick-off workshop", "Sitemap", "Design mockups",
                         "Content migration", "SEO audit", "Accessibility review", "Staging deploy", "Load test",
                         "Go-live", "Retrospective"]),
    "Mobile App": ("2026_0002", "Active", ["User interviews", "Wireframes", "API contract", "Login screen",
                   "Offline sync", "Push notifications", "Beta release", "Crash triage", "Store listing", "Launch"]),
    "Office Move": ("2026_0003", "Planned", ["Find movers", "Floor plan", "IT cabling", "Furniture order",
                    "Notify clients", "Pack archive", "Moving day", "Network test", "Key handover", "Housewarming"]),
}
CUSTOM_FIELDS = {"cf_2283e9e4_Budget": "Budget", "cf_7c1f3a9b_Customer": "Customer"}
# Master data and the groups without change times (scanned by the poller): a few rows of each.
CLIENTS = ["Acme GmbH", "Globex AG"]
CATEGORIES = ["Internal", "Customer project"]
CHECKLISTS = ["Launch checklist", "Handover checklist"]
PORTFOLIO = ("Digital 2026", "Projects that move our customers online")


def seed_id(*names: str) -> str:
    """The fixed GUID of a seeded row, e.g. seed_id("project", "Mobile App")."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(names)))


ME_ID = seed_id("contact", "me")


def check_seed(name) -> None:
    """Raise BadRequest unless `name` is a seed ('empty' or 'demo')."""
    if name not in ("empty", "demo"):
        raise BadRequest(f"Unknown seed {name!r:.80} (choose 'empty' or 'demo')", target="seed")


def plant(store: Store, name: str) -> None:
    """Load seed `name` ('empty' or 'demo') into the (cleared) store."""
    check_seed(name)
    with store.transaction() as conn:
        ctx = WriteContext(conn, store, ME_ID, store.clock.now())
        _account(ctx)
        if name == "demo":
            _demo(ctx)


def add_person(store: Store, first: str, last: str, email: str) -> str:
    """A user (Contact + UserInfo) with a fixed id from the name, if not there yet; returns the id."""
    contact_id = seed_id("contact", f"{first} {last}")
    with store.transaction() as conn:
        if conn.execute('SELECT 1 FROM "UserInfo" WHERE "ContactId" = ?', (contact_id,)).fetchone() is None:
            _person(WriteContext(conn, store, ME_ID, store.clock.now()), contact_id, first, last, email)
    return contact_id


def _put(ctx: WriteContext, set_name: str, values: dict) -> None:
    entity_set = ctx.store.metadata.entity_sets[set_name]
    ctx = WriteContext(ctx.conn, ctx.store, ctx.user, ctx.store.clock.now())
    writes.insert(ctx, entity_set, writes.check_body(entity_set, values))


def _person(ctx: WriteContext, contact_id: str, first: str, last: str, email: str) -> None:
    name = f"{first} {last}"
    _put(ctx, "Contact", {"ContactId": contact_id, "FirstName": first, "LastName": last, "DisplayName": name,
                          "Email": email, "Initials": first[0] + last[0], "IsIdentity": True,
                          "InvitationAccepted": True, "TimeZoneInfo": "W. Europe Standard Time"})
    _put(ctx, "UserInfo", {"ContactId": contact_id, "FirstName": first, "LastName": last, "DisplayName": name,
                           "Email": email, "TimeZoneInfo": "W. Europe Standard Time", "EmailConfirmed": True,
                           "UILanguage": "en"})


def _account(ctx: WriteContext) -> None:
    _person(ctx, ME_ID, *ME)
    _put(ctx, "AccountInfo", {"AccountId": seed_id("account"), "Name": "Sandbox GmbH",
                              "TimeZone": "W. Europe Standard Time"})


def _demo(ctx: WriteContext) -> None:
    people = [ME_ID] + [seed_id("contact", f"{f} {l}") for f, l, _ in COLLEAGUES]
    for contact_id, person in zip(people[1:], COLLEAGUES):
        _person(ctx, contact_id, *person)
    for position, (name, progress) in enumerate(PROJECT_STATUSES):
        _put(ctx, "ProjectStatus", {"ProjectStatusId": seed_id("project-status", name), "Name": name,
                                    "Progress": progress, "OrdinalPosition": position})
    today = datetime.combine(datetime.now(timezone.utc).date(), time(9), tzinfo=timezone.utc)
    for index, (project, (number, status, tasks)) in enumerate(PROJECTS.items()):
        _project(ctx, project, number, status, today + timedelta(days=30 * index))
        for n, task in enumerate(tasks):
            _task(ctx, project, task, n, people[(n + index) % len(people)], today)
    _time_entries(ctx, people, today)
    _custom_fields(ctx)
    _master_data(ctx)


def _project(ctx: WriteContext, name: str, number: str, status: str, start: datetime) -> None:
    project_id = seed_id("project", name)
    _put(ctx, "Project", {"ProjectId": project_id, "Name": name, "Number": number,
                          "ProjectStatusId": seed_id("project-status", status), "Priority": 2,
                          "StartDate": _iso(start - timedelta(days=45)), "EndDate": _iso(start + timedelta(days=60)),
                          "DescriptionHTML": f"<p>{name}</p>"})
    for position, column in enumerate(TASK_STATUSES):
        _put(ctx, "TaskStatus", {"TaskItemStatusId": seed_id("task-status", name, column), "Name": column,
                                 "ProjectId": project_id, "OrdinalPosition": position})


def _task(ctx: WriteContext, project: str, name: str, n: int, assignee: str, today: datetime) -> None:
    column = TASK_STATUSES[n % 4]
    # Due dates spread from 10 days ago to 17 days ahead: the early, unfinished ones are overdue.
    due = today + timedelta(days=3 * n - 10)
    _put(ctx, "Task", {"TaskItemId": seed_id("task", project, name), "Name": name,
                       "ProjectId": seed_id("project", project),
                       "TaskItemStatusId": seed_id("task-status", project, column), "IsDone": column == "Done",
                       "ContactId": assignee, "WorkAmount": float((n % 5 + 1) * 2), "CardPositionNumber": n,
                       "StartDateTime": _iso(due - timedelta(days=5)), "EndDateTime": _iso(due),
                       "IsBillable": n % 3 != 0, "DescriptionHTML": f"<p>{name}</p>"})


def _time_entries(ctx: WriteContext, people: list[str], today: datetime) -> None:
    booked = [("Website Relaunch", "Kick-off workshop", 120), ("Website Relaunch", "Sitemap", 90),
              ("Website Relaunch", "Design mockups", 240), ("Mobile App", "User interviews", 180),
              ("Mobile App", "Wireframes", 150), ("Mobile App", "API contract", 60),
              ("Office Move", "Find movers", 45), ("Office Move", "Floor plan", 75)]
    for n, (project, task, minutes) in enumerate(booked):
        start = today - timedelta(days=n + 1)
        _put(ctx, "TimeEntry", {"TimeEntryId": seed_id("time-entry", project, task), "DisplayName": task,
                                "ProjectId": seed_id("project", project), "TaskItemId": seed_id("task", project, task),
                                "StartDateTime": _iso(start), "EndDateTime": _iso(start + timedelta(minutes=minutes)),
                                "PerformedByContactId": people[n % len(people)], "IsBillable": True})


def _custom_fields(ctx: WriteContext) -> None:
    for position, (column, label) in enumerate(CUSTOM_FIELDS.items()):
        _put(ctx, "CustomFieldDefinition", {"CustomFieldDefinitionId": seed_id("custom-field", column),
                                            "ColumnName": column, "DisplayName": label, "TableName": "Project",
                                            "OrdinalPosition": position, "ColumnType": 0})
    values = [("Website Relaunch", "cf_2283e9e4_Budget", "25000"),
              ("Website Relaunch", "cf_7c1f3a9b_Customer", "Acme"), ("Mobile App", "cf_2283e9e4_Budget", "40000")]
    for project, column, value in values:
        _put(ctx, "CustomField", {"Name": column, "ObjectId": seed_id("project", project), "Value": value,
                                  "Type": "String"})


def _master_data(ctx: WriteContext) -> None:
    """Clients, categories, a checklist per project and one portfolio, so every group has rows to watch."""
    for name in CLIENTS:
        _put(ctx, "Client", {"ClientId": seed_id("client", name), "Name": name})
    for name in CATEGORIES:
        _put(ctx, "Category", {"CategoryId": seed_id("category", name), "Name": name})
    for project in PROJECTS:
        for position, name in enumerate(CHECKLISTS):
            _put(ctx, "CheckList", {"CheckListId": seed_id("checklist", project, name), "Name": name,
                                    "ProjectId": seed_id("project", project), "OrdinalPosition": position})
    name, description = PORTFOLIO
    _put(ctx, "Portfolio", {"PortfolioId": seed_id("portfolio", name), "Name": name, "Description": description,
                            "PortfolioManagerContactId": ME_ID})


def _iso(moment: datetime) -> str:
    return edm.normalize_datetime(moment.isoformat())
