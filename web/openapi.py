"""`GET /openapi.json`: the OpenAPI document of our own endpoints (kept in `schemas/openapi.json`), and the
checks that make the server keep to it.

The workspace routes are written once in the file, at their default-workspace path; their
`/workspaces/{ws}/…` twins are added here, so the two can never drift apart.

The document is also the contract the server enforces, read in one place: a query parameter it does
not name, or a value its schema refuses, is a 400 (`check_query`, run before the admin API's views), and
a JSON body its schema refuses is a 422 (`request_body`, called by the views that take one). So what
the document says is what the server does, and a fuzzer driven by the document finds no gap between them.
"""
from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path

from flask import Blueprint, abort, jsonify, request
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

bp = Blueprint("openapi", __name__)

SPEC_PATH = Path(__file__).resolve().parent.parent / "schemas" / "openapi.json"
WORKSPACE_ROUTES = ("/hooks/", "/chat/", "/runs", "/events", "/subscriptions", "/rules")  # those web.workspace.register serves twice
WORKSPACE_PARAMETER = {"name": "ws", "in": "path", "required": True, "schema": {"type": "string"},
                       "description": "The workspace (see docs/deploy.md)."}
TWIN_SUFFIX = "InWorkspace"
MESSAGE_CHARS = 300  # a refused value is quoted in the message; a 64 KiB one is cut
_URL_VARIABLE = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


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
        if "operationId" in operation:  # ids are unique in a document; a twin's links lead to twins
            operation["operationId"] += TWIN_SUFFIX
        for response in operation["responses"].values():
            for link in response.get("links", {}).values():
                link["operationId"] += TWIN_SUFFIX
                link["parameters"] = {"ws": "$request.path.ws", **link.get("parameters", {})}
    return twin


def check_query() -> None:
    """Refuse (400) a query parameter the request's operation does not document, or a value its schema refuses.

    For the admin API, whose parameters filter and steer (a misspelt `?stauts=` must not list everything);
    probes, scrapes and signed deliveries keep ignoring a query string.
    """
    parameters = _query_parameters(*_operation_key())
    if parameters is None:
        return  # not an API route (the dashboard, rq-dashboard, static files)
    for name in request.args:
        if name not in parameters:
            known = ", ".join(sorted(parameters)) or "none"
            abort(400, f"unknown query parameter {name!r}; this endpoint takes: {known}")
        value = _typed(name, request.args[name], parameters[name])
        problem = best_match(_validator(json.dumps(parameters[name])).iter_errors(value))
        if problem is not None:
            abort(400, f"query parameter {name}: {_cut(problem.message)}")


def request_body(*, required: bool = True):
    """The request's JSON body, checked against the operation's schema (422 naming the field and the rule).

    An unreadable body is a 400 or 415 from `web.json_bodies`; an absent optional one is `{}`.
    """
    if not required and not request.get_data(cache=True):
        return {}
    body = request.get_json()
    path, method = _operation_key()
    pointer = f"#/paths/{_escape(path)}/{method}/requestBody/content/application~1json/schema"
    problem = best_match(_body_validator(pointer).iter_errors(body))
    if problem is not None:
        abort(422, _described(problem))
    return body


def _described(problem: ValidationError) -> str:
    """`field: what is wrong (at its path); what the field is`, the shape every 422 of the API has."""
    path, message = [str(p) for p in problem.absolute_path], _cut(problem.message)
    if problem.validator == "required":  # jsonschema names the object; a person looks for the missing field
        path.append(next(name for name in problem.validator_value if name not in problem.instance))
        message = "is required"
    where = f" (at {'/'.join(path)})" if len(path) > 1 else ""
    hint = problem.schema.get("description") if isinstance(problem.schema, dict) else None
    return f"{path[0] if path else 'the body'}: {message}{where}" + (f"; {hint}" if hint else "")


def _operation_key() -> tuple[str, str]:
    rule = request.url_rule.rule if request.url_rule is not None else ""
    return _URL_VARIABLE.sub(r"{\1}", rule), request.method.lower()


@cache
def _query_parameters(path: str, method: str) -> dict[str, dict] | None:
    """name → schema of the operation's query parameters; None for a route the document does not describe."""
    operation = load_spec()["paths"].get(path, {}).get(method)
    if operation is None:
        return None
    return {p["name"]: p.get("schema", {}) for p in operation.get("parameters", []) if p["in"] == "query"}


def _typed(name: str, text: str, schema: dict):
    """A query value as its schema's type (every query value arrives as text)."""
    if schema.get("type") != "integer":
        return text
    try:
        return int(text)
    except ValueError:
        abort(400, f"query parameter {name}: {_cut(repr(text))} is not an integer")


@cache
def _validator(schema_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_json))


@cache
def _body_validator(pointer: str) -> Draft202012Validator:
    # The whole document is the root, so the schema's `#/components/…` references resolve in it.
    return Draft202012Validator({**load_spec(), "$ref": pointer})


def _escape(path: str) -> str:
    return path.replace("~", "~0").replace("/", "~1")


def _cut(text: str) -> str:
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS - 1] + "…"
