"""Bound operations from the metadata: the few InLoox behaviours tests need, 501 for the rest.

Modelled: `UserInfo/Me()`; `AddNote` on Task, Project, TimeEntry and Document (notes are stored and
listed at `GET /_sandbox/notes`); Task `StartStopwatch`, `PauseStopwatch`, `StopStopwatch` (books a
TimeEntry for the elapsed time) and `GetStopwatch`, using the UserStopwatch set: a watch belongs
to the user who started it (its hidden `_created_by`), so each person runs at most one. Every other
operation of the metadata answers 501 naming itself. Each registration names the entity set its
result belongs to (the stopwatch operations are bound to Task but return a UserStopwatch), which
is what the answer's `@odata.context` names.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from . import edm, writes
from .behaviour import WriteContext
from .clock import format_ms
from .errors import BadRequest, MethodNotAllowed, NotFound, NotImplementedOperation
from .paths import Resource
from .store import Store


@dataclass(frozen=True)
class Implemented:
    """A modelled operation: its handler and the entity set of what it returns (None: the bound set)."""

    handler: Callable
    returns: str | None


OPERATIONS: dict[tuple[str, str], Implemented] = {}


def operation(name: str, *set_names: str, returns: str | None = None):
    """Register `handler(ctx, resource, body) -> (status, payload)` for `name` on `set_names`;
    `returns` is the entity set of the entities it answers with, when not the set it is bound to."""
    def register(handler):
        for set_name in set_names:
            OPERATIONS[(set_name, name)] = Implemented(handler, returns)
        return handler
    return register


def invoke(store: Store, resource: Resource, method: str, body, user: str) -> tuple[int, object, str]:
    """Run the operation `resource` names; returns (status, JSON payload or None, the payload's entity set)."""
    set_name, name = resource.entity_set.name, resource.operation
    declared = store.metadata.operation(set_name, name, collection=resource.key is None)
    if declared is None:
        raise NotFound(f"{set_name} has no operation '{name}'"
                       f"{' bound to one entity' if resource.key else ' bound to the collection'}", target=name)
    expected = "POST" if declared.kind == "Action" else "GET"
    if method != expected:
        raise MethodNotAllowed(f"{set_name}/{name} is an OData {declared.kind.lower()}: call it with {expected}")
    implemented = OPERATIONS.get((set_name, name))
    if implemented is None:
        raise NotImplementedOperation(f"The sandbox does not implement {set_name}/{name}", target=name)
    with store.transaction() as conn:
        ctx = WriteContext(conn, store, user, store.clock.now())
        status, payload = implemented.handler(ctx, resource, body if body is not None else {})
    return status, payload, implemented.returns or set_name


@operation("Me", "UserInfo")
def me(ctx: WriteContext, resource: Resource, body):
    return 200, [writes.read_entity(ctx.store, resource.entity_set, {"ContactId": ctx.user})]


@operation("AddNote", "Task", "Project", "TimeEntry", "Document")
def add_note(ctx: WriteContext, resource: Resource, body):
    writes.read_entity(ctx.store, resource.entity_set, resource.key)  # 404 for a missing entity
    html = body.get("htmlText") if isinstance(body, dict) else None
    if not isinstance(html, str):
        raise BadRequest("AddNote expects a string 'htmlText'", target="htmlText")
    followers = body.get("notificationContactIds") or []
    try:
        followers = [edm.normalize_guid(c) for c in followers]
    except (ValueError, TypeError):
        raise BadRequest("'notificationContactIds' must be a list of GUIDs", target="notificationContactIds") from None
    ctx.conn.execute("INSERT INTO _note VALUES (?, ?, ?, ?, ?, ?, ?)", (
        str(uuid.uuid4()), resource.entity_set.name, next(iter(resource.key.values())), html,
        json.dumps(followers), ctx.user, ctx.now))
    return 204, None


def _stopwatch(ctx: WriteContext, task_id: str) -> dict | None:
    """The caller's stopwatch on a task: each user times a task on a watch of their own."""
    cursor = ctx.conn.execute('SELECT * FROM "UserStopwatch" WHERE TaskItemId = ? AND _created_by = ?',
                              (task_id, ctx.user))
    found = cursor.fetchone()
    return dict(zip([d[0] for d in cursor.description], found)) if found else None


def _elapsed(ctx: WriteContext, watch: dict) -> int:
    if watch["PausedAt"] is not None:
        return watch["ElapsedSeconds"]
    running = edm.parse_datetime(ctx.now) - edm.parse_datetime(watch["StartedAt"])
    return watch["ElapsedSeconds"] + int(running.total_seconds())


def _stopwatch_set(ctx: WriteContext):
    return ctx.store.metadata.entity_sets["UserStopwatch"]


def _pause(ctx: WriteContext, watch: dict) -> None:
    writes.modify(ctx, _stopwatch_set(ctx), {"UserStopwatchId": watch["UserStopwatchId"]},
                  {"ElapsedSeconds": _elapsed(ctx, watch), "PausedAt": ctx.now})


def _public(ctx: WriteContext, watch_id: str) -> dict:
    return writes.read_entity(ctx.store, _stopwatch_set(ctx), {"UserStopwatchId": watch_id})


@operation("StartStopwatch", "Task", returns="UserStopwatch")
def start_stopwatch(ctx: WriteContext, resource: Resource, body):
    task = writes.read_entity(ctx.store, resource.entity_set, resource.key)
    if not task["ProjectId"]:
        raise BadRequest("A stopwatch needs a task that belongs to a project", target="ProjectId")
    # Only one stopwatch runs per user: starting this one pauses the caller's other one, not a colleague's.
    running = ctx.conn.execute('SELECT TaskItemId FROM "UserStopwatch" WHERE PausedAt IS NULL AND _created_by = ?',
                               (ctx.user,)).fetchall()
    for (other,) in running:
        if other != task["TaskItemId"]:
            _pause(ctx, _stopwatch(ctx, other))
    watch = _stopwatch(ctx, task["TaskItemId"])
    if watch is None:
        watch = writes.insert(ctx, _stopwatch_set(ctx), {
            "ProjectId": task["ProjectId"], "TaskItemId": task["TaskItemId"], "ElapsedSeconds": 0,
            "InitiallyStartedAt": ctx.now, "StartedAt": ctx.now, "PausedAt": None})
    elif watch["PausedAt"] is not None:
        writes.modify(ctx, _stopwatch_set(ctx), {"UserStopwatchId": watch["UserStopwatchId"]},
                      {"StartedAt": ctx.now, "PausedAt": None})
    return 200, _public(ctx, watch["UserStopwatchId"])


@operation("PauseStopwatch", "Task", returns="UserStopwatch")
def pause_stopwatch(ctx: WriteContext, resource: Resource, body):
    watch = _require_stopwatch(ctx, resource)
    if watch["PausedAt"] is None:
        _pause(ctx, watch)
    return 200, _public(ctx, watch["UserStopwatchId"])


@operation("GetStopwatch", "Task", returns="UserStopwatch")
def get_stopwatch(ctx: WriteContext, resource: Resource, body):
    return 200, _public(ctx, _require_stopwatch(ctx, resource)["UserStopwatchId"])


@operation("StopStopwatch", "Task", returns="UserStopwatch")
def stop_stopwatch(ctx: WriteContext, resource: Resource, body):
    watch = _require_stopwatch(ctx, resource)
    elapsed = _elapsed(ctx, watch)
    task = writes.read_entity(ctx.store, resource.entity_set, resource.key)
    end = edm.parse_datetime(ctx.now)
    start_ms = int((end - timedelta(seconds=elapsed)).timestamp() * 1000)
    writes.insert(ctx, ctx.store.metadata.entity_sets["TimeEntry"], {
        "ProjectId": watch["ProjectId"], "TaskItemId": watch["TaskItemId"], "DisplayName": task["Name"],
        "StartDateTime": format_ms(start_ms), "EndDateTime": ctx.now, "PerformedByContactId": ctx.user})
    result = {**_public(ctx, watch["UserStopwatchId"]), "ElapsedSeconds": elapsed}
    ctx.conn.execute('DELETE FROM "UserStopwatch" WHERE UserStopwatchId = ?', (watch["UserStopwatchId"],))
    return 200, result


def _require_stopwatch(ctx: WriteContext, resource: Resource) -> dict:
    task_id = next(iter(resource.key.values()))
    writes.read_entity(ctx.store, resource.entity_set, resource.key)
    watch = _stopwatch(ctx, task_id)
    if watch is None:
        raise BadRequest(f"No stopwatch for task {task_id}; call StartStopwatch first")
    return watch
