"""`flask events list|show|replay` and `flask rules whatif`: the event log for a terminal."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import click
from flask.cli import AppGroup, with_appcontext

from engine.rules import load_rules
from engine.whatif import whatif
from web.events import replay_summary, selected_entries, since_epoch
from web.resources import get_context, get_redis
from web.workspace import cli_workspace
from workers import event_history
from workers.replay import (ALREADY, NO_MATCH, OUTCOMES, STARTED, TRACE_GONE, WAITING, ReplayRefused,
                            replay)

events_cli = AppGroup("events", help="The event log: list and inspect accepted events, replay them.")


@events_cli.command("list")
@cli_workspace
@click.option("--since", help="Only events accepted this long ago or later (10m, 1h, 7d).")
@click.option("--source", help="Only events of this source (inloox, webhook, chat, schedule, manual; damaged: entries "
                                "that cannot be decoded).")
@click.option("--kind", help="Only events of this kind (updated, a hook's name, a command …).")
@click.option("--unmatched", is_flag=True, help="Only events no rule ran for (unmatched or not handled).")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(since, source, kind, unmatched, limit, as_json):
    """Accepted events, newest first, with what became of each."""
    found = event_history.history(get_redis(), since=_since(since), source=source, kind=kind, unmatched=unmatched,
                                  limit=limit)
    if as_json:
        click.echo(json.dumps([e.summary() for e in found], indent=2))
        return
    for logged in found:
        click.echo(printable(_line(logged.summary())))
    if not found:
        click.echo("no events")


@events_cli.command("show")
@cli_workspace
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="The event, its summary and its whole trace, as JSON.")
def show_command(event_id, as_json):
    """One event: payload, acceptance, the rule-set version it met, and each rule's outcome."""
    found = event_history.find(get_redis(), event_id)
    if found is None:
        raise click.ClickException(f"no event {event_id} in the event log (kept {event_history.KEPT_FOR})")
    if as_json:
        click.echo(json.dumps({"event": found.event, "summary": found.summary(), "trace": found.trace},
                              indent=2, default=str))
        return
    click.echo("\n".join(map(printable, show_lines(found))))


