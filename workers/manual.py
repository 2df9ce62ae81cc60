"""Manual runs: a person runs one rule now (`flask rules run`, `POST /rules/<id>/run`).

The run starts as every run does: the event (a `manual` event naming the rule, or one the person
gives) is handed to `workers.intake.submit_event`, and a worker matches and runs it. Before that,
the rule is matched and planned here, so that a rule that would not run is refused with its reason
and a dry run can show the plan without writing anything.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Any, Mapping

import redis

from engine import Event, Plan, Ruleset, TemplateError, plan_rule
from engine.errors import did_you_mean
from engine.match import match_rule
from workers.intake import submit_event
from workers.workspaces import key

DEDUP_TTL = 86400  # a given event submitted again within a day is the same manual run


class ManualRunRefused(Exception):
    """The rule cannot run now (unknown, does not match the event, or cannot be planned); says why."""


class KeyReused(Exception):
    """An Idempotency-Key sent again for the rule with another input than it was first used with; says so."""


def manual_event(rule_id: str, *, now: datetime, given: Mapping[str, Any] | None = None,
                 idempotency_key: str | None = None) -> Event:
    """A new `manual` event for the rule (the rule reads `given` as `input`): a new id each time, or, with the
    client's `idempotency_key`, the same id for the same key (a request sent again is the same event, run once
    within DEDUP_TTL; Stripe's and Temporal Cloud's way of making a retried request safe)."""
    tail = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32] if idempotency_key else uuid.uuid4().hex
    return Event("manual", rule_id, now, id=f"manual:{rule_id}:{tail}", payload=dict(given or {}))


def plan_manual_run(ruleset: Ruleset, rule_id: str, event: Event, *, now: datetime, env: Mapping[str, Any]) -> Plan:
    """The plan the rule would make for the event; raises ManualRunRefused saying why there is none."""
    rule = ruleset.get(rule_id)
    if rule is None:
        raise ManualRunRefused(f"no rule {rule_id!r}. {did_you_mean(rule_id, ruleset.rules)}".strip())
    match = match_rule(event, rule, now=now, env=env)
    if not match.matched:
        hint = " (add `- manual: true` to its when: to run it by hand)" \
            if event.source == "manual" and not any(t.kind == "manual" for t in rule.triggers) else ""
        raise ManualRunRefused(f"{rule_id} does not run for this event: {match.reason}{hint}")
    try:
        return plan_rule(event, rule, now=now, env=env, defer_env=True)  # env is the worker's to fill in
    except TemplateError as exc:
        raise ManualRunRefused(f"{rule_id} cannot be planned: {exc}") from exc


def submit_manual_run(connection: redis.Redis, event: Event, *, keyed: bool = False) -> bool:
    """Hand the event to the intake; False when this very event was submitted before.

    `keyed`: the event's id comes from a client's Idempotency-Key (`manual_event`); raises KeyReused when
    the key was first used with another input, which this event then does not replace.
    """
    digest = hashlib.sha256(event.id.encode()).hexdigest()[:32]
    dedup_key = key(f"manual:seen:{digest}")
    if not keyed:
        return submit_event(connection, event, dedup_key=dedup_key, dedup_ttl=DEDUP_TTL)
    # The key's first input, kept beside its claim (written in the same MULTI, the first writer's kept): a
    # duplicate was answered as one whatever its input, and a request that was not a retry went unrun unsaid.
    given, fingerprint = key(f"manual:given:{digest}"), _fingerprint(event.payload)
    accepted = submit_event(connection, event, dedup_key=dedup_key, dedup_ttl=DEDUP_TTL,
                            also=lambda pipe: pipe.set(given, fingerprint, nx=True, ex=DEDUP_TTL))
    if not accepted and connection.get(given) not in (None, fingerprint.encode()):  # None: the claim just expired
        raise KeyReused(f"this Idempotency-Key was used for rule {event.kind!r} with another input: a key "
                        "stands for one request, sent again unchanged; give a new request a new key")
    return accepted


def _fingerprint(given: Mapping[str, Any]) -> str:
    """A digest of a manual event's input, the same for the same JSON whatever its keys' order."""
    text = json.dumps(given, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]
