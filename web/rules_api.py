"""The rules API: `POST /rules/<id>/run` runs a rule now (admin token, like the runs API)."""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, abort, current_app, jsonify, request

from engine import Event, explain, load_rules
from web.resources import get_redis
from web.runs import require_admin_token
from workers.manual import ManualRunRefused, manual_event, plan_manual_run, submit_manual_run
from workers.runs import run_id
from workers.worker_context import rule_env

bp = Blueprint("rules_api", __name__, url_prefix="/rules")
bp.before_request(require_admin_token)


@bp.post("/<rule_id>/run")
def run(rule_id: str):
    """Run a rule now: body `{"input": {…}}` (a manual event) or `{"event": {…}}`; `?dry_run=1` only plans."""
    body = request.get_json(silent=True) or {}
    now = datetime.now(timezone.utc)
    event = _event(body, rule_id, now)
    ruleset, env = load_rules(current_app.config["RULES_PATH"]), rule_env(current_app.config)
    try:
        plan = plan_manual_run(ruleset, rule_id, event, now=now, env=env)
    except ManualRunRefused as exc:
        abort(404 if ruleset.get(rule_id) is None else 409, str(exc))
    if request.args.get("dry_run") in ("1", "true"):
        return jsonify(dry_run=True, event_id=event.id, run_id=run_id(plan),
                       report=explain(event, ruleset, now=now, env=env).to_dict())
    accepted = submit_manual_run(get_redis(), event)
    return jsonify(accepted=accepted, event_id=event.id, run_id=run_id(plan)), 202


def _event(body: dict, rule_id: str, now: datetime) -> Event:
    if "event" not in body:
        return manual_event(rule_id, now=now, given=body.get("input") or {})
    try:
        return Event.from_dict(body["event"])
    except (KeyError, TypeError, ValueError) as exc:
        abort(400, f"not an event: {exc}")
