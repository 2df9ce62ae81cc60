"""Plans: what a matched rule will do for one event, as primitive Operations.

Values that depend only on the event are rendered here; values that read `steps.<id>` are kept
as template source and rendered by `render_deferred` once the worker has those outputs.
"""
from __future__ import annotations

import copy
import hashlib
import math
from collections import abc
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Mapping

from .actions import ACTIONS
from .durations import parse_duration
from .conditions import Checker, compile_condition
from .documents import Document
from .errors import StepSkipped, TemplateError
from .scope import Compilation, Scope
from .events import Event
from .iteration import describe
from .match import bindings, event_context, match_event
from .templates import compile_template, isoformat, render

if TYPE_CHECKING:
    from .rules import Rule, Ruleset, Step


@dataclass(frozen=True)
class Operation:
    """One primitive call (verb + params) with its idempotency key; params is None while deferred."""

    step: int
    step_id: str
    action: str
    verb: str
    idempotency_key: str
    params: dict | None = field(default=None, hash=False)
    args: dict = field(default_factory=dict, hash=False)
    deferred: tuple[tuple[tuple, str], ...] = ()  # (path inside args, template source)
    needs: tuple[str, ...] = ()
    condition: Any = None  # the step's `if:` as written; render_deferred checks it (raises StepSkipped)

    def to_dict(self) -> dict:
        # Field by field rather than dataclasses.asdict, whose deep copies cost more than the rest
        # of planning; dicts are copied one level down, and no caller changes them deeper.
        return {"step": self.step, "step_id": self.step_id, "action": self.action, "verb": self.verb,
                "idempotency_key": self.idempotency_key,
                "params": dict(self.params) if self.params is not None else None, "args": dict(self.args),
                "deferred": [[list(p), s] for p, s in self.deferred], "needs": list(self.needs),
                "condition": self.condition}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Operation":
        return cls(**{**d, "deferred": tuple((tuple(p), s) for p, s in d.get("deferred", ())),
                      "needs": tuple(d.get("needs", ()))})


