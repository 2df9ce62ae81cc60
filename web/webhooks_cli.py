"""`flask webhooks add|rotate|remove|list`: a workspace's webhook sources, live in every process."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import click
from flask.cli import AppGroup

from web.resources import get_keyring, get_redis
from web.workspace import cli_workspace
from workers import registry, workspaces

webhooks_cli = AppGroup("webhooks", help="Webhook sources (/hooks/<source>) of a workspace.")


def _registry_errors(action, *args):
    try:
        return action(*args)
    except registry.RegistryError as exc:
        raise click.ClickException(str(exc)) from exc


@webhooks_cli.command("add")
@click.argument("source")
@cli_workspace
def add_command(source: str):
    """Add webhook source SOURCE; prints its secret (shown this once)."""
    secret = _registry_errors(registry.add_webhook, get_redis(), get_keyring(), workspaces.current().name, source)
    click.echo(f"source: {source}  (POST /hooks/{source}, signed with Standard Webhooks)")
    click.echo(f"secret: {secret}")


@webhooks_cli.command("rotate")
@click.argument("source")
@cli_workspace
def rotate_command(source: str):
    """A new secret for SOURCE; the previous one keeps working for 24 h."""
    secret = _registry_errors(registry.rotate_webhook, get_redis(), get_keyring(), workspaces.current().name,
                              source)
    click.echo(f"secret: {secret}  (the previous one keeps working for {registry.ROTATION_OVERLAP // 3600} h)")


@webhooks_cli.command("remove")
@click.argument("source")
@cli_workspace
def remove_command(source: str):
    """Remove SOURCE: deliveries to /hooks/SOURCE are refused from now on."""
    _registry_errors(registry.remove_webhook, get_redis(), workspaces.current().name, source)
    click.echo(f"removed: {source}")


@webhooks_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@cli_workspace
def list_command(as_json: bool):
    """The workspace's webhook sources and when each was added (never a secret)."""
    found = _registry_errors(registry.webhooks, get_redis(), workspaces.current().name)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for hook in found:
        added = datetime.fromtimestamp(hook["created_at"], timezone.utc).isoformat(timespec="seconds")
        click.echo(f"{hook['source']:<24} added {added}" + ("  (rotating)" if hook["rotating"] else ""))
    if not found:
        click.echo("no webhook sources; add one with: flask webhooks add <source>")
