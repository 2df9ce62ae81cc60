"""`flask subscriptions …`: the change feed's subscriptions for a terminal (the API in web/subscriptions.py)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import click
from flask.cli import AppGroup

from web.resources import get_keyring, get_redis
from web.workspace import cli_workspace
from workers import deliveries, subscriptions
from workers.secrets import Keyring, SecretsKeyError
from workers.subscriptions import SubscriptionError

subscriptions_cli = AppGroup("subscriptions", help="Deliver InLoox changes to other systems as signed webhooks.")


@subscriptions_cli.command("add")
@cli_workspace
@click.argument("url")
@click.option("--event", "events", multiple=True, required=True,
              help='A pattern such as Task.updated, Project.*, *.deleted (repeat for more).')
@click.option("--field", "fields", multiple=True, help="Deliver updates only when one of these fields changed.")
def add_command(url, events, fields):
    """Subscribe URL; prints the id and the signing secret (shown this once)."""
    try:
        sub, secret = subscriptions.create(get_redis(), {"url": url, "events": list(events),
                                                         "fields": list(fields) or None}, keyring=_keyring())
    except SubscriptionError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{sub.id}  {sub.url}  {', '.join(sub.events)}")
    click.echo(f"secret: {secret}")


@subscriptions_cli.command("list")
@cli_workspace
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(as_json):
    """Every subscription of the workspace."""
    found = subscriptions.all_subscriptions(get_redis())
    if as_json:
        click.echo(json.dumps([s.public() for s in found], indent=2))
        return
    for sub in found:
        state = f"disabled: {sub.disabled}" if sub.disabled else "failing" if sub.failing_since else "active"
        fields = f" (fields {', '.join(sub.fields)})" if sub.fields else ""
        click.echo(f"{sub.id}  {state:<8}  {sub.url}  {', '.join(sub.events)}{fields}")
    if not found:
        click.echo("no subscriptions")


@subscriptions_cli.command("delete")
@cli_workspace
@click.argument("sub_id")
def delete_command(sub_id):
    """Stop delivering to a subscription."""
    if not subscriptions.delete(get_redis(), sub_id):
        raise click.ClickException(f"no subscription {sub_id}")
    click.echo(f"{sub_id} deleted")


@subscriptions_cli.command("rotate")
@cli_workspace
@click.argument("sub_id")
def rotate_command(sub_id):
    """A new signing secret; the old one keeps signing alongside for 24 h."""
    rotated = subscriptions.rotate(get_redis(), sub_id, keyring=_keyring())
    if rotated is None:
        raise click.ClickException(f"no subscription {sub_id}")
    click.echo(f"secret: {rotated[1]}  (the previous one keeps signing for {subscriptions.ROTATION_OVERLAP // 3600} h)")


@subscriptions_cli.command("deliveries")
@cli_workspace
@click.argument("sub_id")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def deliveries_command(sub_id, limit, as_json):
    """A subscription's newest deliveries and their attempts."""
    found = deliveries.listed(get_redis(), sub_id, limit=limit)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for d in found:
        last = d["attempts"][-1] if d["attempts"] else None
        tried = f"{len(d['attempts'])} attempt(s), last {_when(last['at'])}: {last['status'] or last['error']}" if last else "not tried yet"
        click.echo(f"{d['id']}  {d['status']:<9}  {d['type']}  {d['event_id']}  {tried}")
    if not found:
        click.echo("no deliveries")


@subscriptions_cli.command("redeliver")
@cli_workspace
@click.argument("sub_id")
@click.argument("delivery_id")
def redeliver_command(sub_id, delivery_id):
    """Send a delivery again (same webhook-id and body)."""
    try:
        found = deliveries.redeliver(get_redis(), sub_id, delivery_id)
    except deliveries.AttemptInFlight as exc:
        raise click.ClickException(str(exc)) from None
    if found is None:
        raise click.ClickException(f"no delivery {delivery_id} of subscription {sub_id}")
    click.echo(f"{delivery_id} queued again")


def _keyring() -> Keyring:
    # A secret is never stored in plain text: without a key there is nowhere safe to keep one.
    try:
        return get_keyring()
    except SecretsKeyError as exc:
        raise click.ClickException(f"subscription secrets cannot be stored: {exc}") from exc


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