@events_cli.command("replay")
@cli_workspace
@click.argument("event_ids", nargs=-1)
@click.option("--since", help="Replay every event accepted this long ago or later (10m, 1h, 7d).")
@click.option("--rule", "rule_id", help="Only start runs of this rule.")
@click.option("--force", is_flag=True, help="Run rules again even for events they already ran for.")
@click.option("--dry-run", is_flag=True, help="Say what would start; start nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def replay_command(event_ids, since, rule_id, force, dry_run, as_json):
    """Match logged events against the current rules and start the runs they make now.

    A rule runs at most once per event: events it already ran for start nothing (unless --force).
    """
    try:
        entries = selected_entries(get_redis(), since=since, event_ids=list(event_ids))
        done = replay(get_context(), entries, rule=rule_id, force=force, dry_run=dry_run, by="cli")
    except ReplayRefused as exc:
        raise click.ClickException(str(exc)) from exc
    summary = replay_summary(done, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for item in done:
        click.echo("\n".join(map(printable, replayed_lines(item, dry_run=dry_run, rule=rule_id))))
    click.echo(replay_total(summary))


def replayed_lines(item, *, dry_run: bool, rule: str | None) -> list[str]:
    """What became of one replayed event: a line per run, or the one reason nothing started."""
    lines = [f"{item.event_id}  {'would start' if dry_run else 'started'} {run_id}" for run_id in item.started]
    lines += [f"{item.event_id}  already ran: {run_id}" for run_id in item.already]
    if item.skipped:
        lines.append(f"{item.event_id}  left alone: {item.skipped}")
    elif not lines:
        lines.append(f"{item.event_id}  {f'rule {rule} does not match' if rule else 'no rule matches'} it now")
    return lines


def replay_total(summary: dict) -> str:
    """One line whose counts add up to the events listed, then how many runs started."""
    dry, counts = summary["dry_run"], summary["outcomes"]
    words = {**_OUTCOME_WORDS, STARTED: "would start a run" if dry else "started a run"}
    parts = ", ".join(f"{counts[outcome]} {words[outcome]}" for outcome in OUTCOMES)
    return f"{summary['events']} event(s): {parts}; {'would start' if dry else 'started'} {summary['started']} run(s)"


_OUTCOME_WORDS = {ALREADY: "already ran", NO_MATCH: "matched no rule now", WAITING: "waiting for a worker",
                  TRACE_GONE: "left alone (trace gone)"}


@click.command("whatif")
@with_appcontext  # added to the `rules` group by app.py; plain click commands get no app context
@cli_workspace
@click.option("--rules", "rules_path", required=True, type=click.Path(exists=True, path_type=Path),
              help="The candidate rules: a folder or one file.")
@click.option("--since", default="7d", show_default=True, help="Logged events accepted this long ago or later.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def whatif_command(rules_path, since, as_json):
    """What the candidate rules would do differently with the logged events. Runs nothing, writes nothing."""
    candidate = load_rules(rules_path)
    if candidate.errors:
        raise click.ClickException("the candidate rules do not load:\n" + "\n".join(map(str, candidate.errors)))
    ctx = get_context()
    entries = event_history.entries_since(get_redis(), _since(since))
    events = ((e.event, datetime.fromtimestamp(e.accepted_at, timezone.utc)) for e in entries)
    report = whatif(events, candidate=candidate, active=ctx.rules.ruleset(), env=ctx.rule_env)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo("\n".join(map(printable, whatif_lines(report.to_dict()))))


def whatif_lines(report: dict) -> list[str]:
    lines = [f"{report['events']} logged event(s); {len(report['changed_events'])} would have another outcome"]
    for rule in report["rules"]:
        lines.append(f"  {rule['rule_id']}: {rule['new']} new match(es), {rule['lost']} lost, "
                     f"{rule['changed']} with another plan")
        for kind in ("new", "lost", "changed"):
            if rule["examples"][kind]:
                lines.append(f"    {kind}: {', '.join(rule['examples'][kind])}")
    if not report["rules"]:
        lines.append("  no rule's outcome changes")
    return lines


def show_lines(found: event_history.LoggedEvent) -> list[str]:
    s, trace = found.summary(), found.trace or {}
    lines = [_line(s), f"  accepted {_when(s['accepted_at'])}  entry {s['entry']}  rules {s['ruleset_version'] or '?'}"]
    for broken in s["broken_files"]:
        state = "its last good version ran" if broken["status"] == "kept" else "not loaded"
        lines.append(f"  while {broken['file']} was broken ({state})")
    if s["error"]:
        lines.append(f"  error: {s['error']}")
    for outcome in trace.get("rules", ()):
        verdict = (f"matched: run {outcome['run']}" if outcome.get("run") else
                   f"matched, not run: {outcome['error']}" if outcome.get("error") else
                   "matched" if outcome.get("matched") else f"did not match: {outcome.get('reason')}")
        lines.append(f"  rule {outcome.get('rule')}: {verdict}")
    if trace and not trace.get("rules") and not s["error"]:
        lines.append(f"  no rule was a candidate ({trace.get('not_candidates', 0)} rule(s) listen to other events)")
    for note in s["replays"]:
        lines.append(f"  replayed {note['at'][:19]}: started {len(note['runs'])} run(s)"
                     + (" (forced)" if note.get("forced") else ""))
    event = found.event
    # "data", not "payload": a webhook's event has a `payload` of its own, and `payload: {"payload": …}` read as a
    # mistake to a person seeing it first.
    lines.append("  data: " + json.dumps({k: event.get(k) for k in ("changes", "payload", "actor") if event.get(k)},
                                         default=str, ensure_ascii=False)[:400])
    return lines


def printable(line: str) -> str:
    """`line` as a terminal shows it safely: control and format characters and lone surrogates (which no
    terminal encoding can write) as escapes, so an event's text can neither crash a command nor steer
    the terminal (colours, clearing the screen, right-to-left overrides)."""
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in line)


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _line(s: dict) -> str:
    what = " ".join(str(p) for p in (s["source"], s["kind"], s.get("entity_set") or "", s.get("key") or "") if p)
    runs = f" {len(s['runs'])} run(s)" if s["runs"] else ""
    return f"{s['id']}  {_when(s['accepted_at'])}  {s['status']:<11}{runs}  {what}"


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _since(text: str | None) -> float | None:
    try:
        return since_epoch(text)
    except ReplayRefused as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
