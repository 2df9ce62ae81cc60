"""Loading rule files: YAML → JSON Schema → compiled `Rule`s (`when` / `if` / `then`), with file:line:col errors.

A broken file or rule never stops the valid ones from loading: `Ruleset.errors` and
`Ruleset.skipped` say what was left out. `strict=True` refuses the whole set instead.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from .actions import ACTIONS
from .conditions import Checker, compile_condition
from .documents import Budget, Document, parse_documents
from .durations import parse_duration
from .errors import RuleError, RulesetError, did_you_mean
from .iteration import ForEach, compile_for_each
from .scope import Compilation, Root, Scope
from .templates import Template, is_template
from .triggers import TRIGGERS, Trigger, compile_trigger
from .violations import schema_problems

RULE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Step:
    """One compiled step: its action, its literal arguments and the templates inside them."""

    index: int
    id: str
    action: str
    args: dict = field(hash=False)
    templates: tuple[tuple[tuple, Template], ...] = ()  # (path inside args, template)
    condition: Any = field(default=None, hash=False)  # the step's own `if:` as written; checked when it runs

    @functools.cached_property  # asked every event
    def needs(self) -> tuple[str, ...]:
        """Ids of earlier steps whose outputs this step's templates read."""
        return tuple(dict.fromkeys(s for _, t in self.templates for s in t.steps))


@dataclass(frozen=True)
class Rule:
    """A loaded rule; it fires when any of its `triggers` matches; `version` changes with its content."""

    id: str
    version: str
    file: str
    line: int
    description: str
    triggers: tuple[Trigger, ...]
    condition: Checker | None
    steps: tuple[Step, ...]
    enabled: bool = True
    mode: str = "live"
    allow_chained: bool = False
    retry: dict = field(default_factory=dict, hash=False)
    concurrency: dict | None = field(default=None, hash=False)
    concurrency_key: Template | None = None
    rate_limit: dict | None = field(default=None, hash=False)
    for_each: ForEach | None = None  # the steps run once per item of this query (see engine.iteration)

    @property
    def summary(self) -> str:
        """The triggers in a few words, e.g. 'Task updated changing IsDone | manual run'."""
        return " | ".join(t.summary for t in self.triggers)

    def trigger_for(self, event) -> Trigger | None:
        """The first trigger the event matches, or None."""
        return next((t for t in self.triggers if t.check(event) is None), None)


@dataclass
class Skipped:
    """A rule (or a whole file, when rule_id is "") that did not load, with its errors."""

    file: str
    rule_id: str
    errors: list[RuleError]


@dataclass
class Ruleset:
    """The loaded rules by id, what was skipped, and the trigger index used for matching."""

    rules: dict[str, Rule]
    skipped: list[Skipped] = field(default_factory=list)

    def __post_init__(self):
        from .match import RuleIndex  # match reads rules; rules build the index once
        self.index = RuleIndex(self.rules.values())

    @property
    def errors(self) -> list[RuleError]:
        return [e for s in self.skipped for e in s.errors]

    def get(self, rule_id: str) -> Rule | None:
        return self.rules.get(rule_id)

    def schedules(self, *, disabled: bool = False) -> list[Rule]:
        """Enabled rules with a schedule trigger (see `rule.triggers[i].cron`), for the scheduler; with `disabled`,
        the disabled ones too."""
        return [r for r in self.rules.values() if (r.enabled or disabled) and any(t.cron for t in r.triggers)]


def rule_files(path: str | Path) -> list[Path]:
    """The rule files at `path`: the file itself, or *.yaml/*.yml directly in the folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in RULE_SUFFIXES)


def load_rules(paths: str | Path | Iterable[str | Path], *, strict: bool = False) -> Ruleset:
    """Load every rule file under `paths`; raises RulesetError in strict mode if anything failed."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    sources = [(str(f), f.read_bytes()) for p in paths for f in rule_files(p)]  # parse_documents decodes
    return load_texts(sources, strict=strict)


def load_texts(sources: Iterable[tuple[str, str | bytes]], *, strict: bool = False) -> Ruleset:
    """Load rules from (file name, YAML text or its bytes) pairs; the pure core of load_rules.

    The files share one budget for what their YAML aliases expand to (`engine.documents.Budget`).
    """
    return load_parsed(parse_texts(sources), strict=strict)


