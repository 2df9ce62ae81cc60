"""The InLoox change feed as signed webhooks: `/subscriptions` (admin token).

    POST   /subscriptions                      {"url", "events": ["Task.updated", …], "fields"?} → 201 with the secret
    GET    /subscriptions                      every subscription (no secrets)
    GET    /subscriptions/<id>                 one, with its delivery counts
    DELETE /subscriptions/<id>                 204
    POST   /subscriptions/<id>/rotate          a new secret; the old one keeps signing for 24 h
    GET    /subscriptions/<id>/deliveries      the newest deliveries and each attempt
    POST   /subscriptions/<id>/deliveries/<d>/redeliver   send a delivery again (same webhook-id)

Also under `/workspaces/<ws>/subscriptions`. The secret is shown once, when made or rotated, and
stored only sealed under SECRETS_KEY (without one, creating and rotating answer 503).
"""
from __future__ import annotations

from flask import Blueprint, abort, jsonify, request

from web.openapi import check_query, request_body
from web.resources import get_keyring, get_redis
from web.workspace import require_admin_token
from workers import deliveries, subscriptions
from workers.secrets import Keyring, SecretsKeyError
from workers.subscriptions import SubscriptionError

bp = Blueprint("subscriptions", __name__, url_prefix="/subscriptions")
bp.before_request(require_admin_token)
bp.before_request(check_query)


@bp.post("")
def create():
    body = request_body()
    try:
        sub, secret = subscriptions.create(get_redis(), body, keyring=_keyring())
    except SubscriptionError as exc:
        abort(422, str(exc))
    return jsonify({**sub.public(), "secret": secret}), 201


@bp.get("")
def index():
    return jsonify(subscriptions=[s.public() for s in subscriptions.all_subscriptions(get_redis())])


@bp.get("/<sub_id>")
def show(sub_id: str):
    return jsonify(_found(sub_id).public())


@bp.delete("/<sub_id>")
def delete(sub_id: str):
    if not subscriptions.delete(get_redis(), sub_id):
        abort(404, f"no subscription {sub_id}")
    return "", 204


@bp.post("/<sub_id>/rotate")
def rotate(sub_id: str):
    rotated = subscriptions.rotate(get_redis(), sub_id, keyring=_keyring())
    if rotated is None:
        abort(404, f"no subscription {sub_id}")
    sub, secret = rotated
    return jsonify({**sub.public(), "secret": secret,
                    "note": f"the previous secret keeps signing for {subscriptions.ROTATION_OVERLAP // 3600} h"})


@bp.get("/<sub_id>/deliveries")
def deliveries_index(sub_id: str):
    _found(sub_id)
    limit = min(request.args.get("limit", 50, type=int), deliveries.KEEP_PER_SUBSCRIPTION)
    return jsonify(deliveries=deliveries.listed(get_redis(), sub_id, limit=limit))


@bp.post("/<sub_id>/deliveries/<delivery_id>/redeliver")
def redeliver(sub_id: str, delivery_id: str):
    _found(sub_id)
    try:
        record = deliveries.redeliver(get_redis(), sub_id, delivery_id)
    except deliveries.AttemptInFlight as exc:
        abort(409, str(exc))
    if record is None:
        abort(404, f"no delivery {delivery_id} of subscription {sub_id}")
    return jsonify(delivery={k: v for k, v in record.items() if k != "body"}), 202


def _keyring() -> Keyring:
    # A secret is never stored in plain text: without a key there is nowhere safe to keep one.
    try:
        return get_keyring()
    except SecretsKeyError as exc:
        abort(503, f"subscription secrets cannot be stored: {exc}")


def _found(sub_id: str) -> subscriptions.Subscription:
    sub = subscriptions.get(get_redis(), sub_id)
    if sub is None:
        abort(404, f"no subscription {sub_id}")
    return sub
