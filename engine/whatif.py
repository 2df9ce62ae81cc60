"""What-if: logged events matched against candidate rules and the active ones, side by side. Pure.

    report = whatif(events, candidate=new_rules, active=current_rules, env=env)

Per rule it counts the events the candidate rules would newly match, the ones they would no longer
match, and the ones both match with a different plan (other steps, other values written), with a
few example event ids each. Nothing is run and nothing is written: this is what a person reads
before activating a change.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .events import Event
from .plan import Plan, evaluate
from .rules import Ruleset

EXAMPLES = 3  # example events kept per rule and kind of change
NEW, LOST, CHANGED = "new", "lost", "changed"


@dataclass
class RuleDifference:
    """How one rule's outcomes differ between the active and the candidate rules."""

    rule_id: str
    counts: dict[str, int] = field(default_factory=lambda: {NEW: 0, LOST: 0, CHANGED: 0})
    examples: dict[str, list[str]] = field(default_factory=lambda: {NEW: [], LOST: [], CHANGED: []})

    def add(self, kind: str, event_id: str) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(event_id)

    def to_dict(self) -> dict:
        return {"rule_id": self.rule_id, **self.counts, "examples": self.examples}


@dataclass
class WhatIf:
    """The differences over a set of events; `changed_events` are the ids whose outcome changes."""

    events: int = 0
    rules: dict[str, RuleDifference] = field(default_factory=dict)
    changed_events: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"events": self.events, "changed_events": self.changed_events,
                "rules": [d.to_dict() for _, d in sorted(self.rules.items())]}


def whatif(events: Iterable[tuple[Mapping[str, Any], datetime]], *, candidate: Ruleset, active: Ruleset,
           env: Mapping[str, Any]) -> WhatIf:
    """Compare outcomes for (event dict, acceptance time) pairs; each is planned at its acceptance time."""
    report = WhatIf()
    for event_dict, accepted in events:
        event = Event.from_dict(event_dict)
        report.events += 1
        before = _by_rule(evaluate(event, active, now=accepted, env=env))
        after = _by_rule(evaluate(event, candidate, now=accepted, env=env))
        changed = False
        for rule_id in sorted(before.keys() | after.keys()):
            old, new = before.get(rule_id), after.get(rule_id)
            kind = NEW if old is None else LOST if new is None else CHANGED if old != new else None
            if kind:
                report.rules.setdefault(rule_id, RuleDifference(rule_id)).add(kind, event.id)
                changed = True
        if changed:
            report.changed_events.append(event.id)
    return report


def _by_rule(plans: list[Plan]) -> dict[str, list]:
    """Each matched rule's plans in a form that compares what they would do, not their versions or keys."""
    found: dict[str, list] = {}
    for plan in plans:
        found.setdefault(plan.rule_id, []).append(_effect(plan))
    return found


def _effect(plan: Plan) -> tuple:
    ops = tuple((op.action, op.verb, repr(op.params), repr(op.args), op.deferred, repr(op.condition))
                for op in plan.operations)
    return plan.item_key, plan.mode, plan.error, plan.hold_seconds, repr(plan.for_each), ops