def parse_texts(sources: Iterable[tuple[str, str | bytes]], *,
                check_schema: bool = False) -> list[tuple[str, list[Document] | RuleError]]:
    """Each file's YAML documents, or the RuleError that refused the file: `load_texts`'s first half, its YAML
    (~70 % of its CPU; the schema check, with `check_schema`, ~20 % more: `Document.schema_clean`)."""
    sources = [(file, _decoded(text)) for file, text in sources]
    budget, parsed = Budget.shared([text for _, text in sources]), []
    for file, text in sources:
        try:
            docs = parse_documents(text, file, budget=budget)
        except RuleError as exc:
            parsed.append((file, exc))
            continue
        for doc in docs if check_schema else ():
            doc.schema_clean = not schema_problems(doc)
        parsed.append((file, docs))
    return parsed


def load_parsed(parsed: Iterable[tuple[str, list[Document] | RuleError]], *, strict: bool = False) -> Ruleset:
    """The rules of `parse_texts`'s documents: `load_texts`'s second half."""
    rules: dict[str, Rule] = {}
    skipped: list[Skipped] = []
    for file, docs in parsed:
        if isinstance(docs, RuleError):
            skipped.append(Skipped(file, "", [docs]))
            continue
        for doc in docs:
            _load_document(doc, rules, skipped)
    if strict and skipped:
        raise RulesetError([e for s in skipped for e in s.errors])
    return Ruleset(rules, skipped)


def _decoded(text: str | bytes) -> str | bytes:
    """The text of a source, its size known before any is parsed; bytes that are not UTF-8 are left
    for parse_documents to refuse at their line."""
    if isinstance(text, str):
        return text
    try:
        return text.decode("utf-8-sig")
    except UnicodeDecodeError:
        return text


def _load_document(doc: Document, rules: dict[str, Rule], skipped: list[Skipped]) -> None:
    rule_id = doc.data.get("id", "") if isinstance(doc.data, dict) else ""
    rule_id = rule_id if isinstance(rule_id, str) else ""
    problems = [] if doc.schema_clean else schema_problems(doc)
    errors = [error for _, error in problems]
    if not errors and rule_id in rules:
        first = rules[rule_id]
        errors = [doc.error(("id",), f"duplicate rule id {rule_id!r}",
                            hint=f"first defined at {first.file}:{first.line}", rule_id=rule_id)]
    # The parts the schema did accept are compiled too, so that every mistake shows at once.
    compiled = compile_rule(doc, invalid=[path for path, _ in problems]) if isinstance(doc.data, dict) else []
    if isinstance(compiled, Rule) and not errors:
        rules[rule_id] = compiled
        return
    errors += compiled if isinstance(compiled, list) else []
    skipped.append(Skipped(doc.file, rule_id, _in_file_order(errors)))


def _in_file_order(errors: list[RuleError]) -> list[RuleError]:
    """Errors sorted by line and column, each once (two checks may find the same mistake)."""
    unique = {error.format(): error for error in errors}
    return sorted(unique.values(), key=lambda e: (e.line, e.col))


