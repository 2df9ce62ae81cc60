"""`flask poller status|release`: what the change poller sees, and letting a held flood through."""
from __future__ import annotations

from datetime import datetime, timezone

import click
from flask.cli import AppGroup

from inloox.changes import observation
from web.resources import get_redis
from web.workspace import cli_workspace
from workers.poller.poll import release_held
from workers.poller.status import WHOLE, poll_status, troubles

poller_cli = AppGroup("poller", help="Inspect the InLoox change poller and release held floods.")


@poller_cli.command("status")
@cli_workspace
def status_command():
    """Per watched entity set: how it is polled, how stale our view is (lag), what a scan costs, changes held, and
    which polls fail now and why."""
    whole = troubles(get_redis()).get(WHOLE)
    if whole:
        click.echo(f"no poll works (since {whole['since']}, last {whole['at']}): {whole['error']}")
    for entry in poll_status(get_redis(), now=datetime.now(timezone.utc)):
        click.echo("  ".join([f"{entry['entity_set']:<16}", _describe(entry)]))
        if entry["failing"]:
            click.echo(f"{'':<16}  failing since {entry['failing']['since']} (last {entry['failing']['at']}): "
                       f"{entry['failing']['error']}")


def _describe(entry: dict) -> str:
    """One status line after the set's name, e.g. `scan every 240s (quiet 2m)  lag 12s  known 250  3 requests per scan  held 0`.

    `every` is the set's interval now: POLL_INTERVAL (or its scan interval) while it is lively, up to
    the ceiling while it is quiet.
    """
    every = f" every {entry['every']:g}s" if entry["every"] else ""
    if entry["every"] and entry.get("quiet_seconds"):
        every += f" (quiet {_duration(entry['quiet_seconds'])})"
    lag = "not watched" if not entry["watched"] else (
        "lag ?" if entry["lag_seconds"] is None else f"lag {entry['lag_seconds']:.0f}s")
    parts = [f"{entry['method']}{every}", lag, f"known {entry['known']}"]
    if entry["requests_per_scan"] is not None:
        count = entry["requests_per_scan"]
        parts.append(f"{count} request{'s' if count != 1 else ''} per scan")
    elif entry["cursor"]:
        parts.append(f"cursor {entry['cursor']}")
    parts.append(f"held {entry['held']}")
    return "  ".join(parts)


def _duration(seconds: float) -> str:
    """`45s`, `12m`, `3h`: how long a set has been quiet, roughly."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 3600 else f"{seconds / 3600:.0f}h"


@poller_cli.command("release")
@cli_workspace
@click.argument("entity_set")
def release_command(entity_set):
    """Run the changes held back by flood protection for ENTITY_SET (e.g. Task)."""
    if observation(entity_set) is None:
        raise click.ClickException(f"{entity_set} is not an entity set the poller can watch")
    click.echo(f"{release_held(get_redis(), entity_set)} held change(s) of {entity_set} handed over")
