"""The Flask application factory: configuration, shared resources, blueprints and CLI groups.

Read this one screen and you know the whole wiring (the shape of Flask's tutorial `flaskr/__init__.py`).
"""
from __future__ import annotations

import os

from dotenv import load_dotenv
from flask import Flask

from workers.workspaces import WorkspaceConfigError, load_workspaces

# Every setting, its environment variable and its default; nothing else reads os.environ for them.
DEFAULTS = {
    "INLOOX_URL": "http://127.0.0.1:8090/api/odata/",
    "INLOOX_API_KEY": "sandbox-token",
    "INLOOX_TIMEOUT": "10",
    "REDIS_URL": "redis://127.0.0.1:6390/0",
    "RULES_PATH": "rules",
    # Environment variables rules may read as `env.NAME` (an allow-list: never the InLoox token).
    "RULES_ENV": "TEAM_CHANNEL_URL SLACK_WEBHOOK_URL TEAMS_WEBHOOK_URL",
    # Hosts that notifications and http steps may reach although they are private (development).
    "OUTBOUND_ALLOW": "",
    # Bearer token for the runs API (and later the dashboard); empty: open (local development).
    "ADMIN_TOKEN": "",
    # "1": serve /dev/inbox, a local stand-in for Slack/Teams (make run sets it).
    "DEV_INBOX": "",
    # Chat commands: Slack's signing secret, the Teams outgoing webhook's security token (base64),
    # and chat user id → InLoox email or ContactId ("U2CERLKJA=ann@example.com, U0X=…").
    "SLACK_SIGNING_SECRET": "",
    "TEAMS_SECURITY_TOKEN": "",
    "CHAT_USER_MAP": "",
    # InLoox requests per second of the default workspace, shared by all processes (0: no limit).
    "INLOOX_REQUESTS_PER_SECOND": "5",
    # Worker processes: events in flight at once (threads; runs mostly wait on InLoox), at most
    # this many of one workspace per read (0: no cap), and the CPU priority they lower
    # themselves to, so that the web keeps answering senders on a small machine.
    "WORKER_THREADS": "48",
    "WORKER_THREADS_PER_WORKSPACE": "0",
    "WORKER_NICE": "10",
    # Hosted: a YAML file listing the workspaces (docs/deploy.md); unset: one workspace, "default",
    # configured by the settings above.
    "WORKSPACES_FILE": "",
    # Hosted: the operator's bearer token, accepted for every workspace (each also has its own).
    "OPERATOR_TOKEN": "",
}


def load_config() -> dict:
    """Settings from the environment (after `.env` / `.flaskenv`), falling back to DEFAULTS."""
    load_dotenv(".flaskenv")
    load_dotenv(".env")
    config = {name: os.environ.get(name, default) for name, default in DEFAULTS.items()}
    config["WEBHOOK_SOURCES"] = webhook_sources(os.environ)
    try:
        config["WORKSPACES"] = load_workspaces(config)
    except WorkspaceConfigError as exc:
        # No process can serve with a broken workspaces file: each stops with its errors (file:line:
        # field), not a traceback.
        raise SystemExit(f"Error: {exc}") from None
    return config


def webhook_sources(environ) -> dict[str, list[str]]:
    """`WEBHOOK_SECRET_FORMS="whsec_new whsec_old"` → {"forms": [...]}: one or two active secrets."""
    prefix = "WEBHOOK_SECRET_"
    return {
        name[len(prefix):].lower().replace("_", "-"): value.split()
        for name, value in environ.items() if name.startswith(prefix) and value.split()
    }


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app; `test_config` replaces environment settings (tests pass theirs explicitly)."""
    app = Flask(__name__)
    app.config.from_mapping(load_config() if test_config is None else
                            {**DEFAULTS, "WEBHOOK_SOURCES": {}, **test_config})
    app.config.setdefault("WORKSPACES", None)
    if app.config["WORKSPACES"] is None:
        app.config["WORKSPACES"] = load_workspaces(app.config)
    if test_config is None:  # a served app: JSON logs; tests keep pytest's own log capture
        from workers.logs import configure_logging

        configure_logging(app.config)

    from web import errors, events, health, hooks, inbox, metrics, openapi, queues, resources, runs, ui, workspace
    from web.events_cli import events_cli, whatif_command
    from web.rules_cli import rules_cli
    from web.poller_cli import poller_cli
    from web.runs_cli import runs_cli
    from web.workspaces_cli import workspaces_cli
    from web import chat
    from web import rules_api

    resources.init_app(app)
    errors.init_app(app)
    workspace.init_app(app)
    app.register_blueprint(health.bp)
    # Workspace routes: at their own path for the default workspace, and under /workspaces/<ws>/.
    for bp in (hooks.bp, chat.bp, runs.bp, events.bp, rules_api.bp, ui.bp):
        workspace.register(app, bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)
    queues.init_app(app)
    if app.config["DEV_INBOX"] in ("1", "true", True):
        app.register_blueprint(inbox.bp)
    app.cli.add_command(rules_cli)
    app.cli.add_command(runs_cli)
    app.cli.add_command(events_cli)
    rules_cli.add_command(whatif_command)
    app.cli.add_command(poller_cli)
    app.cli.add_command(workspaces_cli)
    return app
