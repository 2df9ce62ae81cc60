"""A workspace's webhook sources as data (admin token): added, rotated and removed live.

    POST   /webhooks                   {"source": "helpdesk"} → 201 with its `whsec_` secret, shown once
    GET    /webhooks                   the sources: names and creation times, never a secret
    POST   /webhooks/<source>/rotate   a new secret; the old one keeps verifying for 24 h
    DELETE /webhooks/<source>          deliveries to /hooks/<source> are refused from now on

Also under `/workspaces/<ws>/webhooks`. A source added here is served by /hooks/<source> of every
web process within seconds (they follow the registry), with no restart.
"""
from __future__ import annotations

from flask import Blueprint, abort, jsonify, request

from web.resources import get_keyring, get_redis, get_registry
from web.workspace import require_admin_token
from workers import registry, workspaces

bp = Blueprint("webhook_sources", __name__, url_prefix="/webhooks")
bp.before_request(require_admin_token)


@bp.post("")
def add():
    """Add a source; its secret is in the answer, and only there."""
    # Any content type; a body that is not readable JSON is a 400 saying why (web/json_bodies.py).
    body = request.get_json(force=True, silent=not request.get_data())
    if not isinstance(body, dict) or not isinstance(body.get("source"), str):
        abort(422, 'source: the body must be {"source": "<name>"}')
    secret = _call(registry.add_webhook, get_redis(), get_keyring(), _name(), body["source"])
    return jsonify(source=body["source"], secret=secret, path=f"/hooks/{body['source']}",
                   note="the secret is shown this once"), 201


@bp.get("")
def list_sources():
    """The workspace's webhook sources (no secret)."""
    return jsonify(webhooks=_call(registry.webhooks, get_redis(), _name()))


@bp.post("/<source>/rotate")
def rotate(source: str):
    """A new secret for `source`; the previous one keeps verifying for 24 h."""
    secret = _call(registry.rotate_webhook, get_redis(), get_keyring(), _name(), source)
    return jsonify(source=source, secret=secret,
                   note=f"the previous secret keeps working for {registry.ROTATION_OVERLAP // 3600} h")


@bp.delete("/<source>")
def remove(source: str):
    """Remove `source`: its deliveries are refused from now on."""
    _call(registry.remove_webhook, get_redis(), _name(), source)
    return jsonify(source=source, removed=True)


def _name() -> str:
    return workspaces.current().name


def _call(action, *args):
    try:
        found = action(*args)
    except (registry.UnknownSource, registry.UnknownWorkspace) as exc:
        abort(404, str(exc))
    except registry.SourceExists as exc:
        abort(409, str(exc))
    except registry.RegistryError as exc:
        abort(422, str(exc))
    get_registry().refresh()
    return found
