"""RQ's own dashboard (`rq-dashboard`) under `/ui/rq`, behind the same login as the rest of `/ui`.

It lists queues, jobs (with their JSON arguments: plans, which hold no tokens) and workers, and can
requeue or delete jobs. It masks any password in the Redis URL it shows.

It is an app of its own, built at its first page: rq-dashboard and what it imports (arrow, its
Redis URL parser) are 2 MB of every web process, which most processes never serve a page of (issue
22: the stack's idle RSS). Our app routes `/ui/rq/…` here, checks the login, and hands the request
to that app, whose blueprint is mounted at the same prefix, so its links need no rewriting.
"""
from __future__ import annotations

import threading

from flask import Blueprint, Flask, current_app

from web import ui

URL_PREFIX = "/ui/rq"
METHODS = ["GET", "POST", "PUT", "DELETE"]

bp = Blueprint("queues", __name__)
_lock = threading.Lock()


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.route(f"{URL_PREFIX}/", defaults={"rest": ""}, methods=METHODS)
@bp.route(f"{URL_PREFIX}/<path:rest>", methods=METHODS)
def dashboard(rest: str):
    """The login's answer if it refuses, else the dashboard's answer to this very request (a WSGI app)."""
    refused = ui.require_operator_login()
    if refused is not None:
        return refused
    return _dashboard(current_app._get_current_object())


def _dashboard(app: Flask) -> Flask:
    """The dashboard on our Redis, reading jobs with our serializer; built once per app, at its first page."""
    with _lock:
        if "rq_dashboard" not in app.extensions:
            import rq_dashboard
            from rq.serializers import JSONSerializer
            from rq_dashboard.web import config as dashboard_config, setup_rq_connection

            dashboard = Flask(__name__)
            dashboard.config["RQ_DASHBOARD_REDIS_URL"] = app.config["REDIS_URL"]
            # rq-dashboard keeps its serializer module-wide; every job of ours is JSON (`--serializer json`).
            dashboard_config.serializer = JSONSerializer
            setup_rq_connection(dashboard)  # a lazy client: no connection is opened until a page asks
            dashboard.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)
            app.extensions["rq_dashboard"] = dashboard
        return app.extensions["rq_dashboard"]
