"""`flask rules …`: check, test, explain and run rules from the command line (thin over `engine`)."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import click
import redis
from flask import current_app
from flask.cli import AppGroup

from engine import Event, RuleError, explain, load_rules, rule_schema
from web.resources import get_context
from web.workspace import cli_workspace
from engine.documents import parse_documents
from engine.rules import rule_files as rule_files_at
from engine.edm import parse_datetime
from engine.events import event_from_file
from engine.schedules import NextTick, next_tick
from engine.fixtures import fixture_files, run_fixture_file
from workers.manual import ManualRunRefused, manual_event, plan_manual_run, submit_manual_run
from workers import registry, rule_files, workspaces
from workers.secrets import Keyring, SecretsKeyError
from workers.runs import run_id
from workers.scheduler import fire_tick, schedule_event, tick_fired
from workers.settings import DEFAULTS
from workers.worker_context import rule_env

rules_cli = AppGroup("rules", help="Check, test and explain automation rules.")

_PATH = click.argument("path", default="rules", type=click.Path(exists=True, path_type=Path))


@rules_cli.command("check")
@_PATH
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def check_command(path: Path, as_json: bool):
    """Load and validate every rule file under PATH (default rules/)."""
    ruleset = load_rules(path)
    running = _running_state(path)
    if as_json:
        click.echo(json.dumps({"rules": sorted(ruleset.rules), "errors": [_error_dict(e) for e in ruleset.errors],
                               "running": running}))
    else:
        for skipped in ruleset.skipped:  # every error of a rule, then what was left out because of them
            for error in skipped.errors:
                click.echo(error.format(), err=True)
                if error.detail:
                    click.echo(f"    (the YAML parser said: {error.detail})", err=True)
            what = f"rule {skipped.rule_id}" if skipped.rule_id else "the whole file"
            click.echo(f"skipped {what} in {skipped.file}: {len(skipped.errors)} error(s)", err=True)
        broken_now = {Path(skipped.file).name for skipped in ruleset.skipped}
        for entry in running:
            # The stack re-reads the folder every few seconds: right after a fix, its record still says
            # broken, and an "ok" with "none of its rules run" under it reads as a contradiction.
            fixed = "" if entry["file"] in broken_now else \
                " (as the stack last read it: the file loads now, and the stack takes it up within seconds)"
            click.echo(f"{entry['file']}: {_running_words(entry)}{fixed}", err=True)
        for warning in _missing_sources(path, ruleset) + _unread_files(path):
            click.echo(warning, err=True)
    if ruleset.errors:
        raise click.ClickException(f"{len(ruleset.errors)} error(s); {len(ruleset.rules)} rule(s) loaded")
    if not as_json:
        click.echo(f"ok: {len(ruleset.rules)} rule(s) in {path}")


def _unread_files(path: Path) -> list[str]:
    """A warning when a folder holds no rule file but YAML files elsewhere in it (a subfolder, an upper-case suffix)."""
    if not path.is_dir() or rule_files_at(path):
        return []
    elsewhere = [f for f in sorted(path.rglob("*")) if f.is_file() and f.suffix.lower() in (".yaml", ".yml")
                 and "tests" not in f.relative_to(path).parts]
    named = ", ".join(str(f) for f in elsewhere[:3]) + (", …" if len(elsewhere) > 3 else "")
    found = f" (not read: {named})" if elsewhere else ""
    return [f"warning: no rule files in {path}: rules are the *.yaml and *.yml files directly in the folder, "
            f"not in its subfolders{found}"]


def _running_state(path: Path) -> list[dict]:
    """When PATH is the folder the stack runs: its broken files as the stack sees them ([] if Redis is away)."""
    workspace = (current_app.config.get("WORKSPACES") or {}).get(workspaces.DEFAULT)
    if workspace is None or workspace.rules_path is None or Path(workspace.rules_path).resolve() != path.resolve():
        return []
    connection = redis.Redis.from_url(current_app.config["REDIS_URL"], socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return rule_files.broken_files(connection, workspace.prefix)
    except redis.RedisError:
        return []  # checking files needs no stack: say nothing of it
    finally:
        connection.close()


def _missing_sources(path: Path, ruleset) -> list[str]:
    """Warnings for `webhook:` triggers whose source the running stack does not have (every POST would be 404).

    Only when PATH is the folder the stack runs and its registry can be read; a warning, not an
    error: the source may be added after the rules (`flask webhooks add`).
    """
    workspace = (current_app.config.get("WORKSPACES") or {}).get(workspaces.DEFAULT)
    if workspace is None or workspace.rules_path is None or Path(workspace.rules_path).resolve() != path.resolve():
        return []
    connection = redis.Redis.from_url(current_app.config["REDIS_URL"], socket_connect_timeout=0.5, socket_timeout=0.5)
    try:  # read only: checking files applies nothing to the stack's registry
        live = registry.View(connection, Keyring.from_config(current_app.config)).workspaces().get(workspaces.DEFAULT)
    except (redis.RedisError, registry.RegistryUnavailable, SecretsKeyError):
        return []  # no running stack to compare with
    finally:
        connection.close()
    if live is None:
        return []
    warnings = []
    for rule in sorted(ruleset.rules.values(), key=lambda r: (r.file, r.line)):
        for trigger in rule.triggers:
            for index_key in trigger.index_keys:
                kind, source = index_key[0], index_key[-1]
                if trigger.kind == "webhook" and kind == "webhook" and source not in live.webhook_sources:
                    warnings.append(f"{rule.file}:{rule.line}: warning: rule {rule.id}: the running stack has no webhook "
                                    f"source {source!r}, so every POST to /hooks/{source} is answered 404: add it with "
                                    f"`flask webhooks add {source}`")
    return warnings


def _running_words(entry: dict) -> str:
    since = datetime.fromtimestamp(entry["since"], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    what = rule_files.running(entry)
    if what == "last good":
        good = datetime.fromtimestamp(entry["good_since"], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return f"broken since {since}; the stack runs its last good version (from {good})"
    if what == "valid rules":
        return f"broken since {since}; the stack runs the rules in it that load (it never loaded whole)"
    return f"broken since {since}; none of its rules run (it has never loaded)"


@rules_cli.command("test")
@_PATH
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report (each case: file, line, name, passed, problems).")
def test_command(path: Path, as_json: bool):
    """Run the fixture cases in PATH/tests/ against the rules in PATH.

    PATH may also be one fixture file in such a tests/ folder; the rules are then its grandparent.
    """
    rules_path = path if path.is_dir() else path.parent.parent
    ruleset = load_rules(rules_path)
    if not as_json:
        for error in ruleset.errors:
            click.echo(error.format(), err=True)
    failed = total = 0
    cases = []
    for file in fixture_files(path):
        try:
            results = run_fixture_file(file, ruleset)
        except RuleError as exc:
            raise click.ClickException(exc.format()) from exc
        for result in results:
            total += 1
            failed += not result.passed
            cases.append({"file": str(result.file), "line": result.line, "name": result.name,
                          "passed": result.passed, "problems": [str(p) for p in result.problems]})
            if not as_json:
                click.echo(f"{'PASS' if result.passed else 'FAIL'} {result.file}:{result.line} {result.name}")
                for problem in result.problems:
                    click.echo(f"     {problem}")
    if as_json:
        click.echo(json.dumps({"cases": cases, "failed": failed, "errors": [_error_dict(e) for e in ruleset.errors]},
                              indent=2))
    if ruleset.errors or failed:
        raise click.ClickException(f"{failed} of {total} case(s) failed, {len(ruleset.errors)} rule error(s)")
    if not as_json:
        click.echo(f"ok: {total} case(s) passed")


@rules_cli.command("explain")
@click.option("--event", "event_file", required=True, type=click.Path(exists=True, path_type=Path),
              help="A YAML or JSON file holding one event.")
@click.option("--rules", "rules_path", type=click.Path(exists=True, path_type=Path),
              help="The rules (a folder or a file); default: RULES_PATH, as the stack uses.")
@click.option("--now", help="The time to evaluate at (ISO 8601); default: the event's occurred_at.")
@click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE",
              help="A value for env.NAME, over those RULES_ENV allows from the settings (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def explain_command(event_file: Path, rules_path: Path | None, now: str | None, env_pairs: tuple[str, ...],
                    as_json: bool):
    """Show which rules an event would trigger, why the others don't, and the planned operations.

    Exits 1 when a matched rule cannot be planned (its error is in the report).
    """
    rules_path = rules_path or Path(current_app.config.get("RULES_PATH") or "rules")
    event = _read_event(event_file)
    moment = parse_datetime(now) if now else event.occurred_at
    if moment is None or moment.tzinfo is None:
        raise click.BadParameter(f"{now!r} is not an ISO date-time with a time zone", param_hint="--now")
    report = explain(event, load_rules(rules_path), now=moment, env=_rule_env(env_pairs))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(report.lines()))
    failed = [plan.rule_id for plan in report.plans if plan.error]
    if failed:
        raise click.ClickException(f"{len(failed)} matched rule(s) cannot be planned: {', '.join(failed)}")


@rules_cli.command("run")
@cli_workspace
@click.argument("rule_id")
@click.option("--event", "event_file", type=click.Path(exists=True, path_type=Path),
              help="A YAML or JSON file holding the event to run the rule for (default: a manual event).")
@click.option("--tick", is_flag=True, help="Fire the schedule rule's next tick now, as the scheduler would then.")
@click.option("--dry-run", is_flag=True, help="Print the plan (the explain report) and write nothing.")
@click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE",
              help="A value for env.NAME, over those RULES_ENV allows from the settings (repeatable).")
@click.option("--input", "input_pairs", multiple=True, metavar="NAME=VALUE",
              help="A value for input.NAME of the manual event (repeatable); VALUE is read as JSON if it is JSON "
                   "(2, true, null, [1,2]), else as text.")
def run_command(rule_id: str, event_file: Path | None, tick: bool, dry_run: bool, env_pairs: tuple[str, ...],
                input_pairs: tuple[str, ...]):
    """Run RULE_ID now: its event goes to the intake and a worker runs it, like any other event.

    With --event, every rule that event matches runs (the event is simply accepted again). With
    --tick, a schedule rule's next tick fires now, once: the scheduler does not fire that tick again.
    """
    if tick and event_file:
        raise click.UsageError("give --event or --tick, not both")
    if input_pairs and (tick or event_file):
        raise click.UsageError("--input is the manual event's: give it without --event and --tick")
    now = datetime.now(timezone.utc)
    ruleset = get_context().ruleset()
    upcoming = _next_tick(ruleset, rule_id, now) if tick else None
    event = (schedule_event(rule_id, upcoming.at) if upcoming else _read_event(event_file) if event_file
             else manual_event(rule_id, now=now, given={"by": "flask rules run", **_given(input_pairs)}))
    env = _rule_env(env_pairs)
    try:
        plan = plan_manual_run(ruleset, rule_id, event, now=now, env=env)
    except ManualRunRefused as exc:
        # As the dashboard's form asks for a manual rule's input, say how to give it here.
        hint = " (give it with --input NAME=VALUE)" if event.source == "manual" and "input." in str(exc) else ""
        raise click.ClickException(f"{exc}{hint}") from exc
    if dry_run:
        # Without --env the plan shows env.* templates as written: the worker fills them in.
        click.echo("\n".join(explain(event, ruleset, now=now, env=env, defer_env=not env_pairs).lines()))
        click.echo("dry run: nothing was written")
        return
    from web.resources import get_redis  # only a real run needs Redis

    if upcoming:
        fired = fire_tick(get_redis(), event, now=now)
        click.echo(f"{'fired' if fired else 'already fired before'}: the tick of {_tick_words(upcoming)}, "
                   f"event {event.id}, run {run_id(plan)}")
        return
    accepted = submit_manual_run(get_redis(), event)
    click.echo(f"{'queued' if accepted else 'already submitted before'}: event {event.id}, run {run_id(plan)}")


@rules_cli.command("list")
@cli_workspace
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(as_json: bool):
    """The rules the stack runs, their triggers, and each schedule rule's next tick in its time zone."""
    now, ruleset = datetime.now(timezone.utc), get_context().ruleset()
    fired = _fired_ticks()
    listed = [_listed(rule, now, fired) for rule in sorted(ruleset.rules.values(), key=lambda r: r.id)]
    if as_json:
        click.echo(json.dumps({"rules": listed, "skipped": [e.format() for e in ruleset.errors]}, indent=2))
        return
    for entry in listed:
        state = "" if entry["enabled"] else "  (disabled)"
        tick = f"  next tick {entry['next_tick']} ({entry['timezone']})" if entry["next_tick"] else ""
        click.echo(f"{entry['id']}  [{entry['triggers']}]{state}{tick}")
    if ruleset.errors:
        click.echo(f"{len(ruleset.errors)} error(s) in the rule files: see `flask rules check`", err=True)
    if not listed:
        click.echo("no rules")


