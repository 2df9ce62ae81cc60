"""`flask workspaces create|update|show|list|pause|resume|export|delete|admin-token`: the operator's
twin of the workspace API, on the same registry."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import click
from flask.cli import AppGroup
from rq import Queue

from web.resources import get_context, get_keyring, get_redis
from web.workspace import cli_registry, redis_errors_as_messages
from workers import eventlog, registry, workspace_export, workspaces
from workers.jobs import PAUSED
from workers.poller.status import slowest

PAUSED_BY_OPERATOR = "paused by the operator"

workspaces_cli = AppGroup("workspaces", help="The workspaces (InLoox accounts) this deployment serves.")


def _field_options(command):
    """The workspace fields as options; only those given are set (as PUT /workspaces/<name>)."""
    options = [
        click.option("--inloox-url", help="The account's OData URL."),
        click.option("--inloox-api-key", envvar="INLOOX_API_KEY_NEW",
                     help="The InLoox token (or $INLOOX_API_KEY_NEW, to keep it off the command line)."),
        click.option("--rules", help="A rules folder on the server; \"\" for uploaded bundles."),
        click.option("--chat-user-map", help="Chat user id = InLoox email or ContactId, comma-separated."),
        click.option("--alerts", help="Where alerts about the workspace go (an Apprise URL)."),
        click.option("--limits", help='JSON, e.g. \'{"runs_per_minute": 600}\'.'),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _fields(given: dict) -> dict:
    fields = {name: value for name, value in given.items() if value is not None}
    if "rules" in fields and fields["rules"] == "":
        fields["rules"] = None
    if "limits" in fields:
        try:
            fields["limits"] = json.loads(fields["limits"])
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--limits") from exc
    return fields


def _registry_call(action, *args):
    try:
        with redis_errors_as_messages():
            return action(*args)
    except (registry.RegistryError, TypeError) as exc:  # TypeError: a limit that does not exist
        raise click.ClickException(str(exc)) from exc


@workspaces_cli.command("create")
@click.argument("name")
@_field_options
def create_command(name: str, **given):
    """Create workspace NAME; prints its admin token (shown this once)."""
    cli_registry()  # applies the declared workspaces first, as the web does
    if registry.read(get_redis(), name) is not None:
        raise click.ClickException(f"workspace {name!r} exists; change it with: flask workspaces update {name}")
    change = _registry_call(registry.put, get_redis(), get_keyring(), name, _fields(given))
    click.echo(f"created: {name}")
    click.echo(f"admin token: {change.admin_token}  (shown this once)")


@workspaces_cli.command("update")
@click.argument("name")
@_field_options
def update_command(name: str, **given):
    """Set the fields given on workspace NAME."""
    if registry.read(get_redis(), name) is None:
        raise click.ClickException(f"no workspace {name!r}; create it with: flask workspaces create {name}")
    change = _registry_call(registry.put, get_redis(), get_keyring(), name, _fields(given))
    click.echo(f"updated: {name}" if change.changed else f"unchanged: {name}")


@workspaces_cli.command("show")
@click.argument("name")
def show_command(name: str):
    """Workspace NAME as stored (never a secret), as JSON."""
    shown = _registry_call(registry.get, get_redis(), name)
    if shown is None:
        raise click.ClickException(f"no workspace {name!r}")
    click.echo(json.dumps(shown, indent=2))


@workspaces_cli.command("pause")
@click.argument("name")
def pause_command(name: str):
    """Pause NAME: its events are still accepted into its log; nothing of it runs."""
    _registry_call(registry.pause, get_redis(), name)
    click.echo(f"paused: {name}")


@workspaces_cli.command("resume")
@click.argument("name")
def resume_command(name: str):
    """Resume NAME: what waited runs, in order."""
    _registry_call(registry.resume, get_redis(), name)
    click.echo(f"resumed: {name}")


@workspaces_cli.command("admin-token")
@click.argument("name")
def admin_token_command(name: str):
    """A new admin token for NAME (shown this once); the old one stops working."""
    token = _registry_call(registry.new_admin_token, get_redis(), name)
    click.echo(f"admin token: {token}  (shown this once)")


@workspaces_cli.command("export")
@click.argument("name")
@click.option("--output", "-o", type=click.File("wb"), default="-", help="The file to write (default: stdout).")
def export_command(name: str, output):
    """An archive of NAME (rule bundles, subscriptions without secrets, events, runs) as JSON."""
    shown = _registry_call(registry.get, get_redis(), name)
    if shown is None:
        raise click.ClickException(f"no workspace {name!r}")
    with redis_errors_as_messages():
        # Written as it is read, a page of events or runs at a time (as the web's export is), never held whole.
        workspace_export.write(get_redis(), shown, output, indent=2)


@workspaces_cli.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask.")
def delete_command(name: str, yes: bool):
    """Delete NAME whole: its events, runs, rules, queue and jobs (a running one is paused first)."""
    if not yes:
        click.confirm(f"Delete workspace {name!r} and everything of it?", abort=True)
    removed = _registry_call(registry.delete, get_redis(), name)
    click.echo(f"deleted: {name} ({removed} keys)")


@workspaces_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(as_json: bool):
    """Each workspace: its InLoox, its active rules, its queue, whether it is paused, and the poll lag of its
    slowest watched set (how stale its view of InLoox is; `flask poller status` has each set's)."""
    view = cli_registry()
    with redis_errors_as_messages():
        rows = [_row(workspace) for workspace in view.workspaces().values()]
        rows += [{"workspace": name, "unreadable": why} for name, why in view.unreadable().items()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        if "unreadable" in row:
            click.echo(f"{row['workspace']:<16} UNREADABLE: {row['unreadable']}")
            continue
        # A bare "lag 12s" said neither of what nor of which set: it is the slowest watched set's, named here.
        lag = "never polled" if row["poll_lag_seconds"] is None else \
            f"poll lag {row['poll_lag_seconds']:.0f}s (slowest watched set: {row['poll_lag_set']})"
        paused = f"  PAUSED: {row['paused']}" if row["paused"] else ""
        click.echo(f"{row['workspace']:<16} {row['rules']} ({row['ruleset_version']}, {row['rule_count']} rules)  "
                   f"queued {row['queued']}  {lag}  {row['inloox_url']}{paused}")


def _row(workspace: workspaces.Workspace) -> dict:
    connection = get_redis()
    with workspaces.using(workspace):
        ruleset, version = get_context().rules.current()
        refused = connection.get(workspaces.key(PAUSED))
        lag, lagging = slowest(connection, now=datetime.now(timezone.utc))
    return {"workspace": workspace.name, "inloox_url": workspace.inloox_url,
            "rules": workspace.rules_path or "uploaded bundles", "ruleset_version": version,
            "rule_count": len(ruleset.rules), "queued": Queue(workspace.queue, connection=connection).count
            + eventlog.backlog(connection, workspace=workspace.name),
            # Why nothing of it runs: the operator paused it, or InLoox refused its token ("" if neither).
            "paused": PAUSED_BY_OPERATOR if workspace.paused else refused.decode() if refused else "",
            "poll_lag_seconds": lag, "poll_lag_set": lagging}
