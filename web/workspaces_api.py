"""The operator's workspace API (OPERATOR_TOKEN): create, change, pause, export and delete workspaces live.

    PUT    /workspaces/<name>               create (201, with its admin token shown once) or update (200)
    GET    /workspaces                      every workspace (no secret)
    GET    /workspaces/<name>               one workspace (no secret; also its own admin token)
    POST   /workspaces/<name>/admin-token   a new admin token; the old one stops working (also its own)
    POST   /workspaces/<name>/pause         its events are still accepted into its log; nothing runs
    POST   /workspaces/<name>/resume        what waited runs, in order
    GET    /workspaces/<name>/export        its rule bundles, subscriptions (no secret), events and runs (also its own)
    DELETE /workspaces/<name>               paused first, then every Redis key, job and queue of it removed

Every change goes to the registry (workers/registry), which every process follows within seconds.
Without OPERATOR_TOKEN the API is open only while no workspace has an admin token either (local
development); otherwise it answers 401 and the operator uses `flask workspaces` (or sets the token).
The URL variable is `name`, not `ws`: these routes act on a workspace rather than inside one.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import BinaryIO

from flask import Blueprint, abort, current_app, jsonify, request, send_file
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from werkzeug.exceptions import ServiceUnavailable, TooManyRequests

from web import export_disk
from web.heavy import limited
from web.resources import get_keyring, get_redis, get_registry
from web.workspace import bearer_token, require_operator_token
from workers import registry, workspace_export, workspaces

bp = Blueprint("workspaces_api", __name__, url_prefix="/workspaces")
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "workspace.schema.json"
EXPORT_RETRY_SECONDS = 60  # after the disk (or EXPORT_DISK_BYTES) had no room for an archive: downloads end


@bp.put("/<name>")
def put(name: str):
    """Create the workspace or update the fields given; the same body twice changes nothing."""
    _require_operator()
    body = _body()
    try:
        change = registry.put(get_redis(), get_keyring(), name, body)
    except registry.RegistryError as exc:
        abort(422, str(exc))
    get_registry().refresh()
    if change.created:
        return jsonify({**change.workspace, "admin_token": change.admin_token,
                        "note": "the admin token is shown this once"}), 201
    return jsonify({**change.workspace, "changed": change.changed}), 200


@bp.get("")
def list_workspaces():
    """Every workspace, with whether it is paused and whether this process can serve it."""
    _require_operator()
    connection, unreadable = get_redis(), get_registry().unreadable()
    shown = [{**registry.get(connection, name), "unreadable": unreadable.get(name, "")}
             for name in registry.names(connection)]
    return jsonify(workspaces=shown)


@bp.get("/<name>")
def show(name: str):
    """One workspace as stored, without its secrets."""
    _require_owner(name)
    return jsonify(_known(name))


@bp.post("/<name>/admin-token")
def admin_token(name: str):
    """A new admin token, shown this once; the previous one stops working at once."""
    _require_owner(name)
    token = _registry_call(registry.new_admin_token, get_redis(), name)
    get_registry().refresh()
    return jsonify(workspace=name, admin_token=token, note="the admin token is shown this once"), 201


@bp.post("/<name>/pause")
def pause(name: str):
    """Pause: webhooks and InLoox changes are still accepted into its log, nothing runs."""
    _require_operator()
    shown = _registry_call(registry.pause, get_redis(), name)
    get_registry().refresh()
    return jsonify(shown)


@bp.post("/<name>/resume")
def resume(name: str):
    """Resume: what waited runs, in order."""
    _require_operator()
    shown = _registry_call(registry.resume, get_redis(), name)
    get_registry().refresh()
    return jsonify(shown)


@bp.get("/<name>/export")
def export_workspace(name: str):
    """An archive (JSON) of the workspace: enough to move it to another deployment. No secret."""
    _require_owner(name)
    record = _known(name)
    with workspaces.using(workspaces.Workspace(name, record["inloox_url"], "")):  # its turn is its own (web/heavy.py)
        return _archive(record)


@limited  # up to 10,000 events and runs, hundreds of MiB to write: one at a time per process and workspace, else 429
def _archive(record: dict):
    # Sent from a file, not from memory nor a generator: waitress hands a file to its I/O loop (wsgi.file_wrapper),
    # so a slow download holds no thread, and the turn ends once the archive is written. A streamed body held its
    # thread, and with it this turn, whenever 16 MiB waited to be sent. The file stays on disk until its download
    # ends: EXPORT_DISK_BYTES bounds all of them (web/export_disk.py).
    archive, size = _written(record)
    response = send_file(archive, mimetype="application/json", conditional=False, etag=False)
    response.content_length = size
    response.headers["Content-Disposition"] = f'attachment; filename="{record["name"]}.json"'
    return response


def _written(record: dict) -> tuple[BinaryIO, int]:
    """The archive in a temporary file, at its start, and its size; 409 past EXPORT_MAX_BYTES (or alone past
    EXPORT_DISK_BYTES), 429 when the exports this process still sends leave too little of EXPORT_DISK_BYTES for it
    or one of the workspace's is among them, 503 when the disk has no room for it.

    The file has no name (unlinked as it is made), so its space goes back when it is closed, however the request
    ends: sent, the client gone, an error, the process killed; its bytes count against the process's
    EXPORT_DISK_BYTES until then (web/export_disk.py)."""
    try:
        archive = export_disk.HeldFile(export_disk.budget(), int(current_app.config["EXPORT_DISK_BYTES"]),
                                       record["name"], max_bytes=workspace_export.EXPORT_MAX_BYTES)
    except export_disk.Downloading as exc:
        raise _busy(record, exc) from None
    except OSError as exc:
        raise _no_room(exc) from None
    try:
        workspace_export.write(get_redis(), record, archive, **_json_options())
        archive.write(b"\n")  # as jsonify ends its body
        archive.seek(0)
    except export_disk.LargerThanBudget as exc:
        archive.close()
        abort(409, f"workspace {record['name']!r} was not exported: {exc}")
    except export_disk.OverBudget as exc:
        archive.close()  # its bytes so far given back with its file
        raise _busy(record, exc) from None
    except OSError as exc:
        archive.close()
        raise _no_room(exc) from None
    except BaseException:
        archive.close()  # a Redis error too: its space and count go back now, not whenever the collector gets to it
        raise
    return archive, archive.held


def _busy(record: dict, exc: export_disk.OverBudget) -> TooManyRequests:
    """Exports still being downloaded hold the room this one needs: once they end, it is there."""
    return TooManyRequests(f"workspace {record['name']!r} was not exported: {exc}; try again in "
                           f"{EXPORT_RETRY_SECONDS} s", retry_after=EXPORT_RETRY_SECONDS)


def _json_options() -> dict:
    """How jsonify writes JSON in this app (flask.json.provider.DefaultJSONProvider.response): the archive's text is
    what it was when jsonify wrote it."""
    provider = current_app.json
    indented = provider.compact is False or (provider.compact is None and current_app.debug)
    return {"default": provider.default, "ensure_ascii": provider.ensure_ascii, "sort_keys": provider.sort_keys,
            **({"indent": 2} if indented else {"separators": (",", ":")})}


def _no_room(exc: OSError) -> ServiceUnavailable:
    """The archive's file could not be made or written (most likely a full disk): the server's state, not the
    request's."""
    current_app.logger.error("a workspace's export could not be written to a temporary file: %s", exc)
    return ServiceUnavailable(f"this web server has no room for the archive now ({exc.strerror or exc}); "
                              f"try again in {EXPORT_RETRY_SECONDS} s", retry_after=EXPORT_RETRY_SECONDS)


