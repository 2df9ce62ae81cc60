"""Loading rule files: YAML → JSON Schema → compiled `Rule`s (`when` / `if` / `then`), with file:line:col errors.

A broken file or rule never stops the valid ones from loading: `Ruleset.errors` and
`Ruleset.skipped` say what was left out. `strict=True` refuses the whole set instead.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from jsonschema import Draft202012Validator

from .actions import ACTIONS
from .conditions import Checker, compile_condition
from .documents import Document, parse_documents
from .durations import parse_duration
from .errors import RuleError, RulesetError, did_you_mean
from .iteration import ForEach, compile_for_each
from .schema import rule_schema
from .scope import Compilation, Root, Scope
from .templates import Template, is_template
from .triggers import TRIGGERS, Trigger, compile_trigger

_VALIDATOR = Draft202012Validator(rule_schema())
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

    @property
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

    def schedules(self) -> list[Rule]:
        """Enabled rules with a schedule trigger (see `rule.triggers[i].cron`), for the scheduler."""
        return [r for r in self.rules.values() if r.enabled and any(t.cron for t in r.triggers)]


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
    sources = [(str(f), f.read_text(encoding="utf-8")) for p in paths for f in rule_files(p)]
    return load_texts(sources, strict=strict)


def load_texts(sources: Iterable[tuple[str, str]], *, strict: bool = False) -> Ruleset:
    """Load rules from (file name, YAML text) pairs; the pure core of load_rules."""
    rules: dict[str, Rule] = {}
    skipped: list[Skipped] = []
    for file, text in sources:
        try:
            docs = parse_documents(text, file)
        except RuleError as exc:
            skipped.append(Skipped(file, "", [exc]))
            continue
        for doc in docs:
            _load_document(doc, rules, skipped)
    if strict and skipped:
        raise RulesetError([e for s in skipped for e in s.errors])
    return Ruleset(rules, skipped)


def _load_document(doc: Document, rules: dict[str, Rule], skipped: list[Skipped]) -> None:
    rule_id = doc.data.get("id", "") if isinstance(doc.data, dict) else ""
    rule_id = rule_id if isinstance(rule_id, str) else ""
    errors = schema_errors(doc)
    if not errors and rule_id in rules:
        first = rules[rule_id]
        errors = [doc.error(("id",), f"duplicate rule id {rule_id!r}",
                            hint=f"first defined at {first.file}:{first.line}", rule_id=rule_id)]
    if not errors:
        try:
            rules[rule_id] = compile_rule(doc)
            return
        except RuleError as exc:
            errors = [exc]
    skipped.append(Skipped(doc.file, rule_id, errors))


def schema_errors(doc: Document) -> list[RuleError]:
    """Every JSON Schema violation of a document, located; unknown keys get a did-you-mean."""
    rule_id = str(doc.data.get("id", "")) if isinstance(doc.data, dict) else ""
    found: list[tuple[str, tuple, RuleError]] = []
    for error in _VALIDATOR.iter_errors(doc.data):
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {})
            found += [("unknown", path, doc.error(path + (key,), f"unknown key {key!r}", key=True,
                                                  hint=_unknown_key_hint(key, known), rule_id=rule_id))
                      for key in error.instance if key not in known]
        elif error.validator == "enum" and isinstance(error.instance, str):
            found.append(("enum", path, doc.error(path, f"{error.instance!r} is not one of {', '.join(error.validator_value)}",
                                                  hint=did_you_mean(error.instance, error.validator_value),
                                                  rule_id=rule_id)))
        elif error.validator != "if":  # a failing if/then is reported by its "then" branch
            found.append((error.validator, path, doc.error(path, error.message, rule_id=rule_id)))
    # A misspelt key also makes the real one "required": the unknown-key error already says so.
    unknown_at = {path for validator, path, _ in found if validator == "unknown"}
    errors = [e for validator, path, e in found if not (validator == "required" and path in unknown_at)]
    return sorted(errors, key=lambda e: (e.line, e.col))


def _unknown_key_hint(key: str, known) -> str:
    hint = did_you_mean(key, known)
    if not hint and key in {**TRIGGERS, **ACTIONS}:
        hint = f"{key!r} is another kind here; give only one"
    return hint


def rule_version(data: Any) -> str:
    """Hash of a rule's canonical content: same rule, same version, whatever the formatting."""
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def compile_rule(doc: Document) -> Rule:
    """Compile a schema-valid document into a Rule; raises RuleError at the first problem."""
    d = doc.data
    comp = Compilation(doc, Scope(), d["id"])
    listed = isinstance(d["when"], list)
    triggers = tuple(compile_trigger(t, ("when", i) if listed else ("when",), comp)
                     for i, t in enumerate(d["when"] if listed else [d["when"]]))
    comp = Compilation(doc, _joint_scope(triggers), d["id"])
    condition = compile_condition(d["if"], ("if",), comp) if "if" in d else None
    for_each = compile_for_each(d["for_each"], comp, _compile_step) if "for_each" in d else None
    if for_each:  # the steps (not the rule's `if:`, checked before the query runs) may read `item`
        comp = Compilation(doc, Scope({**comp.scope.roots, "item": for_each.root()}), d["id"])
    steps = _compile_steps(d["then"], comp)
    _check_options(d, comp)
    concurrency = d.get("concurrency")
    key = concurrency.get("key") if concurrency else None
    return Rule(
        id=d["id"], version=rule_version(d), file=doc.file, line=doc.locate(())[0],
        description=d.get("description", ""), triggers=triggers, condition=condition, steps=steps,
        enabled=d.get("enabled", True), mode=d.get("mode", "live"), allow_chained=d.get("allow_chained", False),
        retry=d.get("retry", {}), concurrency=concurrency,
        concurrency_key=comp.check_template(("concurrency", "key"), key) if key else None,
        rate_limit=d.get("rate_limit"), for_each=for_each,
    )