def _fired_ticks() -> Callable[[str, datetime], bool]:
    """Whether a rule's tick fired already: `--tick` fires the next tick ahead of its time, and listing that
    tick as the next one said it was still to come. Without Redis, none is known to have fired."""
    from web.resources import get_redis

    def fired(rule_id: str, at: datetime) -> bool:
        try:
            return tick_fired(get_redis(), rule_id, at)
        except redis.RedisError:
            return False
    return fired


def _listed(rule, now: datetime, fired: Callable[[str, datetime], bool] = lambda rule_id, at: False) -> dict:
    upcoming = next_tick(rule, now) if rule.enabled else None
    # A tick fired by hand ahead of its time does not fire again at it (a few at most: one per --tick).
    for _ in range(10):
        if upcoming is None or not fired(rule.id, upcoming.at):
            break
        upcoming = next_tick(rule, upcoming.at)
    return {"id": rule.id, "triggers": rule.summary, "enabled": rule.enabled, "file": rule.file, "line": rule.line,
            "next_tick": upcoming.local.isoformat() if upcoming else None,
            "timezone": upcoming.timezone if upcoming else None}


def _next_tick(ruleset, rule_id: str, now: datetime) -> NextTick:
    rule = ruleset.get(rule_id)
    upcoming = next_tick(rule, now) if rule is not None else None
    if upcoming is None:
        raise click.ClickException(f"{rule_id} has no schedule trigger: --tick fires a schedule rule's next tick"
                                   if rule is not None else f"no rule {rule_id!r}")
    return upcoming