@bp.delete("/<name>")
def delete(name: str):
    """Delete the workspace whole (a running one is paused first); its routes answer 404 from now on."""
    _require_operator()
    removed = _registry_call(registry.delete, get_redis(), name)
    get_registry().refresh()
    return jsonify(workspace=name, deleted=True, keys_removed=removed)


def _require_owner(name: str) -> None:
    """The operator, or the workspace's own admin token."""
    record = registry.read(get_redis(), name) if _valid(name) else None
    if record is not None and registry.token_matches(bearer_token(), record["admin_token_sha256"]):
        return
    _require_operator()


def _require_operator() -> None:
    """The operator's token; with none configured, only a deployment whose workspaces have no admin token either."""
    require_operator_token(without="; without it, use `flask workspaces`")


def _valid(name: str) -> bool:
    return bool(workspaces.NAME.match(name))


def _known(name: str) -> dict:
    shown = registry.get(get_redis(), name) if _valid(name) else None
    if shown is None:
        abort(404, f"no workspace {name!r}")
    return shown


def _registry_call(action, *args):
    try:
        return action(*args)
    except registry.UnknownWorkspace as exc:
        abort(404, str(exc))
    except registry.RegistryError as exc:
        abort(422, str(exc))


def _body() -> dict:
    # Any content type; a body that is not readable JSON is a 400 saying why (web/json_bodies.py).
    body = request.get_json(force=True, silent=not request.get_data())
    if body is None:
        abort(400, "the body must be a JSON object of workspace fields (schemas/workspace.schema.json)")
    problem = best_match(_validator().iter_errors(body))
    if problem is not None:
        where = "/".join(str(p) for p in problem.absolute_path) or "the body"
        abort(422, f"{where}: {problem.message[:300]}")
    return body


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
