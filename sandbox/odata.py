"""The OData service under /api/odata/: $metadata, entity sets, entities, $count and operations.

Before each request: log it, apply fault rules, check `x-api-key`. Views translate the path into
a store read or write; errors become OData error bodies through the app's error handler.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from flask import Blueprint, Response, g, request

from inloox.metadata import METADATA_PATH

from . import bodies, connection, operations, queries, writes
from .errors import BadRequest, MethodNotAllowed, ODataError, Unauthorized
from .paths import format_key, parse_path
from .runtime import get_sandbox

bp = Blueprint("odata", __name__, url_prefix="/api/odata")


def json_response(payload, status: int = 200, headers: dict | None = None) -> Response:
    """A JSON response that keeps key order (@odata.context first)."""
    return Response(json.dumps(payload), status=status, headers={"OData-Version": "4.0", **(headers or {})},
                    mimetype="application/json")


def error_response(error: ODataError, headers: dict | None = None) -> Response:
    return json_response(error.to_dict(), error.status, headers)


def _base_url() -> str:
    return request.host_url + "api/odata/"


@bp.before_request
def gate():
    """Log the request, apply any fault rules, then require the token."""
    sandbox, path = get_sandbox(), request.path[len(bp.url_prefix) + 1:]
    g.log_entry = {"method": request.method, "path": path, "query": request.query_string.decode(),
                   "user": None, "status": None, "body": _body_for_log(), "fault": None,
                   "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")}
    for rule in sandbox.faults.fire(request.method, path):
        g.log_entry["fault"] = rule.kind
        if rule.kind == "latency":
            time.sleep(rule.latency_ms / 1000)
        elif rule.kind == "drop":
            return connection.drop(request.environ)
        elif rule.kind == "status":
            return _fault_status(rule)
        elif rule.kind == "commit_then_hang":
            g.hang_s = rule.hang_s
        elif rule.kind == "commit_then_status":
            g.answer_instead = rule
    token = request.headers.get("x-api-key", "")
    g.user = sandbox.user_of(token)
    g.log_entry["user"] = g.user  # whose request: tells workspaces (one token each) apart in the log
    if g.user is None:
        raise Unauthorized("Missing or invalid x-api-key header" if token else "Missing x-api-key header")
    return None


def _fault_status(rule) -> Response:
    headers = None
    if rule.retry_after is not None:
        seconds = rule.retry_after
        headers = {"Retry-After": str(int(seconds) if float(seconds).is_integer() else seconds)}
    if rule.text is not None:
        return Response(rule.text * rule.repeat, status=rule.status, headers=headers, mimetype="text/plain")
    if rule.body is not None:
        return json_response(rule.body, rule.status, headers)
    error = ODataError(f"Injected fault: HTTP {rule.status}")
    error.status, error.code = rule.status, "SandboxFault"
    return error_response(error, headers)


def _json_body():
    """The request body as JSON, parsed once per request (the log reads it too); raises BadRequest."""
    if "body_error" in g:
        raise g.body_error
    if "parsed_body" not in g:
        try:
            g.parsed_body = bodies.parse_json(request.get_data())
        except BadRequest as exc:
            g.body_error = exc
            raise
    return g.parsed_body


def _body_for_log():
    if not request.content_length:
        return None
    try:
        return _json_body()
    except BadRequest:
        return None  # a refused body is logged as null: the log must stay printable


def _method() -> str:
    """The request's method with HEAD read as GET: Werkzeug leaves the body out of a HEAD answer."""
    return "GET" if request.method == "HEAD" else request.method


@bp.after_request
def record(response: Response) -> Response:
    """Finish the log entry; for commit_then_status, answer its status instead; for commit_then_hang, hold
    and then drop the connection."""
    instead = g.pop("answer_instead", None)
    if instead is not None:
        response = _fault_status(instead)  # the write is committed: only its answer is replaced
    entry = g.pop("log_entry", None)
    if entry is not None:
        entry["status"] = response.status_code if entry["fault"] != "drop" else None
        get_sandbox().log.append(entry)
    hang = g.pop("hang_s", None)
    if hang is not None:
        time.sleep(hang)
        return connection.drop(request.environ)
    return response


