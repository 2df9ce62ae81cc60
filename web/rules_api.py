"""The rules API (admin token): run a rule now, and manage a workspace's uploaded rule bundles.

    POST /rules/<id>/run                 run a rule now (a manual event, or a given one; Idempotency-Key: once)
    PUT  /rules                          upload a bundle: validated, stored as a new version, activated
    GET  /rules                          the versions, newest first, and which one is active
    POST /rules/versions/<n>/activate    roll back (or forward) to a stored version

All of it also under `/workspaces/<ws>/rules`. Bundles are for workspaces whose rules are not a
folder in git; a workspace with a rules folder answers 409 to uploads (git is its history).
"""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, abort, current_app, jsonify, request
from werkzeug.exceptions import ServiceUnavailable

from engine import Event, explain
from web import bundle_check
from web.heavy import RETRY_AFTER_SECONDS, answered, compiled_rules, limited
from web.openapi import check_query, request_body
from web.resources import get_context, get_redis
from web.workspace import require_admin_token
from workers import bundles, workspaces
from workers.manual import KeyReused, ManualRunRefused, manual_event, plan_manual_run, submit_manual_run
from workers.runs import run_id

bp = Blueprint("rules_api", __name__, url_prefix="/rules")
bp.before_request(require_admin_token)
bp.before_request(check_query)

MAX_BUNDLE_BYTES = 2 * 1024 * 1024


@bp.post("/<rule_id>/run")
def run(rule_id: str):
    """Run a rule now: body `{"input": {…}}` (a manual event) or `{"event": {…}}`; `?dry_run=1` only plans."""
    body = request_body(required=False)  # `input` and `event` must be objects, an event as the document draws it
    now = datetime.now(timezone.utc)
    event = _event(body, rule_id, now)
    with answered():  # a first compile of the workspace's bundle takes a heavy request's turn: else 429
        ruleset, _ = compiled_rules()
    env = get_context().rule_env
    try:
        plan = plan_manual_run(ruleset, rule_id, event, now=now, env=env)
    except ManualRunRefused as exc:
        abort(404 if ruleset.get(rule_id) is None else 409, str(exc))
    if request.args.get("dry_run") in ("1", "true"):
        return jsonify(dry_run=True, event_id=event.id, run_id=run_id(plan),
                       report=explain(event, ruleset, now=now, env=env).to_dict())
    keyed = "event" not in body and _idempotency_key() is not None  # an event's own id is its key
    try:
        accepted = submit_manual_run(get_redis(), event, keyed=keyed)
    except KeyReused as exc:
        abort(422, str(exc))
    return jsonify(accepted=accepted, event_id=event.id, run_id=run_id(plan)), 202


MAX_IDEMPOTENCY_KEY = 255  # characters, printable ASCII: what Stripe's keys are held to


def _event(body: dict, rule_id: str, now: datetime) -> Event:
    if "event" not in body:
        return manual_event(rule_id, now=now, given=body.get("input") or {}, idempotency_key=_idempotency_key())
    try:  # the document checked the shape; what is left is a value the shape cannot say (a date, a source)
        return Event.from_dict(body["event"])
    except ValueError as exc:
        abort(422, f"event: {exc}")


def _idempotency_key() -> str | None:
    """The request's Idempotency-Key header: a client's retry of the same request is the same manual run."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not all(" " <= c <= "~" for c in key):
        abort(400, f"Idempotency-Key: 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return key


@bp.put("")
@limited  # validating a large bundle keeps a web thread waiting seconds: one at a time, else 429 (web/heavy.py)
def upload():
    """Upload a rule bundle (JSON `{"files": {…}}`, one YAML file, or a .tar.gz of a rules folder).

    422 with every error (file:line:col, as `flask rules check` prints them) when it does not
    validate; the active version then stays as it was. Validated in a child process, off this
    process's GIL (web/bundle_check.py): 413 when that takes more CPU time or memory than allowed.
    """
    _require_bundle_workspace()
    request.max_content_length = MAX_BUNDLE_BYTES
    try:
        files = bundles.parse_bundle(request.get_data(cache=False), request.content_type or "")
        checked = bundle_check.check_in_child(files, cpu_seconds=int(current_app.config["BUNDLE_CHECK_CPU_SECONDS"]))
        outcome = bundles.upload(get_redis(), workspaces.current().prefix, files, by=_who(), checked=checked)
    except bundles.RefusedBundle as exc:  # read, but holding what no rule may: answered as invalid rules are
        outcome = [exc]
    except bundles.BundleError as exc:  # not a bundle, or one without a rule
        abort(400, str(exc))
    except bundle_check.TooCostly as exc:
        abort(413, str(exc))
    except bundle_check.Unfinished as exc:
        raise ServiceUnavailable(str(exc), retry_after=RETRY_AFTER_SECONDS) from None
    if isinstance(outcome, list):
        return jsonify(error="the rule bundle is not valid; the active version is unchanged",
                       errors=[str(e) for e in outcome]), 422
    return jsonify(version=outcome.to_dict(), active=outcome.number), 201


@bp.get("")
def versions():
    """The stored versions of the workspace's rule bundle, newest first."""
    folder, prefix = workspaces.current().rules_path, workspaces.current().prefix
    if folder is not None:
        return jsonify(source="folder", folder=folder, active=get_context().rules.current()[1], versions=[])
    number = bundles.active_number(get_redis(), prefix)  # not the cached rule set: the pointer as it is now
    return jsonify(source="bundles", folder=None, active=f"v{number}" if number else None,
                   versions=[v.to_dict() for v in bundles.versions(get_redis(), prefix)])


@bp.post("/versions/<number>/activate")
def activate(number: str):
    """Make a stored version the active one (a rollback, or back forward)."""
    _require_bundle_workspace()
    try:
        if not (number.isascii() and number.isdigit()):  # int() also reads "١", "１", " 1" and "+1" as 1
            raise ValueError("a version number is written in the digits 0-9")
        version = bundles.activate(get_redis(), workspaces.current().prefix, int(number))
    except (ValueError, bundles.UnknownVersion) as exc:
        abort(404, f"no rule bundle version {number!r}: {exc}")
    return jsonify(version=version.to_dict(), active=version.number)


def _require_bundle_workspace() -> None:
    path = workspaces.current().rules_path
    if path is not None:
        abort(409, f"the rules of workspace {workspaces.current().name!r} come from the folder {path} (git); "
                   "change them there")


def _who() -> str:
    """Who uploaded: the operator or the workspace admin (never the token itself)."""
    return "admin" if request.headers.get("Authorization") else "anonymous"
