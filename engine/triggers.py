"""Triggers (`when:`): which events start a rule. Each trigger's YAML key selects its kind.

Kinds:
    inloox    `inloox: Task` with `on`, `changes` (from/to/not_from/not_to/changed) and `for`
    webhook   `webhook: <hook name>`
    chat      `chat: "<command> <arg> …"`, e.g. `chat: "done <task>"` (chat.args.task)
    schedule  `schedule: "<cron>"` with `timezone` and `catch_up` (skip | latest)
    manual    `manual: true` (run by a person, e.g. from the dashboard)
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from inloox.changes import change_feed, unobservable
from inloox.metadata import load_metadata

from .durations import PATTERN as DURATION_PATTERN, format_duration, parse_duration
from .edm import coercer, same_value, type_problem
from .documents import format_path
from .errors import did_you_mean
from .events import Event, entity_name
from .scope import Compilation, Root, Scope

IndexKey = tuple  # e.g. ("inloox", "Task", "updated", "IsDone"); "*" stands for any field


@dataclass(frozen=True)
class Trigger:
    """A compiled trigger: where the index files it, what it reads, and its own check."""

    kind: str
    summary: str
    index_keys: tuple[IndexKey, ...]
    scope: Scope
    check: Callable[[Event], "str | None"] = field(repr=False)
    bind: Callable[[Event], dict] | None = field(default=None, repr=False)  # names only this trigger gives
    hold: timedelta | None = None
    cron: str | None = None
    timezone: str | None = None
    catch_up: str | None = None  # schedule: after downtime, "skip" missed ticks or fire the "latest" once
    # inloox: the fields whose changes its tests read, which the poller must watch (None: every field)
    watches: frozenset[str] | None = None


@dataclass(frozen=True)
class TriggerKind:
    """A trigger kind: compile from config, lookup keys of an event, template context of an event."""

    name: str
    compile: Callable[[Mapping, tuple, Compilation], Trigger]
    event_keys: Callable[[Event], list[IndexKey]]
    context: Callable[[Event], dict]
    explanation: str
    schema: dict


TRIGGERS: dict[str, TriggerKind] = {}


def trigger(name: str, *, event_keys, context, explanation: str, options: dict):
    """Register a trigger kind; `options` are the JSON Schema properties it accepts."""
    def register(compile_fn):
        schema = {"type": "object", "properties": options, "additionalProperties": False}
        TRIGGERS[name] = TriggerKind(name, compile_fn, event_keys, context, explanation, schema)
        return compile_fn
    return register


def compile_trigger(config: Mapping, path: tuple, comp: Compilation) -> Trigger:
    """The compiled trigger of a rule; exactly one kind key must be present."""
    kinds = [k for k in config if k in TRIGGERS]
    if len(kinds) != 1:
        found = ", ".join(kinds) if kinds else "none"
        comp.fail(path, f"a trigger needs exactly one of {', '.join(TRIGGERS)} (found {found})",
                  hint=" ".join(did_you_mean(k, TRIGGERS) for k in config if k not in TRIGGERS).strip())
    return TRIGGERS[kinds[0]].compile(config, path, comp)


def _prop(description: str, **schema) -> dict:
    return {**schema, "description": description}


def _inloox_keys(event: Event) -> list[IndexKey]:
    fields = list(event.changes) + ["*"]
    return [("inloox", event.entity_set, event.kind, f) for f in fields]


def _inloox_context(event: Event) -> dict:
    changes = {f: {"from": a, "to": b} for f, (a, b) in event.changes.items()}
    entity = dict(event.entity)
    return {entity_name(event.entity_set or "entity"): entity, "entity": entity,
            "change": changes, "actor": dict(event.actor)}


ENTITY_EVENTS = ("created", "updated", "deleted")
_CHANGE_TESTS = ("from", "to", "not_from", "not_to")
_VALUES = ["string", "number", "boolean", "null", "array"]  # a list means "one of these"
_CHANGE = {
    "type": "object", "additionalProperties": False, "description": "How one field must have changed.",
    "properties": {
        "from": _prop("The field's value before the change (or a list: one of them).", type=_VALUES),
        "to": _prop("The field's value after the change (or a list: one of them).", type=_VALUES),
        "not_from": _prop("The value before must not be this (or any of a list).", type=_VALUES),
        "not_to": _prop("The value after must not be this (or any of a list).", type=_VALUES),
        "changed": _prop("true: the field must have changed (the default); false: it must not.", type="boolean"),
    },
}
_INLOOX_OPTIONS = {
    "inloox": _prop("The InLoox entity set to watch, e.g. Task, TimeEntry, Project.", type="string"),
    "on": _prop("Which entity events start the rule: created, updated or deleted, or a list (default: all).",
                type=["string", "array"], minItems=1, uniqueItems=True, items={"enum": list(ENTITY_EVENTS)}),
    "changes": _prop("How fields must have changed, by field name (all of them); `changed: [fields]`: "
                     "at least one of these fields changed.", type="object", minProperties=1,
                     properties={"changed": _prop("Fields of which at least one must have changed.", type="array",
                                                  minItems=1, items={"type": "string"})},
                     additionalProperties=_CHANGE),
    "for": _prop("Hold: the trigger's state must still hold after this long (e.g. 10m) before the run.",
                 type=["string", "number"], pattern=DURATION_PATTERN),
}


@trigger("inloox", event_keys=_inloox_keys, context=_inloox_context, options=_INLOOX_OPTIONS,
         explanation="an entity of an InLoox entity set was created, updated or deleted")
def _compile_inloox(config, path, comp):
    entity_set = config["inloox"]
    meta = load_metadata().entity_set(entity_set)
    if meta is None:
        blind = unobservable(entity_set)  # an operation's name says more than "unknown"
        comp.fail(path + ("inloox",), blind.message if blind else f"unknown entity set {entity_set!r}",
                  hint=blind.hint if blind else did_you_mean(entity_set, load_metadata().entity_sets))
    kinds = _entity_events(config.get("on", ENTITY_EVENTS), path + ("on",), comp)
    changes = {f: spec for f, spec in config.get("changes", {}).items() if f != "changed"}
    any_of = config.get("changes", {}).get("changed", [])
    _check_observable(entity_set, changes, any_of, path, comp)
    tests = [_compile_change(f, spec, path + ("changes", f), meta, comp) for f, spec in changes.items()]
    tests += [_compile_any_change(any_of, path + ("changes", "changed"), meta, comp)] if any_of else []
    must_change = [f for f, spec in changes.items() if spec.get("changed", True)]
    # Every must-change field is required, so one suffices; else any listed field may be the one.
    fields = must_change[:1] or list(any_of) or ["*"]
    hold = parse_duration(config["for"]) if "for" in config else None
    if "for" in config and hold is None:
        comp.fail(path + ("for",), f"{config['for']!r} is not a duration", hint="write e.g. 90s, 10m, 2h, 3d")

    where = format_path(path)

    def check(event: Event):
        if (event.source, event.entity_set) != ("inloox", entity_set):
            return f"{where}: wanted an InLoox {entity_set} event"
        if event.kind not in kinds:
            return f"{where}: {event.kind} is not one of {', '.join(kinds)}"
        for test in tests:
            reason = test(event.changes)
            if reason:
                return reason
        return None

    name = entity_name(entity_set)
    roots = {name: Root("entity", entity_set), "entity": Root("entity", entity_set),
             "change": Root("changes", entity_set), "actor": _actor(entity_set, kinds)}
    summary = f"{entity_set} {'/'.join(kinds)}" + (f" changing {', '.join(changes)}" if changes else "")
    summary += f" changing any of {', '.join(any_of)}" if any_of else ""
    if hold:
        summary += f", held for {format_duration(hold)}"
    keys = tuple(("inloox", entity_set, k, f) for k in kinds for f in fields)
    # Every field a test reads must be watched, not only the one the index files the rule under;
    # with no field that must change, an update of any field may be the one. A trigger on creation
    # alone compares nothing: a new entity is one without a snapshot, and its event carries the
    # entity read in full, so the poller need not keep every field of every entity for it.
    watches = None if fields == ["*"] else frozenset([*changes, *any_of])
    if set(kinds) == {"created"} and not tests:
        watches = frozenset()
    return Trigger("inloox", summary, keys, Scope(roots), check, hold=hold, watches=watches)


def _actor(entity_set: str, kinds: tuple[str, ...]) -> Root:
    """What `actor` holds on the set's events: who made the change, where the change feed records it."""
    feed = change_feed(entity_set)
    if set(kinds) == {"deleted"}:  # a deletion is found by a sweep: the row, and who removed it, are gone
        return Root("record", about=f"{entity_set} deleted events: InLoox keeps no trace of who deletes a row")
    if feed is None or not feed.changed_by:
        how = "it is scanned" if feed is None else "its change feed names nobody"
        return Root("record", about=f"{entity_set} events: InLoox records no author of a change to it ({how})")
    # On `deleted` events (of a rule also on created/updated) it is empty too: templates say `| default`.
    return Root("record", names=("ContactId",), about=f"{entity_set} events (who made the change)")


