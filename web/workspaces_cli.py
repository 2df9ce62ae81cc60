"""`flask workspaces list`: every workspace of the deployment at a glance, for its operator."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import click
from flask import current_app
from flask.cli import AppGroup
from rq import Queue

from web.resources import get_context, get_redis
from web.workspace import redis_errors_as_messages
from workers import eventlog, workspaces
from workers.jobs import PAUSED
from workers.poll_status import poll_status

workspaces_cli = AppGroup("workspaces", help="The workspaces (InLoox accounts) this deployment serves.")


@workspaces_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(as_json: bool):
    """Each workspace: its InLoox, its active rules, its queue, whether it is paused, its poll lag."""
    with redis_errors_as_messages():
        rows = [_row(workspace) for workspace in current_app.config["WORKSPACES"].values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        lag = "never polled" if row["poll_lag_seconds"] is None else f"lag {row['poll_lag_seconds']:.0f}s"
        paused = f"  PAUSED: {row['paused']}" if row["paused"] else ""
        click.echo(f"{row['workspace']:<16} {row['rules']} ({row['ruleset_version']}, {row['rule_count']} rules)  "
                   f"queued {row['queued']}  {lag}  {row['inloox_url']}{paused}")


def _row(workspace: workspaces.Workspace) -> dict:
    connection = get_redis()
    with workspaces.using(workspace):
        ruleset, version = get_context().rules.current()
        paused = connection.get(workspaces.key(PAUSED))
        lags = [s["lag_seconds"] for s in poll_status(connection, now=datetime.now(timezone.utc))
                if s["lag_seconds"] is not None]
    return {"workspace": workspace.name, "inloox_url": workspace.inloox_url,
            "rules": workspace.rules_path or "uploaded bundles", "ruleset_version": version,
            "rule_count": len(ruleset.rules), "queued": Queue(workspace.queue, connection=connection).count
            + eventlog.backlog(connection, workspace=workspace.name),
            "paused": paused.decode() if paused else "", "poll_lag_seconds": max(lags) if lags else None}
