"""Admin endpoints under /_sandbox/ (no token; the server binds 127.0.0.1): faults, reset, log, notes.

POST/GET/DELETE /_sandbox/faults, DELETE /_sandbox/faults/<id>, POST /_sandbox/reset,
GET/DELETE /_sandbox/requests, GET /_sandbox/notes[?object_id=], GET /_sandbox/health,
POST /_sandbox/users (another person with a token of their own), PUT /_sandbox/paging (keyset or skip),
PUT /_sandbox/clock (frozen: writes share one change time).
"""
from __future__ import annotations

import json

from flask import Blueprint, Response, request

from . import bodies, seed
from .errors import BadRequest, NotFound
from .odata import json_response
from .runtime import get_sandbox

bp = Blueprint("admin", __name__, url_prefix="/_sandbox")


def _body() -> dict:
    raw = request.get_data()
    if not raw:
        return {}
    body = bodies.parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    return body


@bp.get("/health")
def health():
    """Liveness for process waiters."""
    return json_response({"status": "ok"})


@bp.post("/faults")
def add_fault():
    """Add a fault rule; 201 with its id."""
    rule = get_sandbox().faults.add(_body())
    return json_response({"id": rule.id, **rule.to_dict()}, 201)


@bp.get("/faults")
def list_faults():
    """The active fault rules, with their remaining counts."""
    return json_response({"value": get_sandbox().faults.list()})


@bp.delete("/faults")
def clear_faults():
    """Remove every fault rule."""
    get_sandbox().faults.clear()
    return Response(status=204)


@bp.delete("/faults/<int:rule_id>")
def remove_fault(rule_id: int):
    """Remove one fault rule."""
    if not get_sandbox().faults.remove(rule_id):
        raise NotFound(f"No fault rule {rule_id}")
    return Response(status=204)


@bp.post("/reset")
def reset():
    """Clear data, faults, request log and notes, then load the seed ('empty' by default)."""
    seed = _body().get("seed", "empty")
    get_sandbox().reset(seed)
    return json_response({"seed": seed})


@bp.put("/paging")
def set_paging():
    """How nextLinks go on: {"by": "keyset"} (the default, back at each reset) or {"by": "skip"}."""
    by = _body().get("by")
    if by not in ("keyset", "skip"):
        raise BadRequest("'by' must be \"keyset\" or \"skip\"", target="by")
    get_sandbox().paging["by"] = by
    return json_response({"by": by})


@bp.put("/clock")
def set_clock():
    """{"frozen": true}: every write gets one change time, as every row of one UPDATE statement at InLoox (a bulk
    edit, an import) does, until {"frozen": false} (the default, back at each reset)."""
    frozen = _body().get("frozen")
    if not isinstance(frozen, bool):
        raise BadRequest("'frozen' must be true or false", target="frozen")
    get_sandbox().store.clock.freeze(frozen)
    return json_response({"frozen": frozen})


@bp.post("/users")
def add_user():
    """Another person with their own token, so tests can tell their writes from the engine's.

    Body `{"token": "...", "first": "Ann", "last": "Other", "email": "ann@example.com"}`; 201 with the
    ContactId. Writes made with that token carry it as *_ChangedByContactId. Reset removes the token.
    """
    body = _body()
    missing = [f for f in ("token", "first", "last") if not isinstance(body.get(f), str) or not body.get(f)]
    if missing:
        raise BadRequest(f"Missing or empty field(s): {', '.join(missing)}", target=missing[0])
    sandbox = get_sandbox()
    contact_id = seed.add_person(sandbox.store, body["first"], body["last"], body.get("email") or "")
    sandbox.users[body["token"]] = contact_id
    return json_response({"ContactId": contact_id}, 201)


@bp.get("/requests")
def list_requests():
    """Every request to /api/odata/ since the last reset or clear, oldest first."""
    return json_response({"value": get_sandbox().log.entries()})


@bp.delete("/requests")
def clear_requests():
    """Forget the logged requests."""
    get_sandbox().log.clear()
    return Response(status=204)


@bp.get("/notes")
def notes():
    """Notes added with AddNote, oldest first; `?object_id=` narrows to one entity."""
    sql, params = "SELECT * FROM _note", []
    if request.args.get("object_id"):
        sql, params = sql + " WHERE ObjectId = ?", [request.args["object_id"].lower()]
    with get_sandbox().store.reading() as conn:
        cursor = conn.execute(sql + " ORDER BY CreatedAt, rowid", params)
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    for row in rows:
        row["NotificationContactIds"] = json.loads(row["NotificationContactIds"] or "[]")
    return json_response({"value": rows})
