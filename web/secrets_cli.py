"""`flask secrets rotate`: every stored secret re-sealed under the newest key of SECRETS_KEY."""
from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from web.resources import get_keyring, get_redis
from web.workspace import redis_errors_as_messages
from workers import registry
from workers.secrets import SecretsKeyError, SecretUnreadable

secrets_cli = AppGroup("secrets", help="The secrets kept encrypted in Redis (SECRETS_KEY).")


@secrets_cli.command("rotate")
def rotate_command():
    """Re-seal every secret under the first key of SECRETS_KEY; afterwards the others can be dropped."""
    try:
        with redis_errors_as_messages():
            count = registry.rotate_secrets(get_redis(), get_keyring())
    except (SecretsKeyError, SecretUnreadable) as exc:
        raise click.ClickException(str(exc)) from exc
    newest = get_keyring().newest
    click.echo(f"re-sealed {count} secret(s) under key {newest}; every secret is now under it")
    if len(get_keyring().key_ids) > 1:
        click.echo(f"the other keys of SECRETS_KEY can be dropped once every process runs with {newest} first")
    current_app.logger.info("secrets rotated to key %s: %d", newest, count)
