"""Actions: the steps of a rule's `do:` list, each compiled to one primitive Operation verb.

Kinds (→ verb):
    create, update, delete, get, query, invoke, notify, http   (→ themselves)
    set_field       → update   one field of the trigger's entity (or any entity)
    log_time_entry  → create   a TimeEntry from a start and a duration
    add_note        → invoke   AddNote on the trigger's entity (or any entity)
The worker's executor table needs only the eight verbs.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Mapping

from inloox.metadata import load_metadata

from .edm import parse_datetime, type_problem
from .errors import did_you_mean
from .scope import Compilation, Scope
from .templates import is_template, isoformat

VERBS = ("create", "update", "delete", "get", "query", "invoke", "notify", "http")


@dataclass(frozen=True)
class ActionKind:
    """An action kind: its verb, its argument schema, how it checks and builds its Operation."""

    name: str
    verb: str
    build: Callable[[Mapping[str, Any]], dict]  # rendered args → operation params
    check: Callable[[Mapping[str, Any], tuple, Compilation], None]  # metadata checks at load
    defaults: Callable[[Scope], dict]  # args taken from the trigger when left out
    explanation: str
    schema: dict


ACTIONS: dict[str, ActionKind] = {}


def action(name: str, *, verb: str, explanation: str, args: dict, required: tuple = (),
           check=None, defaults=None):
    """Register an action kind; `args` are the JSON Schema properties of its arguments."""
    assert verb in VERBS, verb

    def register(build):
        schema = {"type": "object", "properties": args, "additionalProperties": False,
                  "required": list(required), "description": explanation}
        ACTIONS[name] = ActionKind(name, verb, build, check or (lambda a, p, c: None),
                                   defaults or (lambda scope: {}), explanation, schema)
        return build
    return register


def _arg(description: str, **schema) -> dict:
    return {**schema, "description": description}


_ENTITY = _arg("The InLoox entity set, e.g. Task or TimeEntry.", type="string")
_KEY = _arg("The entity's key (a GUID), usually a template such as '{{ task.TaskItemId }}'.", type="string")
_VALUES = _arg("Field values by InLoox field name; templates allowed.", type="object")


def _entity_set(args: Mapping, path: tuple, comp: Compilation):
    name = args.get("entity")
    if name is None:
        comp.fail(path, "entity is required", hint="only an inloox trigger gives a default entity and key")
    meta = load_metadata().entity_set(name) if isinstance(name, str) else None
    if meta is None:
        comp.fail(path + ("entity",), f"unknown entity set {name!r}",
                  hint=did_you_mean(str(name), load_metadata().entity_sets))
    return meta


def _check_values(meta, values: Mapping, path: tuple, comp: Compilation) -> None:
    for field, value in values.items():
        prop = meta.property(field)
        if prop is None:
            if meta.open_type:
                continue
            comp.fail(path + (field,), f"{meta.name} has no field {field!r}",
                      hint=did_you_mean(field, meta.properties), key=True)
        problem = "" if is_template(value) else type_problem(prop.type, value, nullable=prop.nullable)
        if problem:
            comp.fail(path + (field,), f"{field}: {problem}")


def _check_entity_values(args, path, comp):
    _check_values(_entity_set(args, path, comp), args.get("values", {}), path + ("values",), comp)


def _trigger_entity(scope: Scope) -> dict:
    """The trigger's own entity as default target (only inloox triggers have one)."""
    root = scope.roots.get("entity")
    return {"entity": root.entity_set, "key": "{{ event.key }}"} if root else {}


def _target(args: Mapping) -> dict:
    return {"entity_set": args["entity"], "key": args.get("key")}


@action("create", verb="create", explanation="create an entity (POST <Set>)",
        args={"entity": _ENTITY, "values": _VALUES}, required=("entity", "values"), check=_check_entity_values)
def _create(args):
    return {"entity_set": args["entity"], "values": dict(args["values"])}


@action("update", verb="update", explanation="change fields of an entity (PATCH <Set>(key))",
        args={"entity": _ENTITY, "key": _KEY, "values": _VALUES}, required=("values",),
        check=_check_entity_values, defaults=_trigger_entity)
def _update(args):
    return {**_target(args), "values": dict(args["values"])}


@action("delete", verb="delete", explanation="delete an entity and its children (DELETE <Set>(key))",
        args={"entity": _ENTITY, "key": _KEY}, check=lambda a, p, c: _entity_set(a, p, c),
        defaults=_trigger_entity)
def _delete(args):
    return _target(args)


@action("get", verb="get", explanation="read one entity; its fields become steps.<id>",
        args={"entity": _ENTITY, "key": _KEY}, required=("entity", "key"),
        check=lambda a, p, c: _entity_set(a, p, c))
def _get(args):
    return _target(args)


@action("query", verb="query", explanation="read entities with an OData filter; steps.<id>.value is the list",
        args={"entity": _ENTITY,
              "filter": _arg("An OData $filter, e.g. \"ProjectId eq {{ task.ProjectId }}\".", type="string"),
              "select": _arg("Fields to read ($select).", type="array", items={"type": "string"}),
              "orderby": _arg("An OData $orderby.", type="string"),
              "top": _arg("Read at most this many entities.", type="integer", minimum=1)},
        required=("entity",), check=lambda a, p, c: _check_select(_entity_set(a, p, c), a, p, c))
def _query(args):
    return {"entity_set": args["entity"], **{k: args[k] for k in ("filter", "select", "orderby", "top") if k in args}}


