"""`flask usage [--workspace NAME] [--month YYYY-MM]`: what each workspace used in a month (workers/metering)."""
from __future__ import annotations

import calendar
import json
from datetime import date

import click
from flask.cli import with_appcontext

from web.resources import get_redis
from web.workspace import redis_errors_as_messages
from workers import registry
from workers.metering import usage


@click.command("usage")
@click.option("--workspace", "name", help="Only this workspace (default: every one).")
@click.option("--month", help="The month, YYYY-MM (default: this one, up to today).")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON (the API's shape).")
@with_appcontext
def usage_command(name, month, as_json):
    """Events by source, runs, billable runs, InLoox requests, notifications and deliveries of a month."""
    first, last = _month_span(month)
    with redis_errors_as_messages():
        connection = get_redis()
        names = [name] if name else registry.names(connection)
        if name and name not in registry.names(connection):
            raise click.ClickException(f"no workspace {name!r}")
        reports = [usage.over(connection, each, first, last) for each in names]
    if as_json:
        click.echo(json.dumps(reports, indent=2))
        return
    for report in reports:
        click.echo(_line(report))
    if not reports:
        click.echo("no workspaces")


def _month_span(month: str | None) -> tuple[date, date]:
    today = usage.today()
    if not month:
        return today.replace(day=1), today
    try:
        first = date.fromisoformat(f"{month}-01")
    except ValueError:
        raise click.BadParameter(f"{month!r} is not a month (YYYY-MM)", param_hint="--month") from None
    return first, first.replace(day=calendar.monthrange(first.year, first.month)[1])


def _line(report: dict) -> str:
    events = ", ".join(f"{n} {source}" for source, n in report["events"].items() if n) or "none"
    requests = report["inloox_requests"]
    top = ", ".join(f"{r['rule']} {r['billable_runs']}" for r in report["rules"][:3])
    return (f"{report['workspace']}  {report['from']}..{report['to']}  events: {events}  runs: {report['runs']}  "
            f"billable: {report['billable_runs']}  InLoox: {requests['read']} read, {requests['write']} write  "
            f"notifications: {report['notifications']}  deliveries: {report['deliveries']}"
            + (f"  top rules: {top}" if top else ""))
