"""`flask webhooks add|rotate|remove|list|send`: a workspace's webhook sources, live in every process, and a
signed test delivery to one of them (as `stripe trigger` or `svix message create` sends one)."""
from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

import click
import requests
from flask.cli import AppGroup

from engine.errors import did_you_mean
from web.resources import get_keyring, get_redis
from web.workspace import cli_workspace
from workers import deliveries, registry, settings, workspaces

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


SEND_TIMEOUT = 10  # seconds the web has to answer a test delivery: it answers once the event is stored


@webhooks_cli.command("send")
@click.argument("source")
@click.argument("body", default="{}")
@click.option("--url", help="The web's base URL.  [default: http://127.0.0.1:$PORT, as make run serves it]")
@click.option("--id", "webhook_id", help="The webhook-id (default: a new one); an id sent before is a duplicate.")
@cli_workspace
def send_command(source: str, body: str, url: str | None, webhook_id: str | None):
    """POST BODY (JSON, default {}) to /hooks/SOURCE, signed with SOURCE's current secret; prints the answer."""
    try:
        json.loads(body)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="BODY") from exc
    workspace = workspaces.current()
    secrets = workspace.webhook_sources.get(source)
    if not secrets:
        close = did_you_mean(source, workspace.webhook_sources)
        raise click.ClickException(f"workspace {workspace.name!r} has no webhook source {source!r}; "
                                   + (f"{close} Or add it with: " if close else "add it with: ")
                                   + f"flask webhooks add {source}{_workspace_option(workspace.name)}")
    base = (url or settings.web_url()).rstrip("/")
    scope = "" if workspace.name == workspaces.DEFAULT else f"/workspaces/{workspace.name}"
    target = f"{base}{scope}/hooks/{source}"
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    click.echo(f"POST {target}  webhook-id: {webhook_id}")
    answer = _post(target, body, webhook_id, secrets[0])  # the newest secret: the one a sender is given now
    click.echo(_answer_line(answer))
    if answer.status_code >= 300:
        raise click.ClickException(f"the web refused the delivery ({answer.status_code})")


def _workspace_option(name: str) -> str:
    return "" if name == workspaces.DEFAULT else f" --workspace {name}"


def _post(target: str, body: str, webhook_id: str, secret: str) -> requests.Response:
    """The delivery signed as the web verifies it (web/signatures.py), and the web's answer."""
    headers = deliveries.signed_headers(webhook_id, body, [secret], time.time())
    try:
        return requests.post(target, data=body.encode(), headers=headers, timeout=SEND_TIMEOUT)
    except requests.ConnectionError as exc:
        raise click.ClickException(f"nothing answers at {target}: is the web running? `make run` starts it "
                                   "(or give its address with --url)") from exc
    except requests.RequestException as exc:  # a timeout, a URL that is not one
        raise click.ClickException(f"{target}: {exc}") from exc


def _answer_line(answer: requests.Response) -> str:
    """The status and what it means: the event id when stored, the error's message when refused."""
    try:
        said = answer.json()
    except ValueError:
        said = {}
    said = said if isinstance(said, dict) else {}
    if said.get("event_id"):
        meaning = {"accepted": "accepted", "duplicate": "duplicate: this webhook-id was accepted before; "
                                                        "not run again"}.get(said.get("status"), said.get("status"))
        return f"{answer.status_code} {meaning}  event {said['event_id']}  (flask events show {said['event_id']})"
    error = said.get("error") if isinstance(said.get("error"), dict) else {}
    return f"{answer.status_code} {error.get('message') or answer.reason or answer.text[:200]}"