def _check_select(meta, args, path, comp):
    for i, field in enumerate(args.get("select", [])):
        if meta.property(field) is None and not meta.open_type:
            comp.fail(path + ("select", i), f"{meta.name} has no field {field!r}",
                      hint=did_you_mean(field, meta.properties))


def _check_invoke(args, path, comp):
    meta = _entity_set(args, path, comp)
    name = args.get("operation", "")
    op = load_metadata().operation(meta.name, name)
    if op is None:
        names = [o.name for o in load_metadata().operations if meta.name in o.binding_sets]
        comp.fail(path + ("operation",), f"{meta.name} has no operation {name!r}", hint=did_you_mean(name, names))
    allowed = [p.name for p in op.parameters]
    for param in args.get("parameters", {}):
        if param not in allowed:
            comp.fail(path + ("parameters", param), f"{op.name} has no parameter {param!r}",
                      hint=did_you_mean(param, allowed) or f"parameters: {', '.join(allowed) or 'none'}", key=True)


@action("invoke", verb="invoke", explanation="call a bound InLoox action or function, e.g. AddNote",
        args={"entity": _ENTITY, "key": _KEY,
              "operation": _arg("The operation's name, e.g. AddNote or StopStopwatch.", type="string"),
              "parameters": _arg("The operation's parameters by name.", type="object")},
        required=("operation",), check=_check_invoke, defaults=_trigger_entity)
def _invoke(args):
    op = load_metadata().operation(args["entity"], args["operation"])
    return {**_target(args), "operation": op.name, "method": "POST" if op.kind == "Action" else "GET",
            "parameters": dict(args.get("parameters", {}))}


@action("notify", verb="notify", explanation="post a message to a chat incoming-webhook URL (Slack, Teams)",
        args={"url": _arg("The incoming-webhook URL, usually '{{ env.SLACK_WEBHOOK_URL }}'.", type="string"),
              "text": _arg("The message text.", type="string")},
        required=("url", "text"))
def _notify(args):
    return {"url": args["url"], "text": str(args["text"])}


@action("http", verb="http", explanation="send an HTTP request to another system",
        args={"method": _arg("The HTTP method.", enum=["GET", "POST", "PUT", "PATCH", "DELETE"]),
              "url": _arg("The URL.", type="string"),
              "headers": _arg("Request headers.", type="object", additionalProperties={"type": "string"}),
              "body": _arg("A JSON body.", type=["object", "array", "string", "number", "boolean", "null"])},
        required=("method", "url"))
def _http(args):
    return {"method": args["method"], "url": args["url"], "headers": dict(args.get("headers", {})),
            "body": args.get("body")}


def _check_set_field(args, path, comp):
    meta = _entity_set(args, path, comp)
    _check_values(meta, {args["field"]: args.get("value")}, path, comp)


@action("set_field", verb="update", explanation="set one field, by default on the trigger's entity",
        args={"entity": _ENTITY, "key": _KEY, "field": _arg("The InLoox field name.", type="string"),
              "value": _arg("The new value; templates allowed.",
                            type=["string", "number", "boolean", "null"])},
        required=("field", "value"), check=_check_set_field, defaults=_trigger_entity)
def _set_field(args):
    return {**_target(args), "values": {args["field"]: args["value"]}}


def _duration(args: Mapping) -> timedelta:
    if "minutes" in args:
        return timedelta(minutes=float(args["minutes"]))
    return timedelta(hours=float(args["hours"]))


@action("log_time_entry", verb="create", explanation="book a time entry from a start and a duration",
        args={"project": _arg("The project's ProjectId.", type="string"),
              "task": _arg("The task's TaskItemId (optional).", type="string"),
              "start": _arg("When the work started (ISO date-time or template).", type="string"),
              "minutes": _arg("Duration in minutes.", type=["number", "string"]),
              "hours": _arg("Duration in hours (instead of minutes).", type=["number", "string"]),
              "name": _arg("The entry's DisplayName.", type="string"),
              "description": _arg("The entry's DescriptionText.", type="string"),
              "billable": _arg("IsBillable.", type=["boolean", "string"])},
        required=("project", "start"),
        check=lambda a, p, c: None if ("minutes" in a) != ("hours" in a)
        else c.fail(p, "log_time_entry needs exactly one of minutes or hours"))
def _log_time_entry(args):
    start = parse_datetime(args["start"])
    if start is None:
        raise ValueError(f"start {args['start']!r} is not an ISO date-time")
    end = start + _duration(args)
    values = {"ProjectId": args["project"], "StartDateTime": isoformat(start), "EndDateTime": isoformat(end)}
    optional = {"task": "TaskItemId", "name": "DisplayName", "description": "DescriptionText", "billable": "IsBillable"}
    values.update({field: args[arg] for arg, field in optional.items() if args.get(arg) is not None})
    return {"entity_set": "TimeEntry", "values": values}


@action("add_note", verb="invoke", explanation="add a note (AddNote) to a task, project, time entry or document",
        args={"entity": _ENTITY, "key": _KEY, "html": _arg("The note as HTML.", type="string"),
              "notify": _arg("ContactIds to notify.", type="array", items={"type": "string"})},
        required=("html",), check=lambda a, p, c: _entity_set(a, p, c), defaults=_trigger_entity)
def _add_note(args):
    return {**_target(args), "operation": "AddNote", "method": "POST",
            "parameters": {"htmlText": args["html"], "notificationContactIds": list(args.get("notify", []))}}
