"""Rule tests (`flask rules test`): fixture files of events and the plans they must produce.

A fixture file is a YAML list of cases:

    - name: done task books its effort
      now: 2025-04-01T10:00:00Z          # optional, default: the event's occurred_at
      env: {TEAM_CHANNEL_URL: json://hooks.example.test/x}
      event: {source: inloox, kind: updated, entity_set: Task, key: …, changes: {IsDone: [false, true]}, entity: {…}}
      outputs:                            # optional: what steps return (by step id), e.g. inloox.get data;
        book: {TimeEntryId: …}            # given, deferred steps are rendered as the worker would
      rows: [{TaskItemId: …, ContactId: …}]   # optional: what a rule's for_each query finds; the plan then
                                          # gets `items`, one per item: {key, operations} rendered per item
      expect:                             # exactly these rules plan; each plan must contain this subset
        log-time-when-task-done: {operations: [{verb: create, params: {entity_set: TimeEntry}}, {verb: notify}]}
      reasons:                            # optional: rules that must not match, and words of the reason
        other-rule: "wanted gt 0"
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .documents import Document, parse_documents
from .edm import parse_datetime
from .errors import StepSkipped, TemplateError
from .events import event_from_file
from .explain import explain
from .iteration import iterate
from .plan import Plan, render_deferred
from .rules import RULE_SUFFIXES

_UNDEFINED_ENV = re.compile(r"\benv\.(\w+) is undefined")


@dataclass
class CaseResult:
    """One fixture case: where it is, and what did not come out as expected (empty: passed)."""

    file: str
    line: int
    name: str
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def fixture_files(path: str | Path) -> list[Path]:
    """Fixture files: the file itself, or YAML files in `<path>/tests/` (or in `path` if it has none)."""
    path = Path(path)
    if path.is_file():
        return [path]
    folder = path / "tests" if (path / "tests").is_dir() else path
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in RULE_SUFFIXES)


def run_fixture_file(path: Path, ruleset) -> list[CaseResult]:
    """Run every case of one fixture file; raises RuleError if the file itself is malformed."""
    docs = parse_documents(path.read_text(encoding="utf-8"), str(path))
    results = []
    for doc in docs:
        if not isinstance(doc.data, list):
            raise doc.error((), "a fixture file is a list of cases")
        results += [_run_case(doc, i, ruleset) for i in range(len(doc.data))]
    return results


def _run_case(doc: Document, index: int, ruleset) -> CaseResult:
    case = doc.data[index]
    result = CaseResult(doc.file, doc.locate((index,))[0], str(case.get("name", f"case {index}")))
    try:
        event = event_from_file(case["event"])
    except (KeyError, TypeError, ValueError) as exc:
        raise doc.error((index, "event"), f"not an event: {exc}") from exc
    now = parse_datetime(case.get("now")) if case.get("now") else event.occurred_at
    if now is None:
        raise doc.error((index, "now"), f"{case.get('now')!r} is not an ISO date-time")
    report = explain(event, ruleset, now=now, env=case.get("env") or {})
    _compare(report, case, result)
    return result


def _compare(report, case: dict, result: CaseResult) -> None:
    expected = case.get("expect") or {}
    outcomes = {o.rule_id: o for o in report.outcomes}
    planned = {rid for rid, o in outcomes.items() if o.reason is None}
    for rid in sorted(planned - set(expected)):
        # Typically a rule just added whose trigger an older case's event also fires.
        result.problems.append(f"{rid} matched but was not expected (expect: names every rule that plans for "
                               f"this event; add `{rid}: {{}}` to it if the match is right)")
    for rid, want in expected.items():
        o = outcomes.get(rid)
        if o is None or o.reason is not None:
            why = o.reason if o else "not a candidate for this event"
            result.problems.append(f"{rid} was expected to match: {why}")
            continue
        if o.plan is None and "error" not in (want or {}):
            # Said in words: compared as a plan, the error showed only as "plan.operations is missing".
            result.problems.append(f"{rid} matched but could not be planned: {o.error}{_env_hint(o.error, case)}")
            continue
        got = _run(o.plan, case) if o.plan else {"error": o.error}
        result.problems += [f"{rid}: {p}" for p in _subset_problems(want or {}, got, "plan")]
    for rid, words in (case.get("reasons") or {}).items():
        o = outcomes.get(rid)
        reason = o.reason if o else "not a candidate for this event"
        if reason is None or words not in reason:
            result.problems.append(f"{rid}: reason {reason!r} does not contain {words!r}")


def _env_hint(error: str | None, case: dict) -> str:
    """A case's rules read only the case's own `env:` (not the stack's settings, as explain and run do)."""
    missing = _UNDEFINED_ENV.search(error or "")
    if not missing:
        return ""
    given = ", ".join(sorted(case.get("env") or {})) or "nothing"
    return (f" (a fixture's rules read env only from the case's env:, which gives {given}; "
            f"add e.g. env: {{{missing[1]}: ...}} to the case)")


def _run(plan: Plan, case: dict) -> dict:
    """The plan as a dict; with `outputs`, deferred steps rendered and skipped ones marked as the worker would.

    With `rows` and a for_each plan, `items` holds each item's plan, rendered the same way.
    """
    got = plan.to_dict()
    if plan.for_each and "rows" in case:
        got["items"] = [{"key": item.item_key, "item": item.bindings["item"], **_rendered(item, case)}
                        for item in iterate(plan, case["rows"] or [])]
    return {**got, **_rendered(plan, case)} if "outputs" in case and not plan.for_each else got


def _rendered(plan: Plan, case: dict) -> dict:
    """{"operations": […]} with deferred steps rendered, given the case's `outputs` (if any)."""
    got = plan.to_dict()
    given, outputs = case.get("outputs") or {}, {}
    for op, op_dict in zip(plan.operations, got["operations"]):
        try:
            op_dict.update(render_deferred(plan, op, outputs, env=case.get("env") or {}).to_dict())
        except StepSkipped as exc:
            op_dict["skipped"] = exc.message
            continue
        except TemplateError as exc:
            op_dict["error"] = str(exc)
        if op.step_id in given:
            outputs[op.step_id] = given[op.step_id]
    return {"operations": got["operations"]}


def _subset_problems(want: Any, got: Any, path: str) -> list[str]:
    """Where `want` is not contained in `got`: mappings by key, lists item by item, else equality."""
    if isinstance(want, dict) and isinstance(got, dict):
        return [p for k, v in want.items()
                for p in (_subset_problems(v, got[k], f"{path}.{k}") if k in got else [f"{path}.{k} is missing"])]
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{path} has {len(got)} item(s), expected {len(want)}"]
        return [p for i, (w, g) in enumerate(zip(want, got)) for p in _subset_problems(w, g, f"{path}[{i}]")]
    return [] if want == got else [f"{path} was {got!r}, expected {want!r}"]