def rule_version(data: Any) -> str:
    """Hash of a rule's canonical content: same rule, same version, whatever the formatting."""
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def compile_rule(doc: Document, *, invalid: Iterable[tuple] = ()) -> Rule | list[RuleError]:
    """A Rule from a document, or every problem found in it, in file order.

    Each trigger, condition clause, step and option compiles on its own, so one mistake does not
    hide the next. Parts at or around the `invalid` paths (where the schema failed) are not compiled;
    the rule is then never built, but its other parts are still checked.
    """
    d, invalid = doc.data, set(invalid)
    rule_id = d["id"] if isinstance(d.get("id"), str) else ""
    comp = Compilation(doc, Scope(), rule_id)
    triggers, scope = _compile_triggers(d.get("when"), comp, invalid)
    comp = comp.within(scope)
    condition = _compile_if(d["if"], comp, invalid) if "if" in d else None
    for_each = None
    if "for_each" in d:  # the steps (not the rule's `if:`, checked before the query runs) may read `item`
        if _untouched(("for_each",), invalid):
            for_each = comp.attempt(compile_for_each, d["for_each"], comp, _compile_step)
        item = for_each.root() if for_each else Root("free")
        comp = comp.within(replace(comp.scope, roots={**comp.scope.roots, "item": item}))
    steps = _compile_steps(d.get("then"), comp, invalid)
    _check_options(d, comp, invalid)
    concurrency = d.get("concurrency")
    key = concurrency.get("key") if isinstance(concurrency, dict) else None
    if isinstance(key, str) and _untouched(("concurrency", "key"), invalid):
        key = comp.attempt(comp.check_template, ("concurrency", "key"), key)
    if comp.errors or invalid:
        return _in_file_order(comp.errors)
    return Rule(
        id=d["id"], version=rule_version(d), file=doc.file, line=doc.locate(())[0],
        description=d.get("description", ""), triggers=tuple(triggers), condition=condition, steps=steps,
        enabled=d.get("enabled", True), mode=d.get("mode", "live"), allow_chained=d.get("allow_chained", False),
        retry=d.get("retry", {}), concurrency=concurrency, concurrency_key=key,
        rate_limit=d.get("rate_limit"), for_each=for_each,
    )


def _untouched(part: tuple, invalid: set[tuple]) -> bool:
    """Whether no schema error lies at, inside or around this part of the rule."""
    return not any(path[:len(part)] == part or part[:len(path)] == path for path in invalid)


def _compile_triggers(when: Any, comp: Compilation, invalid: set[tuple]) -> tuple[list[Trigger | None], Scope]:
    """The triggers (None for each that did not compile) and the names they give the rest of the rule."""
    if not isinstance(when, (list, dict)):
        return [None], _joint_scope([None])
    parts = [(("when", i), t) for i, t in enumerate(when)] if isinstance(when, list) else [(("when",), when)]
    triggers, scopes = [], []
    for path, config in parts:
        trigger = comp.attempt(compile_trigger, config, path, comp) if _untouched(path, invalid) else None
        triggers.append(trigger)
        scopes.append(trigger.scope if trigger else _kind_scope(config, path, comp, invalid))
    return triggers, _joint_scope(scopes)


def _kind_scope(config: Any, path: tuple, comp: Compilation, invalid: set[tuple]) -> Scope | None:
    """The names a trigger that did not compile still gives: those of its kind and main value alone
    (`inloox: Task` without its `changes`), if that much compiles; else None."""
    kinds = [k for k in config if k in TRIGGERS] if isinstance(config, dict) else []
    if len(kinds) != 1 or not _untouched(path + (kinds[0],), invalid):
        return None
    try:  # a scratch compilation: this trigger's errors are reported already
        return compile_trigger({kinds[0]: config[kinds[0]]}, path, Compilation(comp.doc, Scope(), comp.rule_id)).scope
    except RuleError:
        return None


def _joint_scope(scopes: list[Scope | None]) -> Scope:
    """The names any of the triggers gives; a name two triggers give differently is free-form.

    When a trigger's names are unknown (None) any other name goes, so that its one mistake is not
    reported again at every use of the names it would have given.
    """
    roots: dict[str, Root] = {}
    for scope in filter(None, scopes):
        for name, root in scope.roots.items():
            roots[name] = root if roots.get(name, root) == root else Root("free")
    return Scope(roots, incomplete=None in scopes)


def _compile_if(config: Any, comp: Compilation, invalid: set[tuple]) -> Checker | None:
    """The rule's condition; a list's clauses compile one by one once the whole has failed, to report each."""
    if _untouched(("if",), invalid):
        try:
            return compile_condition(config, ("if",), comp)
        except RuleError as exc:
            if not isinstance(config, list):
                comp.errors.append(exc)
                return None
    for i, clause in enumerate(config if isinstance(config, list) else []):
        if _untouched(("if", i), invalid):
            comp.attempt(compile_condition, clause, ("if", i), comp)
    return None


