"""Explanations: for one event, which rules were candidates, which matched and why not."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping

from .durations import format_duration
from .events import Event
from .match import match_event
from .plan import Plan, plan_match

if TYPE_CHECKING:
    from .rules import Ruleset


@dataclass(frozen=True)
class RuleOutcome:
    """One candidate rule: matched or the reason it did not, and its plan (or planning error)."""

    rule_id: str
    trigger: str
    reason: str | None
    hold: str | None = None
    plan: Plan | None = None
    error: str | None = None


@dataclass(frozen=True)
class Explanation:
    """The whole answer to "what would this event do?"."""

    event: Event
    outcomes: tuple[RuleOutcome, ...]
    not_candidates: int
    skipped: tuple[str, ...] = field(default=())
    plans: tuple[Plan, ...] = field(default=(), compare=False)  # what `evaluate` returns, for the worker

    def lines(self) -> list[str]:
        """Human-readable report, one fact per line."""
        e = self.event
        about = f" {e.entity_set}({e.key})" if e.entity_set else ""
        out = [f"event {e.id}: {e.source} {e.kind}{about} at {e.occurred_at.isoformat()}"]
        if e.changes:
            out.append("  changes: " + ", ".join(f"{f} {a!r} → {b!r}" for f, (a, b) in e.changes.items()))
        out.append(f"{len(self.outcomes)} candidate rule(s); {self.not_candidates} other rule(s) "
                   "not triggered by this kind of event")
        for o in self.outcomes:
            out += _outcome_lines(o)
        out += [f"skipped (did not load): {s}" for s in self.skipped]
        return out

    def to_dict(self) -> dict:
        """JSON-safe form for `--json`."""
        return {
            "event": self.event.to_dict(), "not_candidates": self.not_candidates, "skipped": list(self.skipped),
            "rules": [{"rule": o.rule_id, "trigger": o.trigger, "matched": o.reason is None, "reason": o.reason,
                       "hold": o.hold, "error": o.error, "plan": o.plan.to_dict() if o.plan else None}
                      for o in self.outcomes],
        }


def _outcome_lines(o: RuleOutcome) -> list[str]:
    if o.reason is not None:
        return [f"✗ {o.rule_id} [{o.trigger}]: {o.reason}"]
    head = f"✓ {o.rule_id} [{o.trigger}]: matched"
    if o.hold:
        head += f"; held {o.hold}, then re-checked before it runs"
    if o.error:
        return [head, f"    error: {o.error}"]
    lines = [head + (f" (mode {o.plan.mode})" if o.plan.mode != "live" else "")]
    if o.plan.for_each:
        grouped = f", grouped by {o.plan.for_each['group_by']}" if o.plan.for_each["group_by"] else ""
        lines.append(f"    for each: query {json.dumps(o.plan.for_each['query'], ensure_ascii=False)}{grouped}")
    for op in o.plan.operations:
        detail = json.dumps(op.params if op.params is not None else op.args, ensure_ascii=False)
        if op.params is None:
            waits = ([f"steps {', '.join(op.needs)}"] if op.needs else []) + (["its item"] if o.plan.for_each else [])
            detail = f"deferred until {' and '.join(waits) or 'it runs'}: {detail}"
        lines.append(f"    {op.step}. {op.step_id}: {op.action} → {op.verb} {detail}")
    return lines


def explain(event: Event, ruleset: "Ruleset", *, now: datetime, env: Mapping[str, Any],
            defer_env: bool = False) -> Explanation:
    """Match every candidate rule, planning the ones that matched, and say why the rest did not."""
    outcomes, plans = [], []
    matches = match_event(event, ruleset, now=now, env=env)
    for m in matches:
        hold = format_duration(m.hold) if m.hold else None
        plan = error = None
        if m.matched:
            planned = plan_match(event, m, now=now, env=env, defer_env=defer_env)
            plans.append(planned)
            plan, error = (None, planned.error) if planned.error else (planned, None)
        outcomes.append(RuleOutcome(m.rule.id, m.rule.summary, m.reason, hold, plan, error))
    skipped = tuple(e.format() for e in ruleset.errors)
    return Explanation(event, tuple(outcomes), len(ruleset.rules) - len(matches), skipped, tuple(plans))
