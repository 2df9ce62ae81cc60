"""`flask poller status|release`: what the change poller sees, and letting a held flood through."""
from __future__ import annotations

from datetime import datetime, timezone

import click
from flask.cli import AppGroup

from engine.edm import parse_datetime
from inloox.changes import CHANGE_FEEDS
from web.resources import get_redis
from web.workspace import cli_workspace
from workers import workspaces
from workers.poll import release_held
from workers.snapshots import SnapshotStore

poller_cli = AppGroup("poller", help="Inspect the InLoox change poller and release held floods.")


@poller_cli.command("status")
@cli_workspace
def status_command():
    """Per watched entity set: the cursor, how far behind now it is, entities known, changes held."""
    connection = get_redis()
    now = datetime.now(timezone.utc)
    for entity_set in CHANGE_FEEDS:
        store = SnapshotStore(connection, entity_set, workspaces.current().prefix)
        cursor = store.cursor()
        if cursor is None:
            continue
        lag = (now - parse_datetime(cursor)).total_seconds()
        held = connection.llen(workspaces.key(f"poll:{entity_set}:held"))
        click.echo(f"{entity_set:<10} cursor {cursor}  lag {lag:.0f}s  known {connection.hlen(store.snap_key)}"
                   f"  held {held}")


@poller_cli.command("release")
@cli_workspace
@click.argument("entity_set")
def release_command(entity_set):
    """Run the changes held back by flood protection for ENTITY_SET (e.g. Task)."""
    if entity_set not in CHANGE_FEEDS:
        raise click.ClickException(f"{entity_set} is not watched; one of {', '.join(CHANGE_FEEDS)}")
    click.echo(f"{release_held(get_redis(), entity_set)} held change(s) of {entity_set} handed over")
