"""Actions: the steps of a rule's `then:` list, each compiled to one primitive Operation verb.

A step is one mapping: the action's key with its main argument, the action's other arguments
beside it, and an optional `id` (its output becomes `steps.<id>`).

Kinds (→ verb):
    inloox.create: <Set>     values                       → create
    inloox.update: <Set>     key, values                  → update
    inloox.delete: <Set>     key                          → delete
    inloox.get: <Set>        key                          → get
    inloox.query: <Set>      filter, select, orderby, top → query
    inloox.action: <Name>    entity, key, parameters      → invoke (a bound operation, e.g. AddNote)
    notify: <Apprise URL>    title, body                  → notify
    http: <URL>              method, headers, body        → http
`key` (and `entity` of inloox.action) default to the entity of the rule's inloox trigger.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from inloox.metadata import load_metadata

from .edm import type_problem
from .errors import did_you_mean
from .scope import Compilation, Scope
from .templates import is_template, unescaped_expressions

VERBS = ("create", "update", "delete", "get", "query", "invoke", "notify", "http")


@dataclass(frozen=True)
class ActionKind:
    """An action kind: its verb, its argument schema, how it checks and builds its Operation."""

    name: str
    verb: str
    build: Callable[[Mapping[str, Any]], dict]  # rendered args → operation params
    check: Callable[[Mapping[str, Any], tuple, Compilation], None]  # metadata checks at load
    defaults: Callable[[Mapping[str, Any], Scope], dict]  # args taken from the trigger when left out
    explanation: str
    schema: dict


ACTIONS: dict[str, ActionKind] = {}


def action(name: str, *, verb: str, explanation: str, main: dict, args: dict, required: tuple = (),
           check=None, defaults=None):
    """Register an action kind; `main` is the schema of its key's value, `args` of the keys beside it."""
    assert verb in VERBS, verb

    def register(build):
        schema = {"type": "object", "properties": {name: main, **args}, "required": [name, *required],
                  "description": explanation}
        ACTIONS[name] = ActionKind(name, verb, build, check or (lambda a, p, c: None),
                                   defaults or (lambda a, scope: {}), explanation, schema)
        return build
    return register


def _arg(description: str, **schema) -> dict:
    return {**schema, "description": description}


_SET = _arg("The InLoox entity set, e.g. Task or TimeEntry.", type="string", minLength=1)
_KEY = _arg("The entity's key (a GUID), usually a template such as '{{ steps.task.TaskItemId }}'; "
            "default: the key of the rule's inloox trigger entity, when it is of this set.", type="string")
_VALUES = _arg("Field values by InLoox field name; templates allowed.", type="object")


def _entity_set(name: Any, path: tuple, comp: Compilation):
    meta = load_metadata().entity_set(name) if isinstance(name, str) else None
    if meta is None:
        comp.fail(path, f"unknown entity set {name!r}", hint=did_you_mean(str(name), load_metadata().entity_sets))
    return meta


def _check_key(args: Mapping, path: tuple, comp: Compilation, entity_set: str) -> None:
    if "key" not in args:
        comp.fail(path, "key is required", hint=f"only an `inloox: {entity_set}` trigger gives a default key")
    key = args["key"]
    problem = "" if is_template(key) else type_problem("Edm.Guid", key, nullable=False)
    if problem:
        comp.fail(path + ("key",), f"key: {problem}")


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


def _trigger_key(args: Mapping, scope: Scope, entity_set: Any) -> dict:
    """The trigger's own entity key, when the step targets the trigger's entity set."""
    root = scope.roots.get("entity")
    return {"key": "{{ event.key }}"} if root and root.entity_set == entity_set else {}


def _target(args: Mapping, name: str) -> dict:
    return {"entity_set": args[name], "key": args["key"]}


def _checker(name: str, *, key: bool = False, values: bool = False):
    """A check of the entity set named by the action, and of its key and values when it has them."""
    def check(args, path, comp):
        meta = _entity_set(args[name], path + (name,), comp)
        if key:
            _check_key(args, path, comp, meta.name)
        if values:
            _check_values(meta, args.get("values", {}), path + ("values",), comp)
    return check


def _key_default(name: str):
    return lambda args, scope: _trigger_key(args, scope, args.get(name))


@action("inloox.create", verb="create", explanation="create an entity (POST <Set>); steps.<id> is the new entity",
        main=_SET, args={"values": _VALUES}, required=("values",), check=_checker("inloox.create", values=True))
def _create(args):
    return {"entity_set": args["inloox.create"], "values": dict(args["values"])}


@action("inloox.update", verb="update", explanation="change fields of an entity (PATCH <Set>(key))",
        main=_SET, args={"key": _KEY, "values": _VALUES}, required=("values",),
        check=_checker("inloox.update", key=True, values=True), defaults=_key_default("inloox.update"))
def _update(args):
    return {**_target(args, "inloox.update"), "values": dict(args["values"])}


@action("inloox.delete", verb="delete", explanation="delete an entity and its children (DELETE <Set>(key))",
        main=_SET, args={"key": _KEY}, check=_checker("inloox.delete", key=True),
        defaults=_key_default("inloox.delete"))
def _delete(args):
    return _target(args, "inloox.delete")


@action("inloox.get", verb="get", explanation="read one entity; its fields become steps.<id>",
        main=_SET, args={"key": _KEY}, check=_checker("inloox.get", key=True), defaults=_key_default("inloox.get"))
def _get(args):
    return _target(args, "inloox.get")


