"""The runs API: `GET /runs`, `GET /runs/<id>` (with its event's trace), `POST /runs/<id>/retry`.

Also under `/workspaces/<ws>/runs`; a run is only found through its own workspace.
"""
from __future__ import annotations

from flask import Blueprint, abort, jsonify, request

from web.openapi import check_query
from web.resources import get_redis
from web.workspace import require_admin_token
from workers.jobs import RetryRefused, retry_run
from workers.outbound import redacted
from workers.runs import list_runs, load_run, load_trace

bp = Blueprint("runs", __name__, url_prefix="/runs")
bp.before_request(require_admin_token)
bp.before_request(check_query)  # filters the document does not name are refused, not ignored


@bp.get("")
def index():
    """The newest runs first; filter with ?rule=, ?status= and ?limit= (1 to 500, checked by `check_query`)."""
    runs = list_runs(get_redis(), rule=request.args.get("rule"), status=request.args.get("status"),
                     limit=request.args.get("limit", 50, type=int))
    return jsonify(runs=[_summary(r) for r in runs])


@bp.get("/<run_id>")
def show(run_id: str):
    """One run with its steps (requests, responses, timings) and its event's explain report."""
    run = load_run(get_redis(), run_id)
    if run is None:
        abort(404, f"no run {run_id}")
    return jsonify(run=redacted(run), trace=redacted(load_trace(get_redis(), run["event_id"])))


@bp.post("/<run_id>/retry")
def retry(run_id: str):
    """Queue a failed or paused run again (`?from=start` to begin at its first step)."""
    if load_run(get_redis(), run_id) is None:  # an unknown run is not there (404), not a refusal (409)
        abort(404, f"no run {run_id}")
    try:
        run = retry_run(get_redis(), run_id, from_start=request.args.get("from") == "start")
    except RetryRefused as exc:
        abort(409, str(exc))
    return jsonify(run=_summary(run)), 202


def _summary(run: dict) -> dict:
    keys = ("id", "rule_id", "rule_version", "ruleset_version", "event_id", "source", "mode", "status", "reason",
            "created_at", "updated_at", "attempts")
    return {key: run.get(key) for key in keys} | {"steps": len(run["steps"])}