def _check_observable(entity_set: str, changes: Mapping, any_of: list, path: tuple, comp: Compilation) -> None:
    """Refuse a trigger the poller could never see fire (a rule accepted here must be able to run)."""
    blind = unobservable(entity_set, [*changes, *any_of])
    if blind is None:
        return
    if blind.field is None:
        comp.fail(path + ("inloox",), blind.message, hint=blind.hint)
    where = ("changes", blind.field) if blind.field in changes else ("changes", "changed", any_of.index(blind.field))
    comp.fail(path + where, blind.message, hint=blind.hint, key=blind.field in changes)


def _entity_events(given, path: tuple, comp: Compilation) -> tuple[str, ...]:
    kinds = (given,) if isinstance(given, str) else tuple(given)
    for kind in kinds:
        if kind not in ENTITY_EVENTS:
            comp.fail(path, f"{kind!r} is not an entity event",
                      hint=did_you_mean(kind, ENTITY_EVENTS) or "created, updated or deleted")
    return kinds


def _compile_change(name: str, spec: Mapping, path: tuple, meta, comp: Compilation):
    """A test of one field's (from, to) pair; literals are checked against the field's EDM type."""
    prop = meta.property(name)
    if prop is None and not meta.open_type:
        comp.fail(path, f"{meta.name} has no field {name!r}", hint=did_you_mean(name, meta.properties), key=True)
    coerce = coercer(prop.type if prop else None)
    wanted = {}
    for test in _CHANGE_TESTS:
        if test in spec:
            # "from": null is how a created entity's fields change, whatever their nullability
            nullable = prop.nullable or test.endswith("from") if prop else True
            listed = isinstance(spec[test], list)
            for i, value in enumerate(spec[test] if listed else [spec[test]]):
                problem = type_problem(prop.type, value, nullable=nullable) if prop else ""
                if problem:
                    comp.fail(path + (test,) + ((i,) if listed else ()), f"{name}: {problem}")
            wanted[test] = tuple(coerce(v) for v in (spec[test] if listed else [spec[test]]))
    must_change = spec.get("changed", True)
    where = format_path(path)

    def check(changes: Mapping):
        if name not in changes:
            return None if not must_change else f"{where}: {name} did not change"
        if not must_change:
            return f"{where}: {name} changed, wanted it unchanged"
        before, after = (coerce(v) for v in changes[name])
        for test, values in wanted.items():
            actual = before if test.endswith("from") else after
            if any(same_value(actual, v) for v in values) == test.startswith("not_"):
                shown = values[0] if len(values) == 1 else list(values)
                return f"{where}: went {before!r} → {after!r}, wanted {test} {shown!r}"
        return None
    return check