def _joint_scope(triggers: tuple[Trigger, ...]) -> Scope:
    """The names any of the triggers gives; a name two triggers give differently is free-form."""
    roots: dict[str, Root] = {}
    for trig in triggers:
        for name, root in trig.scope.roots.items():
            roots[name] = root if roots.get(name, root) == root else Root("free")
    return Scope(roots)


def _check_options(d: dict, comp: Compilation) -> None:
    for path in (("retry", "backoff"), ("rate_limit", "per")):
        value = d.get(path[0], {}).get(path[1])
        if value is not None and parse_duration(value) is None:
            comp.fail(path, f"{value!r} is not a duration", hint="write e.g. 30s, 10m, 2h")


def _compile_steps(configs: list[dict], comp: Compilation) -> tuple[Step, ...]:
    steps: list[Step] = []
    for index, config in enumerate(configs):
        path = ("then", index)
        kinds = [k for k in config if k in ACTIONS]
        if len(kinds) != 1:
            close = " ".join(did_you_mean(k, ACTIONS) for k in config if k not in ACTIONS).strip()
            comp.fail(path, f"a step needs exactly one action (found {', '.join(kinds) or 'none'})",
                      hint=close or "actions: " + ", ".join(ACTIONS))
        step_id = config.get("id", f"step{index}")
        if step_id in {s.id for s in steps}:
            comp.fail(path + ("id",), f"duplicate step id {step_id!r}")
        step_comp = Compilation(comp.doc, comp.scope.with_steps(tuple(s.id for s in steps)), comp.rule_id)
        given = {k: v for k, v in config.items() if k not in ("id", "if")}
        if "if" in config:  # checked now, evaluated by render_deferred once earlier outputs exist
            compile_condition(config["if"], path + ("if",), step_comp)
        step = _compile_step(index, step_id, kinds[0], given, path, step_comp)
        steps.append(replace(step, condition=config.get("if")))
    return tuple(steps)


def _compile_step(index: int, step_id: str, name: str, given: dict, path: tuple, comp: Compilation) -> Step:
    kind = ACTIONS[name]
    args = {**kind.defaults(given, comp.scope), **given}
    kind.check(args, path, comp)
    templates = tuple((p, comp.check_template(path + p, s)) for p, s in _template_strings(args, ()))
    return Step(index, step_id, name, args, templates)


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
