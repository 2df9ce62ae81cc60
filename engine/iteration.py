"""`for_each`: a rule's steps run once per entity, or per group of entities, of a query made at run time.

    for_each:
      inloox.query: Task
      filter: "IsDone eq false and EndDateTime lt {{ now | odata }}"
      select: [TaskItemId, Name, ContactId]
      group_by: ContactId      # optional: one item per distinct value

The steps read `item`: the entity itself, or `{key, entities}` when grouped. The engine only
describes the query (`Plan.for_each`, rendered like any step, so filters keep the `| odata`
rule); the worker runs it when the run executes and calls `iterate(plan, rows)`, which gives one
plan per item with `item` bound and idempotency keys of (event, rule, version, step, item key).
"""
from __future__ import annotations

import reprlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from inloox.metadata import load_metadata

from .edm import key_problem
from .errors import did_you_mean
from .scope import Compilation, Root

if TYPE_CHECKING:
    from .plan import Operation, Plan
    from .rules import Step

QUERY = "inloox.query"
STEP_ID = "for_each"  # the query's step id in a run's trace and outputs
GROUP_BY = {"type": "string", "minLength": 1,
            "description": "A field of the queried entities: one item per distinct value, with item.key "
                           "(the value) and item.entities (the rows)."}


@dataclass(frozen=True)
class ForEach:
    """A compiled for_each: its query (an inloox.query step), the grouping field and the set's key field."""

    query: "Step"
    group_by: str | None
    key_field: str

    def root(self) -> Root:
        """What `item` is to the steps' templates: an entity of the set, or free-form groups."""
        return Root("free") if self.group_by else Root("entity", self.query.args[QUERY])


def compile_for_each(config: Mapping, comp: Compilation, compile_step) -> ForEach:
    """Check and compile a rule's `for_each:`; `compile_step` is the rules module's step compiler."""
    path = ("for_each",)
    query = {k: v for k, v in config.items() if k != "group_by"}
    step = compile_step(-1, STEP_ID, QUERY, query, path, comp)
    meta = load_metadata().entity_set(query[QUERY])
    group_by = config.get("group_by")
    if group_by is not None and meta.property(group_by) is None and not meta.open_type:
        comp.fail(path + ("group_by",), f"{meta.name} has no field {group_by!r}",
                  hint=did_you_mean(group_by, meta.properties))
    if len(meta.key) != 1:
        comp.fail(path + (QUERY,), f"{meta.name} has a compound key; for_each needs entities with one key field")
    key_field = meta.key[0]
    if "select" in step.args:  # the item key and the group need their fields, asked for or not
        wanted = [key_field] + ([group_by] if group_by else [])
        select = list(step.args["select"]) + [f for f in wanted if f not in step.args["select"]]
        step = replace(step, args={**step.args, "select": select})
    return ForEach(step, group_by, key_field)


def describe(for_each: ForEach, query_params: dict) -> dict:
    """The plan's for_each: the rendered query's params, the grouping field and the key field."""
    return {"query": query_params, "group_by": for_each.group_by, "key": for_each.key_field}


def items(rows: Iterable[Mapping], spec: Mapping) -> list[tuple[str, Any]]:
    """(item key, item) per entity, or per group in order of first appearance (key "null" for none)."""
    rows = list(rows)
    if not spec.get("group_by"):
        return [(str(row[spec["key"]]), dict(row)) for row in rows]
    groups: dict[str, dict] = {}
    for row in rows:
        value = row.get(spec["group_by"])
        group = groups.setdefault(_text(value), {"key": value, "entities": []})
        group["entities"].append(dict(row))
    return list(groups.items())


def unkeyed(rows: Iterable[Mapping], spec: Mapping) -> str:
    """Why a row of the query's answer can be no item ("" when every row can).

    Ungrouped, an item is its entity's key: the key names its run and its writes' idempotency keys, so
    a row without one (InLoox's answer at fault: the key is always selected) could never be written to
    exactly once. Groups need no key (an entity without the grouped field is in the null group).
    """
    if spec.get("group_by"):
        return ""
    for number, row in enumerate(rows, start=1):
        problem = key_problem(row.get(spec["key"]))
        if problem == "missing":
            return f"row {number} of the answer has no key {spec['key']}: {reprlib.repr(dict(row))}"
        if problem:
            return f"row {number} of the answer has {spec['key']} {problem}"
    return ""


def _text(value: Any) -> str:
    return "null" if value is None else str(value)


def iterate(plan: "Plan", rows: Iterable[Mapping]) -> list["Plan"]:
    """One plan per item of the query's rows: `item` bound, keys distinct per item, no for_each left."""
    from .plan import idempotency_key, planned_rule  # plan imports this module

    rule = planned_rule(plan)
    # The query's run already waited out the hold and counted against the rate limit: its items do neither.
    return [replace(plan, for_each=None, item_key=key, hold_seconds=None, rate_limit=None,
                    bindings={**plan.bindings, "item": item},
                    operations=tuple(replace(op, idempotency_key=idempotency_key(plan.event_id, rule, op.step, key))
                                     for op in plan.operations))
            for key, item in items(rows, plan.for_each)]


def query_operation(plan: "Plan") -> "Operation":
    """The for_each query as an operation the worker runs (a read: its key only names it)."""
    from .plan import Operation, idempotency_key, planned_rule

    key = idempotency_key(plan.event_id, planned_rule(plan), -1)
    return Operation(-1, STEP_ID, QUERY, "query", key, dict(plan.for_each["query"]))
