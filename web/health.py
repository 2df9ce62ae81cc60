"""Liveness and readiness: `/healthz` (the process answers) and `/readyz` (its dependencies do)."""
from __future__ import annotations

import redis
from flask import Blueprint, jsonify

from inloox import InLooxError
from web.resources import get_inloox, get_redis

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process is up; checks nothing else, so a slow dependency never restarts us."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Redis and InLoox reachable: 200 with each check, or 503 naming the failing one."""
    checks = {"redis": _check_redis(), "inloox": _check_inloox()}
    ready = all(check["ok"] for check in checks.values())
    return jsonify(status="ready" if ready else "not ready", checks=checks), 200 if ready else 503


def _check_redis() -> dict:
    try:
        get_redis().ping()
    except redis.RedisError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True}


def _check_inloox() -> dict:
    # UserInfo/Me() proves both that InLoox answers and that the token is accepted.
    try:
        me = get_inloox().me()
    except InLooxError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "user": me.get("DisplayName") or me.get("ContactId")}
