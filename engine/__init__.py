"""The rule engine: pure functions from rule files and events to plans. No I/O but reading rules.

    ruleset = load_rules("rules/")
    plans = evaluate(event, ruleset, now=now, env=env)   # [Plan], each with Operations
    report = explain(event, ruleset, now=now, env=env)   # why each candidate did or didn't match
"""
from .errors import EngineError, RuleError, RulesetError, TemplateError
from .events import Event
from .explain import Explanation, explain
from .diff import diff_snapshots
from .match import Match, match_event
from .plan import Operation, Plan, evaluate, plan_event, plan_rule, render_deferred
from .rules import Rule, Ruleset, load_rules, load_texts
from .schema import rule_schema

__all__ = [
    "EngineError", "Event", "Explanation", "Match", "Operation", "Plan", "Rule", "RuleError",
    "Ruleset", "RulesetError", "TemplateError", "diff_snapshots", "evaluate", "explain",
    "load_rules", "load_texts", "match_event", "plan_event", "plan_rule", "render_deferred", "rule_schema",
]