@dataclass(frozen=True)
class Plan:
    """A matched rule's operations for one event, plus the run policy the pipeline enforces."""

    rule_id: str
    rule_version: str
    event_id: str
    event: dict = field(hash=False)
    planned_at: str = ""  # the `now` the plan was made with, ISO UTC
    mode: str = "live"
    allow_chained: bool = False
    hold_seconds: float | None = None  # `for:` — re-check the trigger after this long, then run
    retry: dict = field(default_factory=dict, hash=False)
    concurrency: dict | None = field(default=None, hash=False)  # {"key": rendered, "limit": n}
    bindings: dict = field(default_factory=dict, hash=False)  # names the matching trigger gave (chat.args)
    rate_limit: dict | None = field(default=None, hash=False)  # {"max": n, "per_seconds": s}
    operations: tuple[Operation, ...] = ()
    error: str | None = None  # set when the rule matched but could not be planned
    for_each: dict | None = field(default=None, hash=False)  # the query whose items the steps run for
    item_key: str | None = None  # set on the plan of one for_each item (see engine.iteration)

    def to_dict(self) -> dict:
        """JSON-safe form (RQ job argument); from_dict reverses it."""
        # Field by field, as Operation.to_dict: dataclasses.fields() and a getattr each were ~25,000 of its ~44,000
        # instructions, twice an event: 1.5 % of a busy worker's (3.67 M -> 3.61 M, bench/worker_cpu.py --instructions).
        return {"rule_id": self.rule_id, "rule_version": self.rule_version, "event_id": self.event_id,
                "event": _copied(self.event), "planned_at": self.planned_at, "mode": self.mode,
                "allow_chained": self.allow_chained, "hold_seconds": self.hold_seconds, "retry": _copied(self.retry),
                "concurrency": _copied(self.concurrency), "bindings": _copied(self.bindings),
                "rate_limit": _copied(self.rate_limit), "error": self.error, "for_each": _copied(self.for_each),
                "item_key": self.item_key, "operations": [op.to_dict() for op in self.operations]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Plan":
        ops = tuple(Operation.from_dict(o) for o in d.get("operations", ()))
        return cls(**{**d, "operations": ops})


def _copied(value):
    return dict(value) if isinstance(value, dict) else value


def idempotency_key(event_id: str, rule: "Rule", index: int, item: str | None = None) -> str:
    """Deterministic key of one operation: same event, rule version, step (and for_each item) → same key."""
    text = f"{event_id}\n{rule.id}\n{rule.version}\n{index}" + (f"\n{item}" if item is not None else "")
    return "op_" + hashlib.sha256(text.encode()).hexdigest()[:32]


def evaluate(event: Event, ruleset: "Ruleset", *, now: datetime, env: Mapping[str, Any],
             defer_env: bool = False) -> list[Plan]:
    """Plans of every rule the event matches; a rule whose templates fail gets a Plan with `error`.

    `defer_env`: leave templates that read `env` for the worker to render when the step runs
    (`render_deferred`), so that plans kept in run records never hold those values (a channel
    URL with its token). People's previews (explain, fixtures) render them in place.
    """
    return [plan_match(event, match, now=now, env=env, defer_env=defer_env)
            for match in match_event(event, ruleset, now=now, env=env) if match.matched]


def plan_match(event: Event, match, *, now: datetime, env: Mapping[str, Any], defer_env: bool = False) -> Plan:
    """The Plan of a matched rule; when its templates fail, a Plan with `error` (it runs nothing)."""
    try:
        return plan_rule(event, match.rule, now=now, env=env, defer_env=defer_env)
    except TemplateError as exc:
        return _policy(event, match.rule, match.trigger, now, {}, error=str(exc))


plan_event = evaluate


def plan_rule(event: Event, rule: "Rule", *, now: datetime, env: Mapping[str, Any], defer_env: bool = False) -> Plan:
    """The Plan of one (already matched) rule; raises TemplateError naming rule, step and variable."""
    trigger = rule.trigger_for(event)
    bound = bindings(event, trigger)
    context = event_context(event, rule, now=now, env=env, bindings=bound)
    ops = tuple(_plan_step(event, rule, step, context, defer_env) for step in rule.steps)
    for_each = None
    if rule.for_each:
        query = _plan_step(event, rule, rule.for_each.query, context)  # its params describe the items now
        for_each = describe(rule.for_each, query.params)
    return _policy(event, rule, trigger, now, context, operations=ops, bindings=bound, for_each=for_each)


def _policy(event: Event, rule: "Rule", trigger, now: datetime, context: dict, *, error: str | None = None,
            **planned) -> Plan:
    """The rule's Plan for the event: its policy, with the fields `plan_rule` planned (`planned`).

    Given here rather than put in by `dataclasses.replace` afterwards, which goes through every field again: that
    and the one `_plan_step` saves the same way were 2.3 % of a busy worker's instructions per event (3.76 M ->
    3.67 M, bench/worker_cpu.py --instructions)."""
    concurrency = None
    if rule.concurrency and error is None:
        key = render(rule.concurrency_key, context, rule_id=rule.id, step="concurrency.key") \
            if rule.concurrency_key else ""
        concurrency = {"key": f"{rule.id}:{key}", "limit": rule.concurrency["limit"]}
    rate = rule.rate_limit
    retry = dict(rule.retry)
    if "backoff" in retry:
        retry["backoff"] = parse_duration(retry["backoff"]).total_seconds()
    return Plan(
        rule_id=rule.id, rule_version=rule.version, event_id=event.id, event=event.to_dict(),
        planned_at=isoformat(now), mode=rule.mode, allow_chained=rule.allow_chained,
        hold_seconds=trigger.hold.total_seconds() if trigger and trigger.hold else None,
        retry=retry, concurrency=concurrency,
        rate_limit={"max": rate["max"], "per_seconds": parse_duration(rate["per"]).total_seconds()} if rate else None,
        error=error, **planned,
    )


def _step_label(step: "Step") -> str:
    return f"step {step.index} ({step.id})"


def _plan_step(event: Event, rule: "Rule", step: "Step", context: dict, defer_env: bool = False) -> Operation:
    args = _fillable(step.args)
    deferred = []
    for path, template in step.templates:
        # Known once the step runs (or its item is known); `env` too when the worker fills it in.
        if template.steps or "item" in template.variables or (defer_env and "env" in template.variables):
            deferred.append((path, template.source))
            continue
        value = render(template, context, rule_id=rule.id, step=_step_label(step))
        _set(args, path, jsonable(value, rule.id, _step_label(step)))
    verb = ACTIONS[step.action].verb
    key = idempotency_key(event.id, rule, step.index)
    # Built before the Operation is made, rather than put in by `dataclasses.replace` afterwards (see `_policy`).
    params = None if deferred or step.condition is not None else _build(step.action, args, rule.id, _step_label(step))
    return Operation(step.index, step.id, step.action, verb, key, params, args, tuple(deferred), step.needs,
                     step.condition)


_PLAIN = frozenset({str, int, float, bool})


def _fillable(value: Any) -> Any:
    """A copy of a step's arguments to fill in: the dicts and lists of YAML copied, text and numbers
    shared (they cannot change), anything else deep-copied (copy.deepcopy was an eighth of a plan).
    Not `_copied` above, which Plan.to_dict uses: a shallow copy of each field is all it needs."""
    kind = type(value)
    if kind is dict:
        return {key: _fillable(item) for key, item in value.items()}
    if kind is list:
        return [_fillable(item) for item in value]
    if value is None or kind in _PLAIN:
        return value
    return copy.deepcopy(value)


def render_deferred(plan: Plan, operation: Operation, steps_outputs: Mapping[str, Any], *,
                    env: Mapping[str, Any]) -> Operation:
    """The operation with its `steps.*` templates rendered and params built (worker side).

    Raises StepSkipped (a TemplateError) when the step's own `if:` does not hold: the step must not run.
    """
    if not operation.deferred and operation.condition is None:
        return operation
    event = Event.from_dict(plan.event)
    rule = planned_rule(plan)
    now = datetime.fromisoformat(plan.planned_at.replace("Z", "+00:00"))
    context = event_context(event, rule, now=now, env=env, steps=steps_outputs, bindings=plan.bindings)
    args = copy.deepcopy(operation.args)
    label = f"step {operation.step} ({operation.step_id})"
    reason = _step_condition(operation, plan.rule_id)(context)
    if reason:
        raise StepSkipped(f"skipped: {reason}", rule_id=plan.rule_id, step=label)
    for path, source in operation.deferred:
        value = render(compile_template(source), context, rule_id=plan.rule_id, step=label)
        _set(args, path, jsonable(value, plan.rule_id, label))
    return replace(operation, args=args, deferred=(), params=_build(operation.action, args, plan.rule_id, label))


def _step_condition(operation: Operation, rule_id: str) -> Checker:
    """The step's `if:` compiled again on the worker; it was checked when the rule loaded."""
    if operation.condition is None:
        return lambda context: None
    comp = Compilation(Document("", operation.condition), Scope(open=True, in_step=True), rule_id)
    return compile_condition(operation.condition, ("then", operation.step, "if"), comp)


@dataclass(frozen=True)
class _PlannedRule:
    """The bits of a rule a plan remembers, enough to rebuild the template context."""

    id: str
    version: str
    description: str = ""


def planned_rule(plan: Plan) -> _PlannedRule:
    """The rule as the plan remembers it (id and version)."""
    return _PlannedRule(plan.rule_id, plan.rule_version)


def _build(action: str, args: dict, rule_id: str, step: str) -> dict:
    """The params of a step's action from its arguments; `step` names it in the error."""
    try:
        return ACTIONS[action].build(args)
    except (KeyError, ValueError, TypeError) as exc:
        raise TemplateError(f"{action}: {exc}", rule_id=rule_id, step=step) from exc


def _set(tree: Any, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        tree = tree[part]
    tree[path[-1]] = value


def jsonable(value: Any, rule_id: str, step: str) -> Any:
    """A rendered value in JSON form: date-times as ISO UTC, durations as seconds."""
    if value is None or type(value) in _PLAIN:  # most values: first, before the checks for the others
        if type(value) is float and not math.isfinite(value):
            # Not JSON, and a run's record would keep it as null: a retry would write null to InLoox.
            raise TemplateError(f"rendered {value}, which is not a JSON number", rule_id=rule_id, step=step)
        return value
    if isinstance(value, datetime):
        try:
            return isoformat(value)
        except ValueError as exc:  # one without an offset (`now.replace(tzinfo=None)`) names no instant
            raise TemplateError(str(exc), rule_id=rule_id, step=step) from exc
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v, rule_id, step) for v in value]
    if isinstance(value, abc.Mapping):
        return {str(k): jsonable(v, rule_id, step) for k, v in value.items()}
    raise TemplateError(f"rendered a {type(value).__name__}, which is not JSON", rule_id=rule_id, step=step)
