"""`flask runs list|show|retry|resume`: the runs API for a terminal."""
from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from engine.errors import did_you_mean
from web.resources import get_context, get_redis
from web.workspace import cli_workspace
from workers import workspaces
from workers.guards import resume_rule
from workers.jobs import RetryRefused, resume_account, retry_run
from workers.runs import STATUSES, list_runs, load_run, load_trace

runs_cli = AppGroup("runs", help="List, inspect and retry rule runs.")


@runs_cli.command("list")
@cli_workspace
@click.option("--rule", help="Only runs of this rule id.")
@click.option("--status", type=click.Choice(STATUSES), help="Only runs in this status.")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(rule, status, limit, as_json):
    """The newest runs first."""
    runs = list_runs(get_redis(), rule=rule, status=status, limit=limit)
    if rule and not runs:
        _check_rule(rule)
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    for run in runs:
        click.echo(f"{run['id']}  {run['created_at'][:19]}  {run['status']:<9}  {run['rule_id']}  {run['reason']}")
    if not runs:
        click.echo("no runs")


def _check_rule(rule_id: str) -> None:
    """Refuse a --rule no active rule has: "no runs" alone reads as a rule that never ran, not as a typo.

    Asked only when nothing is listed: the runs of a rule since removed or renamed are still listed.
    """
    ruleset = get_context().ruleset()
    if rule_id in ruleset.rules:
        return
    hint = did_you_mean(rule_id, ruleset.rules) or (
        "`flask rules list` lists its rules" if ruleset.rules else "it has no rules")
    raise click.ClickException(f"no rule {rule_id!r} in workspace {workspaces.current().name!r}; {hint}")


@runs_cli.command("show")
@cli_workspace
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="The whole record and its event's trace, as JSON.")
def show_command(run_id, as_json):
    """One run: its status and times, and each step's request and InLoox's answer, in short."""
    run = load_run(get_redis(), run_id)
    if run is None:
        raise click.ClickException(f"no run {run_id}")
    if as_json:
        click.echo(json.dumps({"run": run, "trace": load_trace(get_redis(), run["event_id"])}, indent=2))
        return
    click.echo("\n".join(summary_lines(run)))


SHOWN_CHARS = 160  # of a step's request or answer; --json has them whole


def summary_lines(run: dict) -> list[str]:
    """A run for people: a head line, then two or three lines per step."""
    lines = [f"{run['id']}  {run['rule_id']}  {run['status']}" + (f": {run['reason']}" if run.get("reason") else ""),
             f"  event {run['event_id']}  created {run['created_at'][:19]}  updated {run['updated_at'][:19]}"
             f"  attempts {run.get('attempts', 0)}"]
    for step in run["steps"]:
        took = f" in {step['ms']} ms" if step.get("ms") is not None else ""
        target = (step.get("request") or {}).get("entity_set", "")
        lines.append(f"  step {step['index']} {step.get('id') or ''}: {step.get('verb')} {target} → {step['status']}{took}")
        if step.get("request") is not None:
            lines.append(f"    sent:   {_short(step['request'])}")
        if step["status"] == "error":
            lines.append(f"    error:  {step.get('error_type')}: {step.get('error')}")
        elif step.get("output") is not None:
            lines.append(f"    answer: {_short(step['output'])}")
        elif step.get("reason"):
            lines.append(f"    reason: {step['reason']}")
    if not run["steps"]:
        lines.append("  no step has run yet")
    return lines


def _short(value) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + f"… ({len(text)} chars; --json for all)"


@runs_cli.command("retry")
@cli_workspace
@click.argument("run_id")
@click.option("--from-start", is_flag=True, help="Begin at the first step (landed writes are not repeated).")
def retry_command(run_id, from_start):
    """Queue a failed or paused run again."""
    try:
        run = retry_run(get_redis(), run_id, from_start=from_start)
    except RetryRefused as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{run['id']} queued ({run['reason']})")


@runs_cli.command("resume")
@cli_workspace
@click.option("--rule", "rule_id", help="Resume this rule, paused by the loop guard, instead of the account.")
def resume_command(rule_id):
    """Lift the account's pause (InLoox refused the token) and queue its paused runs again."""
    if rule_id:
        state = "resumed" if resume_rule(get_redis(), rule_id) else "was not paused"
        click.echo(f"rule {rule_id} {state}")
        return
    paused = resume_account(get_redis())
    click.echo(f"resumed; {len(paused)} paused run(s) queued again")
