"""Matching events to rules: an index by trigger keys, then trigger checks and conditions.

The index files each rule under the keys its trigger declares (source, entity set, event kind,
changed field; or source and name), so an event only touches rules that could match it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .events import Event
from .triggers import TRIGGERS, Trigger

if TYPE_CHECKING:
    from .rules import Rule, Ruleset


class RuleIndex:
    """Rules by trigger index key; `candidates(event)` are the only rules worth checking."""

    def __init__(self, rules: Iterable["Rule"]):
        self._by_key: dict[tuple, list["Rule"]] = {}
        for rule in rules:
            for key in dict.fromkeys(k for t in rule.triggers for k in t.index_keys):
                self._by_key.setdefault(key, []).append(rule)

    def candidates(self, event: Event) -> list["Rule"]:
        """Rules whose trigger keys meet the event's keys, each once, in load order."""
        kind = TRIGGERS.get(event.source)
        if kind is None:
            return []
        found: dict[str, "Rule"] = {}
        for key in kind.event_keys(event):
            for rule in self._by_key.get(key, ()):
                found.setdefault(rule.id, rule)
        return list(found.values())


@dataclass(frozen=True)
class Match:
    """Whether one rule matched an event; `reason` says why not, `hold` how long to wait first."""

    rule: "Rule"
    reason: str | None = None
    hold: timedelta | None = None
    trigger: "Trigger | None" = None  # the trigger that matched

    @property
    def matched(self) -> bool:
        return self.reason is None


def event_context(event: Event, rule: "Rule", *, now: datetime, env: Mapping[str, Any],
                  steps: Mapping[str, Any] | None = None, bindings: Mapping[str, Any] | None = None) -> dict:
    """The names conditions and templates read: the trigger's roots plus event, rule, now, env, steps."""
    context = {**with_rule(base_context(event, now=now, env=env), rule), **(bindings or {})}
    if steps is not None:
        context["steps"] = dict(steps)
    return context


def base_context(event: Event, *, now: datetime, env: Mapping[str, Any]) -> dict:
    """The rule-independent part of the context, built once per event."""
    context = TRIGGERS[event.source].context(event)
    context.update(event=event.to_dict(), now=now, env=dict(env))
    return context


def with_rule(base: Mapping[str, Any], rule: "Rule") -> dict:
    return {**base, "rule": {"id": rule.id, "version": rule.version, "description": rule.description}}


def bindings(event: Event, trigger: Trigger | None) -> dict:
    """The names only the matching trigger gives (a chat command's arguments), JSON-safe."""
    return trigger.bind(event) if trigger is not None and trigger.bind else {}


def trigger_reason(event: Event, rule: "Rule") -> str:
    """Why none of the rule's triggers matched: the one reason, or all of them."""
    reasons = [t.check(event) for t in rule.triggers]
    return reasons[0] if len(reasons) == 1 else f"when: no trigger matched ({'; '.join(reasons)})"


def match_rule(event: Event, rule: "Rule", *, now: datetime, env: Mapping[str, Any],
               base: Mapping[str, Any] | None = None) -> Match:
    """Check one rule against an event: enabled, chained, trigger, then conditions."""
    if not rule.enabled:
        return Match(rule, "rule is disabled")
    if event.chained and not rule.allow_chained:
        return Match(rule, "event came from this service's own write and allow_chained is false")
    trigger = rule.trigger_for(event)
    if trigger is None:
        return Match(rule, trigger_reason(event, rule))
    reason = None
    if rule.condition is not None:
        base = base if base is not None else base_context(event, now=now, env=env)
        reason = rule.condition({**with_rule(base, rule), **bindings(event, trigger)})
    return Match(rule, reason, trigger.hold if reason is None else None, trigger)


def match_event(event: Event, ruleset: "Ruleset", *, now: datetime, env: Mapping[str, Any]) -> list[Match]:
    """A Match for every candidate rule of the event (matched or not)."""
    candidates = ruleset.index.candidates(event)
    if not candidates:
        return []
    base = base_context(event, now=now, env=env)
    return [match_rule(event, rule, now=now, env=env, base=base) for rule in candidates]
