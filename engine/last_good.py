"""Rule files that break keep their last good version (as Home Assistant keeps an automation whose reload fails).

    ruleset, files = load_keeping_last_good(texts, last_good)

A file counts as good when every rule in it loads. When a file that was good becomes broken, the
whole file runs at its last good text (not a mix of old and new rules: what runs is a version
somebody saw working). A file that has never been good loads what it can, as before: its valid
rules are active, its broken ones are not. Pure: the caller keeps the last good texts (in Redis,
so every process and every restart agrees on them; see workers/rule_files.py).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import RuleError
from .rules import Ruleset, load_texts

GOOD, KEPT, BROKEN = "good", "kept", "broken"


@dataclass(frozen=True)
class FileState:
    """How one rule file loaded: `good`; `kept` (broken, its last good text runs); `broken` (no good text to run)."""

    name: str  # the file's name in its folder: the key of its last good text
    path: str
    status: str
    digest: str  # of the text as it is now
    running: str  # digest of the text that runs ("" when none of it does)
    errors: tuple[RuleError, ...] = ()


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class LoadedFiles:
    """The rules that run, how each file loaded, and the version naming the texts that run."""

    ruleset: Ruleset
    files: tuple[FileState, ...]
    version: str

    @property
    def trouble(self) -> tuple[FileState, ...]:
        return tuple(f for f in self.files if f.status != GOOD)


def load_keeping_last_good(texts: Iterable[tuple[str, str]], last_good: Mapping[str, str]) -> LoadedFiles:
    """Load (path, text) pairs; a broken file with an entry in `last_good` (by file name) runs that text."""
    texts = list(texts)
    first = load_texts(texts)
    broken = {s.file for s in first.skipped}
    kept = {p for p, t in texts if p in broken and last_good.get(Path(p).name, t) != t}
    used = [(p, last_good[Path(p).name]) if p in kept else (p, t) for p, t in texts]
    ruleset = load_texts(used) if kept else first
    states = []
    for (path, text), (_, ran) in zip(texts, used):
        name, errors = Path(path).name, tuple(e for s in first.skipped if s.file == path for e in s.errors)
        if path not in broken:
            states.append(FileState(name, path, GOOD, digest(text), digest(text)))
        elif path in kept:
            states.append(FileState(name, path, KEPT, digest(text), digest(ran), errors))
        else:
            loaded = any(rule.file == path for rule in ruleset.rules.values())
            states.append(FileState(name, path, BROKEN, digest(text), digest(text) if loaded else "", errors))
    return LoadedFiles(ruleset, tuple(states), version(used))


def version(texts: Iterable[tuple[str, str]]) -> str:
    """The rule set's version: "files:" and a digest of the file names and the texts that run."""
    joined = "\0".join(f"{Path(name).name}\0{text}" for name, text in texts)
    return "files:" + hashlib.sha256(joined.encode()).hexdigest()[:12]