def _compile_any_change(names: list, path: tuple, meta, comp: Compilation):
    """A test that at least one of the listed fields changed."""
    for i, name in enumerate(names):
        if meta.property(name) is None and not meta.open_type:
            comp.fail(path + (i,), f"{meta.name} has no field {name!r}", hint=did_you_mean(name, meta.properties))
    where = format_path(path)
    return lambda changes: None if any(n in changes for n in names) else f"{where}: none of {', '.join(names)} changed"


def _identity(event: Event, source: str, kind: str, wanted: str, path: tuple) -> str | None:
    """None when the event comes from `source` under the name `kind`, else why not."""
    return None if (event.source, event.kind) == (source, kind) else f"{format_path(path)}: wanted {wanted}"


def _named_keys(event: Event) -> list[IndexKey]:
    return [(event.source, event.kind)]


@trigger("webhook", event_keys=_named_keys, context=lambda event: {"webhook": dict(event.payload)},
         options={"webhook": _prop("The inbound webhook's name (its URL is /hooks/<name>).", type="string", minLength=1)},
         explanation="a signed POST to /hooks/<name> was received")
def _compile_webhook(config, path, comp):
    name = config["webhook"]
    check = lambda event: _identity(event, "webhook", name, f"webhook {name}", path)  # noqa: E731
    return Trigger("webhook", f"webhook {name}", (("webhook", name),), Scope({"webhook": Root("free")}), check)


