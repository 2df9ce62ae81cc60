"""The names a rule may read in conditions and templates, and checks of paths against them."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, TypeVar

from jinja2 import TemplateSyntaxError

from inloox.metadata import load_metadata

from .documents import Document
from .errors import RuleError, did_you_mean
from .templates import BUILTIN_NAMES, Template, compile_template, syntax_problem

ALWAYS = ("event", "rule", "now", "env")  # every rule can read these, whatever its trigger
T = TypeVar("T")


@dataclass(frozen=True)
class Root:
    """What a root name holds: an entity's fields, its changes, free-form data, or a record of known names."""

    kind: str  # "entity", "changes", "free" or "record"
    entity_set: str | None = None
    names: tuple[str, ...] = ()  # a record's names (none: it is always empty)
    about: str = ""  # a record's contents in words: "only ContactId on Task events (who made the change)"


@dataclass(frozen=True)
class FieldType:
    """The EDM type of a path that ends on an InLoox field."""

    edm_type: str
    nullable: bool


@dataclass(frozen=True)
class Scope:
    """Roots a rule's trigger provides, plus the ids of steps already run (templates only)."""

    roots: Mapping[str, Root] = field(default_factory=dict)
    steps: tuple[str, ...] = ()
    in_step: bool = False  # a step's own `if:` may read earlier steps' outputs
    open: bool = False  # any name is free-form (re-compiling an already checked step condition)
    incomplete: bool = False  # a trigger did not compile: names beyond `roots` may exist, free-form

    def with_steps(self, steps: tuple[str, ...]) -> "Scope":
        return replace(self, steps=steps, in_step=True)

    def names(self, *, templates: bool = False) -> list[str]:
        extra = ["steps"] if templates or self.in_step else []
        return [*self.roots, *ALWAYS, *extra]

    def check(self, parts: tuple[str, ...], *, templates: bool = False) -> tuple[str, str, FieldType | None]:
        """(problem, hint, field type) for a path; problem is "" when the path is allowed."""
        head = parts[0]
        if head == "steps" and (templates or self.in_step):
            return ("", "", None) if self.open else self._check_step(parts)
        if head in ALWAYS or self.open:
            return "", "", None
        root = self.roots.get(head)
        if root is None and self.incomplete:
            return "", "", None
        if root is None:
            return (f"unknown name {head!r}", did_you_mean(head, self.names(templates=templates)), None)
        if root.kind == "free" or len(parts) < 2:
            return "", "", None
        if root.kind == "record":
            return _check_record(head, root, parts[1])
        return _check_field(root, parts)

    def _check_step(self, parts: tuple[str, ...]) -> tuple[str, str, None]:
        if len(parts) < 2:
            return "", "", None
        if parts[1] not in self.steps:
            known = ", ".join(self.steps) or "none"
            return (f"step {parts[1]!r} is not an earlier step (earlier steps: {known})",
                    did_you_mean(parts[1], self.steps), None)
        return "", "", None


def _check_record(head: str, root: Root, name: str) -> tuple[str, str, None]:
    if name in root.names:
        return "", "", None
    if not root.names:
        return f"{head} is empty on {root.about}", "", None
    return (f"{head} holds only {', '.join(root.names)} on {root.about}",
            did_you_mean(name, root.names) or f"{head} holds: {', '.join(root.names)}", None)


def _check_field(root: Root, parts: tuple[str, ...]) -> tuple[str, str, FieldType | None]:
    entity_set = load_metadata().entity_set(root.entity_set)
    name = parts[1]
    prop = entity_set.property(name)
    if prop is None:
        if entity_set.open_type:
            return "", "", None  # open types carry extra columns, e.g. custom fields
        return (f"{root.entity_set} has no field {name!r}",
                did_you_mean(name, entity_set.properties), None)
    if root.kind == "changes":
        if len(parts) < 3:
            return "", "", None
        if parts[2] not in ("from", "to"):
            return f"a change has 'from' and 'to', not {parts[2]!r}", did_you_mean(parts[2], ["from", "to"]), None
    return "", "", FieldType(prop.type, prop.nullable)


@dataclass(frozen=True)
class Compilation:
    """Where a rule is being compiled: its document, rule id and scope; `fail` raises there.

    `errors` collects what `attempt` caught and `report` found, shared by every Compilation derived
    `within` this one, so that a rule with several mistakes reports them all at once.
    """

    doc: Document
    scope: Scope
    rule_id: str = ""
    errors: list[RuleError] = field(default_factory=list, compare=False)

    def fail(self, path: tuple, message: str, *, hint: str = "", key: bool = False):
        """Raise a RuleError located at `path` (at the key itself with key=True)."""
        raise self.doc.error(path, message, hint=hint, key=key, rule_id=self.rule_id)

    def report(self, path: tuple, message: str, *, hint: str = "", key: bool = False) -> None:
        """Record a RuleError located at `path` and go on compiling."""
        self.errors.append(self.doc.error(path, message, hint=hint, key=key, rule_id=self.rule_id))

    def within(self, scope: Scope) -> "Compilation":
        """The same compilation (and errors) with another scope."""
        return replace(self, scope=scope)

    def attempt(self, compile_part: Callable[..., T], *args) -> T | None:
        """`compile_part(*args)`, or None once its RuleError is recorded: one broken part must not hide the next."""
        try:
            return compile_part(*args)
        except RuleError as exc:
            self.errors.append(exc)
            return None

    def check_template(self, path: tuple, source: str) -> Template:
        """Compile a template and check the names it reads; raises RuleError at `path`."""
        try:
            template = compile_template(source)
        except TemplateSyntaxError as exc:
            self.fail(path, syntax_problem(exc))
        for chain in template.chains:
            if chain[0] in BUILTIN_NAMES:
                continue
            problem, hint, _ = self.scope.check(chain, templates=True)
            if problem:
                self.fail(path, f"{'.'.join(chain)}: {problem}", hint=hint)
        return template
