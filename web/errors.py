"""One JSON error shape for every HTTP error: {"error": {"code", "message", "details"}}."""
from __future__ import annotations

import redis
from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, ServiceUnavailable

from workers.secrets import SecretsKeyError


def handle_http_error(exc: HTTPException):
    """Render an HTTP error (from `abort()` or routing) as JSON instead of Werkzeug's HTML page."""
    body, status, headers = problem(exc, request.max_content_length)
    return jsonify(body), status, headers


def problem(exc: HTTPException, max_content_length: int | None = None) -> tuple[dict, int, list[tuple[str, str]]]:
    """The JSON body, status and headers of `exc` (also for web/hooks.py, which answers outside Flask's request);
    `max_content_length` is the limit of the request's body, named by a 413."""
    body = {"error": {"code": exc.name.replace(" ", ""), "message": _message(exc, max_content_length), "details": []}}
    return body, exc.code, _headers(exc)


def _headers(exc: HTTPException) -> list[tuple[str, str]]:
    """The error's own headers (`Allow` on a 405, `WWW-Authenticate`, `Retry-After`), less its HTML content type."""
    return [(name, value) for name, value in exc.get_headers() if name.lower() != "content-type"]


def _message(exc: HTTPException, max_content_length: int | None) -> str:
    if isinstance(exc, RequestEntityTooLarge) and max_content_length \
            and exc.description == RequestEntityTooLarge.description:  # not a view's own 413 with its reason
        # Werkzeug's text ("exceeds the capacity limit") does not say what the limit is.
        return f"the request body is over {max_content_length // 1024} KiB, the most this endpoint accepts"
    return exc.description


def no_secrets_key(exc: SecretsKeyError):
    """A route that seals or unseals a secret, in a process started without SECRETS_KEY: 503 saying so."""
    return handle_http_error(secrets_unavailable(exc))


def secrets_unavailable(exc: SecretsKeyError) -> ServiceUnavailable:
    return ServiceUnavailable(f"this needs the workspace registry's keys: {exc}")


REDIS_RETRY_SECONDS = 5


def redis_unreachable(exc: redis.RedisError):
    """Redis could not be reached (an outage, a failover) under a route that does not handle it itself: 503 with
    Retry-After, as the webhook route answers, not a 500 (which says the request met a bug)."""
    current_app.logger.error("%s %s: Redis could not be reached: %s", request.method, request.path, exc)
    return handle_http_error(ServiceUnavailable("the data store (Redis) could not be reached; retry later",
                                                retry_after=REDIS_RETRY_SECONDS))


def favicon():
    """No icon: 204 rather than a 404 logged for every dashboard page a browser opens."""
    return "", 204


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(SecretsKeyError, no_secrets_key)
    # Not every RedisError: a script's ResponseError is a bug, and stays a 500 with its traceback.
    app.register_error_handler(redis.ConnectionError, redis_unreachable)
    app.register_error_handler(redis.TimeoutError, redis_unreachable)
    app.add_url_rule("/favicon.ico", "favicon", favicon)
    # RQ's dashboard (/ui/rq, an app of its own: web/queues.py) links its icon as its app's
    # url_for("static"), /static/favicon.ico, a path of ours that had no such file: a 404 on each of its pages.
    app.add_url_rule("/static/favicon.ico", "rq_dashboard_favicon", favicon)