def _check_query(args, path, comp):
    meta = _entity_set(args["inloox.query"], path + ("inloox.query",), comp)
    for i, field in enumerate(args.get("select", [])):
        if meta.property(field) is None and not meta.open_type:
            comp.fail(path + ("select", i), f"{meta.name} has no field {field!r}",
                      hint=did_you_mean(field, meta.properties))
    # Event values (webhook bodies, chat text) must not write OData: each one goes through `| odata`.
    for expression in unescaped_expressions(args.get("filter", "")):
        comp.fail(path + ("filter",), f"{expression} in a filter is not written as an OData literal",
                  hint=f"end the expression in | odata, e.g. {expression[:-2].rstrip()} | odata }}}}")


@action("inloox.query", verb="query", explanation="read entities with an OData filter; steps.<id>.value is the list",
        main=_SET,
        args={"filter": _arg("An OData $filter; every {{ }} in it must end in | odata, e.g. "
                             "\"ProjectId eq {{ task.ProjectId | odata }}\".", type="string"),
              "select": _arg("Fields to read ($select).", type="array", items={"type": "string"}),
              "orderby": _arg("An OData $orderby, e.g. 'EndDateTime desc'.", type="string"),
              "top": _arg("Read at most this many entities.", type="integer", minimum=1)},
        check=_check_query)
def _query(args):
    options = {k: args[k] for k in ("filter", "select", "orderby", "top") if k in args}
    return {"entity_set": args["inloox.query"], **options}


def _check_action(args, path, comp):
    if "entity" not in args:
        comp.fail(path, "entity is required", hint="only an inloox trigger gives a default entity and key")
    meta = _entity_set(args["entity"], path + ("entity",), comp)
    name = args["inloox.action"]
    op = load_metadata().operation(meta.name, name)
    if op is None:
        names = [o.name for o in load_metadata().operations if meta.name in o.binding_sets]
        comp.fail(path + ("inloox.action",), f"{meta.name} has no operation {name!r}", hint=did_you_mean(name, names))
    _check_key(args, path, comp, meta.name)
    allowed = [p.name for p in op.parameters]
    for param in args.get("parameters", {}):
        if param not in allowed:
            comp.fail(path + ("parameters", param), f"{op.name} has no parameter {param!r}",
                      hint=did_you_mean(param, allowed) or f"parameters: {', '.join(allowed) or 'none'}", key=True)


def _action_defaults(args, scope: Scope) -> dict:
    root = scope.roots.get("entity")
    entity = args.get("entity", root.entity_set if root else None)
    return {**({"entity": entity} if entity else {}), **_trigger_key(args, scope, entity)}


@action("inloox.action", verb="invoke", explanation="call a bound InLoox action or function, e.g. AddNote",
        main=_arg("The operation's name, e.g. AddNote, StopStopwatch or AddNotificationFollowers.",
                  type="string", minLength=1),
        args={"entity": _arg("The entity set the operation is bound to; default: the trigger's.", type="string"),
              "key": _KEY,
              "parameters": _arg("The operation's parameters by name, e.g. htmlText for AddNote.", type="object")},
        check=_check_action, defaults=_action_defaults)
def _invoke(args):
    op = load_metadata().operation(args["entity"], args["inloox.action"])
    return {"entity_set": args["entity"], "key": args["key"], "operation": op.name,
            "method": "POST" if op.kind == "Action" else "GET", "parameters": dict(args.get("parameters", {}))}


# Apprise services whose transport is neither HTTP (requests) nor SMTP (smtplib): the outbound guard
# (workers/egress.py) checks where those two connect, and refuses any other socket a service opens,
# so these would fail at every send. Their hosts are the rule author's choice (irc://, rsyslog://,
# amqp://), or they reach this machine's own desktop, bus or syslog.
UNGUARDED_NOTIFY_SCHEMES = frozenset({
    "amqp", "amqps", "irc", "ircs", "nostr", "rsyslog", "syslog", "mqtt", "mqtts", "xmpp", "xmpps",
    "smpp", "smpps", "growl", "dbus", "kde", "qt", "glib", "gio", "gnome", "macosx", "windows", "blink1",
})


def _check_notify(args, path, comp):
    # Only the part before any template is known at load; "{{ env.TEAM_CHANNEL_URL }}" is checked at send.
    written = str(args["notify"]).split("{{", 1)[0].split("{%", 1)[0]
    scheme = written.split("://", 1)[0].lower() if "://" in written else ""
    if scheme in UNGUARDED_NOTIFY_SCHEMES:
        comp.fail(path + ("notify",), f"{scheme}:// notifications are refused: their transport is not HTTP or "
                                      "SMTP, which the outbound guard checks",
                  hint="use a service that posts over HTTP (json://, slack://, msteams://, ntfy://, …) or mailto://")


@action("notify", verb="notify", explanation="send a message through Apprise (Slack, Teams, email, JSON webhook)",
        main=_arg("The Apprise URL, usually '{{ env.TEAM_CHANNEL_URL }}'.", type="string", minLength=1),
        args={"title": _arg("The message title.", type="string"), "body": _arg("The message text.", type="string")},
        required=("body",), check=_check_notify)
def _notify(args):
    return {"url": args["notify"], "text": str(args["body"]), "title": str(args.get("title", ""))}


@action("http", verb="http", explanation="send an HTTP request to an allow-listed host",
        main=_arg("The URL.", type="string", minLength=1),
        args={"method": _arg("The HTTP method (default POST).", enum=["GET", "POST", "PUT", "PATCH", "DELETE"]),
              "headers": _arg("Request headers.", type="object", additionalProperties={"type": "string"}),
              "body": _arg("A JSON body.", type=["object", "array", "string", "number", "boolean", "null"])})
def _http(args):
    return {"method": args.get("method", "POST"), "url": args["http"], "headers": dict(args.get("headers", {})),
            "body": args.get("body")}
