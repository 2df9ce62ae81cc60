"""`GET /openapi.json`: the OpenAPI document of our own endpoints (kept in `schemas/openapi.json`).

The workspace routes are written once in the file, at their default-workspace path; their
`/workspaces/{ws}/…` twins are added here, so the two can never drift apart.
"""
from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

from flask import Blueprint, jsonify

bp = Blueprint("openapi", __name__)

SPEC_PATH = Path(__file__).resolve().parent.parent / "schemas" / "openapi.json"
WORKSPACE_ROUTES = ("/hooks/", "/chat/", "/runs", "/events", "/subscriptions", "/rules")  # those web.workspace.register serves twice
WORKSPACE_PARAMETER = {"name": "ws", "in": "path", "required": True, "schema": {"type": "string"},
                       "description": "The workspace (see docs/deploy.md)."}


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 document describing hooks, chat, runs, rules, health and metrics."""
    return jsonify(load_spec())


@cache
def load_spec() -> dict:
    """The document, read once per process, with the per-workspace twins of the workspace routes."""
    spec = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    for path, operations in list(spec["paths"].items()):
        if path.startswith(WORKSPACE_ROUTES):
            spec["paths"]["/workspaces/{ws}" + path] = _in_workspace(operations)
    return spec


def _in_workspace(operations: dict) -> dict:
    twin = copy.deepcopy(operations)
    for operation in twin.values():
        operation["parameters"] = [WORKSPACE_PARAMETER, *operation.get("parameters", [])]
        operation["responses"].setdefault("404", {"$ref": "#/components/responses/Error"})
    return twin