@bp.route("/$metadata")
def metadata():
    """InLoox's own EDMX document."""
    return Response(METADATA_PATH.read_bytes(), mimetype="application/xml")


@bp.route("/")
def service_document():
    """The service document: every entity set."""
    sets = get_sandbox().store.metadata.entity_sets
    return json_response({"@odata.context": _base_url() + "$metadata",
                          "value": [{"name": n, "kind": "EntitySet", "url": n} for n in sets]})


@bp.route("/<path:path>", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
def resource(path: str):
    """Dispatch a resource path to a read, a write, $count or an operation."""
    sandbox = get_sandbox()
    target = parse_path(sandbox.store.metadata, path)
    if target.operation:
        return _operation(sandbox, target)
    if target.count:
        return _count(sandbox, target)
    if target.key is None:
        return _collection(sandbox, target)
    return _entity(sandbox, target)


def _collection(sandbox, target):
    entity_set = target.entity_set
    if _method() == "POST":
        created = writes.create(sandbox.store, entity_set, _json_body(), g.user)
        response = _entity_response(entity_set.name, created, 201)
        response.headers["Location"] = _base_url() + format_key(entity_set, created)
        return response
    if _method() != "GET":
        raise MethodNotAllowed(f"{request.method} is not allowed on the collection {entity_set.name}")
    query = queries.parse_query(request.args, sandbox.store.columns(entity_set.name))
    rows, position, total = queries.read_page(sandbox.store, entity_set.name, query,
                                              keyset_allowed=sandbox.paging["by"] != "skip")
    payload = {"@odata.context": f"{_base_url()}$metadata#{entity_set.name}"}
    if total is not None:
        payload["@odata.count"] = total
    payload["value"] = rows
    if position is not None:
        payload["@odata.nextLink"] = queries.next_link(_base_url(), entity_set.name, request.args, position)
    return json_response(payload)


def _count(sandbox, target):
    if _method() != "GET":
        raise MethodNotAllowed("$count is read-only")
    query = queries.parse_query({"$filter": request.args.get("$filter", "")},
                                sandbox.store.columns(target.entity_set.name))
    with sandbox.store.reading() as conn:
        total = queries.count_rows(conn, target.entity_set.name, query)
    return Response(str(total), mimetype="text/plain")


def _entity(sandbox, target):
    store, entity_set, key = sandbox.store, target.entity_set, target.key
    method = _method()
    if method == "GET":
        return _entity_response(entity_set.name, writes.read_entity(store, entity_set, key))
    if method == "DELETE":
        writes.delete(store, entity_set, key, g.user)
        return Response(status=204)
    if method in ("PATCH", "PUT"):
        updated = writes.update(store, entity_set, key, _json_body(), g.user)
        if "return=minimal" in request.headers.get("Prefer", ""):
            return Response(status=204)
        return _entity_response(entity_set.name, updated)
    raise MethodNotAllowed(f"{request.method} is not allowed on a single {entity_set.name}")


def _entity_response(set_name: str, entity: dict, status: int = 200) -> Response:
    return json_response({"@odata.context": f"{_base_url()}$metadata#{set_name}/$entity", **entity}, status)


def _operation(sandbox, target):
    body = _json_body() if request.method == "POST" and request.get_data() else None
    status, result, result_set = operations.invoke(sandbox.store, target, _method(), body, g.user)
    if result is None:
        return Response(status=204)
    context = f"{_base_url()}$metadata#{result_set}"
    if isinstance(result, list):
        return json_response({"@odata.context": context, "value": result}, status)
    return json_response({"@odata.context": context + "/$entity", **result}, status)

