"""Errors the engine raises, and the did-you-mean hints they carry.

    EngineError
    ├── RuleError       a rule file is wrong: file, line, col, path, message, hint (+ detail)
    └── TemplateError   a template failed to render: rule id, step, variable
        └── StepSkipped a step's own `if:` did not hold when it was about to run

A condition that does not hold is not an error: checkers return a reason string instead.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping


class EngineError(Exception):
    """Base class of every error the engine raises."""


class RuleError(EngineError):
    """A rule file that cannot be loaded, located to the character (line and col are 1-based)."""

    def __init__(self, message: str, *, file: str = "", line: int = 0, col: int = 0,
                 path: str = "", hint: str = "", rule_id: str = "", detail: str = ""):
        self.file, self.line, self.col = file, line, col
        self.path, self.message, self.hint, self.rule_id = path, message, hint, rule_id
        self.detail = detail  # the YAML parser's own words, when `message` says it more plainly
        super().__init__(self.format())

    def format(self) -> str:
        """`file:line:col: path: message (hint)`, leaving out the parts that are unknown."""
        where = ":".join(str(p) for p in (self.file, self.line, self.col) if p)
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f" ({self.hint})"
        return f"{where}: {text}" if where else text


class TemplateError(EngineError):
    """A template could not render; names the rule, the step (index and id) and the cause."""

    def __init__(self, message: str, *, rule_id: str = "", step: str = "", variable: str = ""):
        self.message, self.rule_id, self.step, self.variable = message, rule_id, step, variable
        where = " ".join(p for p in (f"rule {rule_id}" if rule_id else "", step) if p)
        super().__init__(f"{where}: {message}" if where else message)


class StepSkipped(TemplateError):
    """A step's `if:` did not hold; the step must not run (`message` is the reason).

    A TemplateError, so that an executor unaware of skipping stops the run rather than writing.
    """


def _words(name: str) -> list[str]:
    """CamelCase and snake_case words of a name: `TaskItemStatusId` → Task, Item, Status, Id."""
    return [w for w in re.split(r"_|(?<=[a-z0-9])(?=[A-Z])", name) if w]


def _meaning_key(word: str) -> str:
    # `greater_than`, `greaterThan`, `Greater-Than` and `greater than` are one word to a reader.
    return re.sub(r"[\s_-]", "", word.lower())


def did_you_mean(name: str, candidates: Iterable[str], *, meanings: Mapping[str, str] | None = None) -> str:
    """A hint like "did you mean 'TaskItemStatusId'?", or "" when nothing is close.

    `meanings` (other word → candidate) is asked first: a name that means a candidate (`greater_than`
    → `gt`) is pointed to it, not to a candidate merely spelt alike (`newer_than`).
    """
    candidates = sorted(set(candidates))
    by_meaning = {_meaning_key(word): meant for word, meant in (meanings or {}).items() if meant in candidates}
    if _meaning_key(name) in by_meaning:
        return f"did you mean {by_meaning[_meaning_key(name)]!r}?"
    import difflib  # here: only a mistake needs it, and an idle process was ~0.25 MB the larger for it (issue 22)

    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    found = [by_lower[c] for c in close]
    if not found:
        # A misspelt word of a compound name ("Statuss") is far from the whole name by ratio.
        by_word = {}
        for c in candidates:
            for w in _words(c):
                by_word.setdefault(w.lower(), []).append(c)
        for w in difflib.get_close_matches(name.lower(), list(by_word), n=2, cutoff=0.75):
            found += [c for c in by_word[w] if c not in found]
        found = found[:3]
    if not found:
        return ""
    return "did you mean " + " or ".join(repr(f) for f in found) + "?"


class RulesetError(EngineError):
    """Strict loading refused a rule set because some rules did not load; `.errors` lists why."""

    def __init__(self, errors: list[RuleError]):
        self.errors = list(errors)
        lines = "\n".join(e.format() for e in self.errors)
        super().__init__(f"{len(self.errors)} error(s) in the rules:\n{lines}")