_ARGUMENT = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)(?::(text|number))?>\Z")
_NUMBER = r"[-+]?\d+(?:\.\d+)?"


@trigger("chat", event_keys=_named_keys, context=lambda event: {"chat": {**event.payload, "args": {}}},
         options={"chat": _prop("The command and its argument pattern, e.g. 'done <task>' or 'log <hours:number> "
                                "<task>'; the last argument takes the rest of the text.", type="string", minLength=1)},
         explanation="a chat command whose text fits the pattern; chat.args holds the arguments")
def _compile_chat(config, path, comp):
    command, *words = config["chat"].split()
    parts, names, numbers = [], [], []
    for i, word in enumerate(words):
        m = _ARGUMENT.match(word)
        if not m and word.startswith("<"):
            comp.fail(path + ("chat",), f"{word!r} is not an argument", hint="write <name> or <name:number>")
        if not m:
            parts.append(re.escape(word))
            continue
        names.append(m.group(1))
        numbers += [m.group(1)] if m.group(2) == "number" else []
        text = ".+" if i == len(words) - 1 else r"\S+"  # the last argument takes the rest
        parts.append(f"(?P<{m.group(1)}>{_NUMBER if m.group(2) == 'number' else text})")
    if len(set(names)) != len(names):
        comp.fail(path + ("chat",), "an argument name is used twice")
    pattern = re.compile(r"\s+".join(parts) + r"\Z", re.DOTALL)
    usage = " ".join([command, *words])
    where = format_path(path)

    def arguments(event: Event) -> dict | None:
        m = pattern.match(str(event.payload.get("text", "")).strip())
        if m is None:
            return None
        args = {k: _number(v) if k in numbers else v for k, v in m.groupdict().items()}
        return None if any(v is None for v in args.values()) else args

    def check(event: Event):
        wrong = _identity(event, "chat", command, f"chat command {command}", path)
        if wrong or arguments(event) is not None:
            return wrong
        return f"{where}: {event.payload.get('text', '')!r} does not fit {usage!r}"

    bind = lambda event: {"chat": {**event.payload, "args": arguments(event) or {}}}  # noqa: E731
    return Trigger("chat", f"chat {usage}", (("chat", command),), Scope({"chat": Root("free")}), check, bind)


def _number(text: str) -> int | float | None:
    """The number typed, or None when it is beyond a number's range (about ±1.8e308, as engine.bodies takes): the
    text does not fit. int() refused over 4,300 digits with a ValueError (a chat command answered 500), and
    float() made a 400-digit decimal infinity."""
    try:
        value = float(text) if "." in text else int(text)
        return value if math.isfinite(value) else None  # an int too large for a float raises OverflowError
    except (ValueError, OverflowError):
        return None


def _rule_keys(event: Event) -> list[IndexKey]:
    return [(event.source, event.kind)]  # schedule and manual events name the rule they fire


CATCH_UP = ("skip", "latest")
_SOME_START = datetime(2000, 1, 1, tzinfo=timezone.utc)  # where `_never_fires` looks from (any instant would do)
_SCHEDULE_OPTIONS = {
    "schedule": _prop("A five-field cron expression, e.g. '0 9 * * 1-5'.", type="string"),
    "timezone": _prop("The IANA time zone the cron expression is read in (default UTC).", type="string"),
    "catch_up": _prop("Ticks missed while no scheduler ran: skip (default) fires none of them, latest fires "
                      "the most recent one once.", enum=list(CATCH_UP)),
}


@trigger("schedule", event_keys=_rule_keys, context=lambda event: {"schedule": dict(event.payload)},
         options=_SCHEDULE_OPTIONS, explanation="the cron expression fired")
