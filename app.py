"""The Flask application factory: configuration, shared resources, blueprints and CLI groups.

Read this one screen and you know the whole wiring (the shape of Flask's tutorial `flaskr/__init__.py`).
"""
from __future__ import annotations

from flask import Flask

from workers.settings import DEFAULTS, load_config, secrets_key
from workers.workspaces import load_workspaces


def create_app(test_config: dict | None = None, *, commands: bool = True) -> Flask:
    """Build the app; `test_config` replaces environment settings (tests pass theirs explicitly).

    `commands=False` leaves out the `flask` CLI groups: a served app (web/server.py) runs none, and
    their modules cost each web process ~0.5 MB of RSS (issue 22).
    """
    app = Flask(__name__)
    app.config.from_mapping(load_config() if test_config is None else
                            {**DEFAULTS, "WEBHOOK_SOURCES": {}, **secrets_key(), **test_config})
    app.config.setdefault("WORKSPACES", None)
    if app.config["WORKSPACES"] is None:
        app.config["WORKSPACES"] = load_workspaces(app.config)
    if test_config is None:  # a served app: JSON logs; tests keep pytest's own log capture
        from workers.logs import configure_logging

        configure_logging(app.config)

    from web import errors, events, health, hooks, inbox, metrics, openapi, queues, resources, runs, ui, workspace
    from web import json_bodies
    from web import chat
    from web import rules_api, subscriptions
    from web import webhook_sources, workspaces_api
    from web import usage

    json_bodies.init_app(app)  # every request.get_json() is bounded (depth, UTF-8) and says why it refused
    resources.init_app(app)
    errors.init_app(app)
    workspace.init_app(app)
    hooks.init_app(app)  # the webhook route, answered in front of Flask's routes
    app.register_blueprint(health.bp)
    # Workspace routes: at their own path for the default workspace, and under /workspaces/<ws>/.
    for bp in (chat.bp, runs.bp, events.bp, subscriptions.bp, rules_api.bp, ui.bp, webhook_sources.bp):
        workspace.register(app, bp)
    app.register_blueprint(workspaces_api.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(usage.bp)
    app.register_blueprint(openapi.bp)
    queues.init_app(app)
    if app.config["DEV_INBOX"] in ("1", "true", True):
        app.register_blueprint(inbox.bp)
    if commands:
        add_commands(app)
    return app


def add_commands(app: Flask) -> None:
    """The `flask` CLI groups (`flask --app app rules check`, `runs`, `events`, …)."""
    from web.events_cli import events_cli, whatif_command
    from web.poller_cli import poller_cli
    from web.rules_cli import rules_cli
    from web.runs_cli import runs_cli
    from web.secrets_cli import secrets_cli
    from web.subscriptions_cli import subscriptions_cli
    from web.usage_cli import usage_command
    from web.webhooks_cli import webhooks_cli
    from web.workspaces_cli import workspaces_cli

    app.cli.add_command(rules_cli)
    app.cli.add_command(runs_cli)
    app.cli.add_command(events_cli)
    app.cli.add_command(subscriptions_cli)
    rules_cli.add_command(whatif_command)
    app.cli.add_command(poller_cli)
    app.cli.add_command(workspaces_cli)
    app.cli.add_command(webhooks_cli)
    app.cli.add_command(secrets_cli)
    app.cli.add_command(usage_command)
