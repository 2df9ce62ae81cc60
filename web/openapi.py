"""`GET /openapi.json`: the OpenAPI document of our own endpoints (kept in `schemas/openapi.json`)."""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from flask import Blueprint, jsonify

bp = Blueprint("openapi", __name__)

SPEC_PATH = Path(__file__).resolve().parent.parent / "schemas" / "openapi.json"


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 document describing hooks, chat, runs, rules, health and metrics."""
    return jsonify(load_spec())


@cache
def load_spec() -> dict:
    """The document, read once per process."""
    return json.loads(SPEC_PATH.read_text(encoding="utf-8"))