def _compile_schedule(config, path, comp):
    cron, tz = config["schedule"], config.get("timezone", "UTC")
    if not croniter.is_valid(cron) or len(cron.split()) != 5:
        comp.fail(path + ("schedule",), f"{cron!r} is not a valid five-field cron expression",
                  hint="minute hour day-of-month month day-of-week, e.g. '0 9 * * 1-5'")
    if _random(cron):
        comp.fail(path + ("schedule",), f"{cron!r} has a random field (R): each scheduler, and each of its looks, "
                  "would draw another time, so a tick could fire twice, or never", hint="write the minute and hour")
    if whole := _equal_range(cron):
        item, name, start, star = whole
        # croniter 7 widens an equal range to the whole field ("Jan-Jan" is the whole cycle); cron and Temporal read it
        # as its one value: a daily 09:00 written "0 9-9 * * *" would run, and write to InLoox, every hour.
        comp.fail(path + ("schedule",), f"{item!r} in the {name} field is read as {star!r} (the whole field), not as "
                  f"{start}", hint=f"write {start!r}")
    if _never_fires(cron):
        comp.fail(path + ("schedule",), f"{cron!r} never fires: its day and month name no date that exists",
                  hint="February has no 30th or 31st, and April, June, September and November no 31st; "
                       "'L' is a month's last day")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        comp.fail(path + ("timezone",), f"unknown time zone {tz!r}", hint="use an IANA name like Europe/Berlin")
    else:
        if tz in _HOST_ZONES:
            # Read from each host's own files: two schedulers on hosts set differently compute other ticks, other
            # tick ids, and both fire.
            comp.fail(path + ("timezone",), f"time zone {tz!r} is each host's own, not one place's",
                      hint="use an IANA name like Europe/Berlin")
    scope = Scope({"schedule": Root("free")})
    check = lambda event: _identity(event, "schedule", comp.rule_id, "this rule's schedule", path)  # noqa: E731
    catch_up = config.get("catch_up", "skip")
    return Trigger("schedule", f"schedule {cron} ({tz})", (("schedule", comp.rule_id),), scope,
                   check, cron=cron, timezone=tz, catch_up=catch_up)


_HOST_ZONES = frozenset({"localtime", "posixrules"})  # files of the zone database that name no place

# croniter's `R`, `R(0-29)`, `R/15` in a field: a new random value every time croniter reads the expression.
_RANDOM_ITEM = re.compile(r"^r(\(\d+-\d+\))?(/\d+)?$", re.IGNORECASE | re.ASCII)


def _random(cron: str) -> bool:
    """True when a field draws at random: no two computations of the ticks (two schedulers, two rounds) agree."""
    return any(_RANDOM_ITEM.match(item) for field in cron.split() for item in field.split(","))


_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_RANGE_ITEM = re.compile(r"^(\w+)-(\w+)(/\d+)?$", re.ASCII)


def _equal_range(cron: str) -> tuple[str, str, str, str] | None:
    """The first range item whose ends are the same value (`9-9`, `tue-TUE/2`): (it, its field, its start, what
    croniter reads instead); None without."""
    for name, items in zip(_FIELDS, cron.split()):  # not `field`: dataclasses' is imported here
        for item in items.split(","):
            found = _RANGE_ITEM.match(item)
            if found and _same_value(found[1], found[2]):
                return item, name, found[1], "*" + (found[3] or "")
    return None


def _same_value(a: str, b: str) -> bool:
    return int(a) == int(b) if a.isdigit() and b.isdigit() else a.lower() == b.lower()


def _never_fires(cron: str) -> bool:
    """True for valid fields that name no date ever (`0 9 31 2 *`): the scheduler could compute no tick of it.

    Looked for from a fixed start, not the clock: a cron expression has no year, and a date that
    exists at all (February 29th) comes within eight years.
    """
    try:
        croniter(cron, _SOME_START).get_next(datetime)
    except CroniterBadDateError:
        return True
    return False


@trigger("manual", event_keys=_rule_keys, context=lambda event: {"input": dict(event.payload)},
         options={"manual": _prop("true: a person may run the rule by hand.", const=True)},
         explanation="a person ran the rule by hand")
def _compile_manual(config, path, comp):
    check = lambda event: _identity(event, "manual", comp.rule_id, "a manual run of this rule", path)  # noqa: E731
    return Trigger("manual", "manual run", (("manual", comp.rule_id),), Scope({"input": Root("free")}), check)


def next_fire(trig: Trigger, after: datetime) -> datetime:
    """When a schedule trigger fires next after `after` (aware, in the trigger's time zone)."""
    from .schedules import _next  # the scheduler's own ticks (daylight saving time included); schedules imports rules

    return _next(trig.cron, trig.timezone, after).astimezone(ZoneInfo(trig.timezone))
