"""Usage: what each workspace used, per plan (workers/metering).

    GET /workspaces/<ws>/usage?from=&to=   one workspace (its admin token or the operator's)
    GET /usage?from=&to=                   every workspace (the operator's token)

`from` and `to` are UTC days (YYYY-MM-DD), both included; by default this month up to today.
The dashboard's Usage page (`usage_page`, served by the `ui` blueprint) draws the same counts.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import redis
from flask import Blueprint, abort, current_app, jsonify, render_template, request

from web import charts
from web.openapi import check_query
from web.resources import get_redis
from web.workspace import WORKSPACE_PREFIX, require_admin_token, require_view_of_every_workspace
from workers import eventlog, registry, runs, workspaces
from workers.metering import usage
from workers.metering.limits import WAITING

bp = Blueprint("usage", __name__)
bp.before_request(check_query)

PAGE_DAYS = 30  # days the dashboard's chart shows
TOP_RULES = 10


@bp.get("/usage")
def every_workspace():
    """Each workspace's usage over the span (the operator's token)."""
    require_view_of_every_workspace()
    first, last = _span()
    connection = get_redis()
    return jsonify(workspaces=[_over(connection, name, first, last) for name in registry.names(connection)])


def _over(connection, name: str, first, last) -> dict:
    """One workspace's report, or what kept it from being read: a count Redis refuses (a key of another type) or that is
    no number is that workspace's, not a 500 of every workspace's report. Redis away still fails the request."""
    try:
        return usage.over(connection, name, first, last)
    except (redis.ResponseError, ValueError) as exc:
        current_app.logger.warning("usage of workspace %s cannot be read: %s", name, exc)
        return {"workspace": name, "error": f"its usage cannot be read: {exc}"}


@bp.get(WORKSPACE_PREFIX + "/usage")
def workspace_usage():
    """One workspace's usage over the span."""
    require_admin_token()
    first, last = _span()
    return jsonify(usage.over(get_redis(), workspaces.current().name, first, last))


def usage_page():
    """The dashboard's Usage page: this month against the limits, a chart per day, the top rules."""
    connection, workspace = get_redis(), workspaces.current()
    last = usage.today()
    first = last - timedelta(days=PAGE_DAYS - 1)
    per_day = usage.read_days(connection, workspace.name, usage.days(first, last))
    month = usage.over(connection, workspace.name, last.replace(day=1), last)
    window = charts.Window(first=_minute(first), minutes=24 * 60, count=PAGE_DAYS)

    def series(label, field, colour=""):
        return charts.Series(label, {_minute(d): counts.get(field, 0) for d, counts in per_day.items()}, colour)

    figures = {
        "runs": charts.bars([series("runs", "runs"), series("billable runs", "billable_runs", charts.PALETTE[1])],
                            window),
        "events": charts.bars([series(f"{s} events", usage.event_field(s)) for s in usage.SOURCES], window),
    }
    return render_template("ui/usage.html", month=month, figures=figures, limits=_limits(workspace, month),
                           waiting=connection.zcard(workspaces.key(WAITING)), top=month["rules"][:TOP_RULES],
                           days=PAGE_DAYS)


def _limits(workspace: workspaces.Workspace, month: dict) -> list[dict]:
    """The plan limits set, with how much of each is used (this month's runs; today's events)."""
    today = get_redis().hmget(usage.day_key(workspace.name, usage.today()),
                              [usage.event_field(s) for s in usage.SOURCES])
    used = {"runs_per_month": month["billable_runs"], "events_per_day": sum(int(n or 0) for n in today)}
    if workspace.limits.backlog_limit:  # what the limit counts (workers/eventlog.py), not its kept count
        used["backlog_limit"] = (eventlog.backlog(get_redis(), workspace=workspace.name)
                                 + get_redis().zcard(workspaces.key(runs.ACTIVE)))
    shown = []
    for name, label in (("runs_per_month", "billable runs this month"), ("events_per_day", "events today"),
                        ("backlog_limit", "events and runs waiting")):
        limit = getattr(workspace.limits, name)
        if limit:
            shown.append({"name": name, "label": label, "limit": limit, "used": used[name],
                          "percent": round(100 * used[name] / limit)})
    return shown


def _span() -> tuple[date, date]:
    """The days asked for (`from`, `to`), checked: real dates, in order, at most KEEP_DAYS apart."""
    last = _day("to") or usage.today()
    first = _day("from") or last.replace(day=1)
    if first > last:
        abort(400, f"from ({first}) is after to ({last})")
    if (last - first).days >= usage.KEEP_DAYS:
        abort(400, f"from {first} to {last} is over {usage.KEEP_DAYS} days, the most kept")
    return first, last


def _day(name: str) -> date | None:
    text = request.args.get(name)
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        abort(400, f"query parameter {name}: {text!r} is not a date (YYYY-MM-DD)")


def _minute(day: date) -> int:
    return int(datetime.combine(day, datetime.min.time(), timezone.utc).timestamp() // 60)
