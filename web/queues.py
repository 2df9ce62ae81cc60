"""RQ's own dashboard (`rq-dashboard`) under `/ui/rq`, behind the same login as the rest of `/ui`.

It lists queues, jobs (with their JSON arguments: plans, which hold no tokens) and workers, and can
requeue or delete jobs. It masks any password in the Redis URL it shows.
"""
from __future__ import annotations

import rq_dashboard
from flask import Flask
from rq.serializers import JSONSerializer
from rq_dashboard.web import config as dashboard_config, setup_rq_connection

from web import ui

URL_PREFIX = "/ui/rq"


def init_app(app: Flask) -> None:
    """Mount the dashboard on our Redis, reading jobs with our serializer, and guard it with the UI login."""
    app.config["RQ_DASHBOARD_REDIS_URL"] = app.config["REDIS_URL"]
    # rq-dashboard keeps its serializer module-wide; every job of ours is JSON (`--serializer json`).
    dashboard_config.serializer = JSONSerializer
    setup_rq_connection(app)  # a lazy client: no connection is opened until a page asks
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)
    # The blueprint is rq-dashboard's, so the check is registered on the app for that blueprint's
    # requests (Flask runs `before_request_funcs[name]` for them), which leaves its object untouched.
    app.before_request_funcs.setdefault(rq_dashboard.blueprint.name, []).append(ui.require_operator_login)