def _tick_words(tick: NextTick) -> str:
    return f"{tick.local.isoformat()} ({tick.timezone})"


@rules_cli.command("schema")
def schema_command():
    """Print the rule JSON Schema (the source of schemas/rule.schema.json)."""
    click.echo(json.dumps(rule_schema(), indent=2, ensure_ascii=False))


def _read_event(path: Path) -> Event:
    try:
        (doc,) = parse_documents(path.read_text(encoding="utf-8"), str(path))
        return event_from_file(doc.data)
    except RuleError as exc:
        raise click.ClickException(exc.format()) from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise click.ClickException(f"{path}: not an event: {exc}") from exc


def _rule_env(env_pairs: tuple[str, ...]) -> dict:
    """env.NAME values as the stack's workers see them (RULES_ENV of the settings: the environment, `.env`,
    `var/stack.env`), with the command line's NAME=VALUE pairs over them."""
    allowed = current_app.config.get("RULES_ENV", DEFAULTS["RULES_ENV"])
    return {**rule_env({"RULES_ENV": allowed}), **dict(_pair(p) for p in env_pairs)}


def _pair(text: str, option: str = "--env") -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{text!r} is not NAME=VALUE", param_hint=option)
    return name, value


def _not_json(constant: str):
    raise ValueError(f"{constant} is not a JSON number")


def _given(input_pairs: tuple[str, ...]) -> dict:
    """--input NAME=VALUE pairs as the manual event's input: JSON where VALUE is JSON, else the text."""
    given = {}
    for name, value in (_pair(p, "--input") for p in input_pairs):
        try:
            given[name] = json.loads(value, parse_constant=_not_json)
        except ValueError:  # plain text: `reason=done by hand`, and NaN, which no JSON holds
            given[name] = value
    return given


def _error_dict(error: RuleError) -> dict:
    return {"file": error.file, "line": error.line, "col": error.col, "path": error.path,
            "message": error.message, "hint": error.hint, "rule": error.rule_id, "detail": error.detail}