def _check_options(d: dict, comp: Compilation, invalid: set[tuple]) -> None:
    for path in (("retry", "backoff"), ("rate_limit", "per")):
        section = d.get(path[0])
        value = section.get(path[1]) if isinstance(section, dict) else None
        if value is None or not _untouched(path, invalid):
            continue
        duration = parse_duration(value)
        if duration is None:
            comp.report(path, f"{value!r} is not a duration", hint="write e.g. 30s, 10m, 2h")
        elif path[0] == "rate_limit" and not duration:  # `0s`, or under the microsecond a timedelta keeps
            # The worker counts runs per window of this length (workers/guards.rate_wait): an empty one
            # was a ZeroDivisionError in every run of the rule, each failing as an internal error.
            comp.report(path, f"{value!r} is no time: a rate limit's window must be longer than 0s",
                        hint="write e.g. 1m or 1h")


def _compile_steps(configs: Any, comp: Compilation, invalid: set[tuple]) -> tuple[Step, ...]:
    steps: list[Step] = []
    ids: list[str] = []  # of every step so far, compiled or not, so that no later step trips on a broken one
    for index, config in enumerate(configs if isinstance(configs, list) else []):
        path = ("then", index)
        step_id = config.get("id", f"step{index}") if isinstance(config, dict) else f"step{index}"
        if step_id in ids:
            comp.report(path + ("id",), f"duplicate step id {step_id!r}")
        step_comp = comp.within(comp.scope.with_steps(tuple(ids)))
        ids.append(step_id)
        if not _untouched(path, invalid):
            continue
        if "if" in config:  # checked now, evaluated by render_deferred once earlier outputs exist
            step_comp.attempt(compile_condition, config["if"], path + ("if",), step_comp)
        step = step_comp.attempt(_compile_action, index, step_id, config, step_comp)
        if step is not None:
            steps.append(replace(step, condition=config.get("if")))
    return tuple(steps)


def _compile_action(index: int, step_id: str, config: dict, comp: Compilation) -> Step:
    path = ("then", index)
    kinds = [k for k in config if k in ACTIONS]
    if len(kinds) != 1:
        _fail_without_one_action(kinds, config, path, comp)
    given = {k: v for k, v in config.items() if k not in ("id", "if")}
    return _compile_step(index, step_id, kinds[0], given, path, comp)


# Words for an action in other tools (Zapier's "Send Email" or "Slack" step, n8n's HTTP Request node).
_ACTION_MEANINGS = {
    "email": "notify", "mail": "notify", "slack": "notify", "teams": "notify", "message": "notify",
    "send": "notify", "webhook": "http", "request": "http", "http_request": "http", "post": "http",
    "create": "inloox.create", "update": "inloox.update", "delete": "inloox.delete", "get": "inloox.get",
    "find": "inloox.query", "search": "inloox.query", "query": "inloox.query",
}


def _fail_without_one_action(kinds: list[str], config: dict, path: tuple, comp: Compilation):
    """Raise the RuleError of a step with no action or several; a misspelt action is named at its key."""
    arguments = {"id", "if"} | {name for kind in ACTIONS.values() for name in kind.schema.get("properties", {})}
    for key in (k for k in config if not kinds and k not in ACTIONS and k not in arguments):
        if close := did_you_mean(str(key), ACTIONS, meanings=_ACTION_MEANINGS):
            comp.fail(path + (key,), f"{key!r} is not an action", hint=close, key=True)
    others = ", ".join(str(k) for k in config if k not in kinds)
    comp.fail(path, f"a step needs exactly one action (found {', '.join(kinds) or 'none'}"
                    f"{' among ' + others if others and not kinds else ''})", hint="actions: " + ", ".join(ACTIONS))


def _compile_step(index: int, step_id: str, name: str, given: dict, path: tuple, comp: Compilation) -> Step:
    """One step; raises RuleError if its arguments are wrong, records each wrong template in `comp.errors`."""
    kind = ACTIONS[name]
    args = {**kind.defaults(given, comp.scope), **given}
    kind.check(args, path, comp)
    templates = [(p, comp.attempt(comp.check_template, path + p, s)) for p, s in _template_strings(args, ())]
    return Step(index, step_id, name, args, tuple((p, t) for p, t in templates if t is not None))


def _template_strings(value: Any, path: tuple):
    """(path, source) of every template string inside nested args."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _template_strings(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _template_strings(v, path + (i,))
    elif is_template(value):
        yield path, value
