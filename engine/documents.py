"""YAML rule documents as plain data plus the line and column of every key and value.

Several things can go wrong before a rule is even read, and each is reported here as a RuleError
at its line: the bytes are not UTF-8; the YAML does not parse (`engine/syntax.py` puts the parser's
complaint in plain words, at the line a person should fix); it nests too deep, holds a tag beyond
YAML's standard ones or half a surrogate pair (`engine/yaml_limits.py`, checked as it parses); or
its aliases expand to far more than the file holds (`MAX_NODES`, `MAX_DEPTH` and the character
`Budget`, one for all the files loaded together).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.reader import ReaderError

from .bodies import MAX_DEPTH
from .errors import RuleError
from .syntax import syntax_error
from .yaml_limits import CheckedParser, Refused

Path = tuple  # a path into a document: keys and list indexes, e.g. ("then", 0, "values")

MAX_NODES = 50_000  # values in one document once YAML aliases are expanded; rules have hundreds
# Characters of text (keys and string values, plus one per value) a file may expand to through its
# aliases. A file without aliases holds at most its own size, so 10× leaves room for anchors used as
# intended; the floor keeps a small file free to reuse a paragraph, and the ceiling bounds what any one file costs
# the process loading it: an alias repeats a string without copying it in YAML, but each use is a
# copy once the document is plain data (and again in the rule's version hash and in schema checks).
# Files loaded together (a bundle, a folder) share one budget, of their joint size, floor and ceiling
# included: with a floor each, 200 files of ~470 bytes took 200 floors (12.8 million values, 19 s of
# CPU) for one 94 KB upload.
EXPANSION_FACTOR = 10
MIN_EXPANDED_CHARS = 64 * 1024
MAX_EXPANDED_CHARS = 4 * 1024 * 1024


@dataclass
class Document:
    """One YAML document of a rule file; `value_at`/`key_at` give 1-based (line, col)."""

    file: str
    data: Any
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    schema_clean: bool = False  # the schema was checked where it was parsed and found nothing (`parse_texts`)

    def to_json(self) -> dict:
        """The document as JSON, for `from_json` in another process: positions as [path, [line, col]] pairs."""
        return {"file": self.file, "data": self.data, "schema_clean": self.schema_clean,
                "values": [[path, at] for path, at in self.values.items()],
                "keys": [[path, at] for path, at in self.keys.items()]}

    @classmethod
    def from_json(cls, found: dict) -> Document:
        """The document `to_json` wrote. A key YAML wrote as a list (`? [a, b]`) comes back as a tuple, hashable."""
        def located(pairs):
            return {tuple(tuple(k) if isinstance(k, list) else k for k in path): tuple(at) for path, at in pairs}
        return cls(found["file"], found["data"], located(found["values"]), located(found["keys"]),
                   found["schema_clean"])

    def locate(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """Position of the value (or key) at `path`, or of its nearest located parent."""
        table = self.keys if key else self.values
        path = tuple(path)
        if path in table:
            return table[path]
        while path:
            path = path[:-1]
            if path in self.values:
                return self.values[path]
        return (1, 1)

    def error(self, path: Path, message: str, *, hint: str = "", key: bool = False,
              rule_id: str = "") -> RuleError:
        """A RuleError located at `path` in this document."""
        line, col = self.locate(path, key=key)
        return RuleError(message, file=self.file, line=line, col=col, path=format_path(path),
                         hint=hint, rule_id=rule_id)


def format_path(path: Path) -> str:
    """`("then", 0, "values")` → `then[0].values`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def expansion_limit(text: str) -> int:
    """How many characters of keys and strings a file of this text may expand to through aliases."""
    return _limit(len(text))


def _limit(size: int) -> int:
    return min(max(EXPANSION_FACTOR * size, MIN_EXPANDED_CHARS), MAX_EXPANDED_CHARS)


@dataclass
class Budget:
    """The characters a load of rule files may expand to through aliases, and what each file spent of it."""

    limit: int
    files: int = 1
    chars: int = 0
    spent: dict[str, int] = field(default_factory=dict)  # file → its part of `chars`

    @classmethod
    def shared(cls, texts: list[str | bytes]) -> Budget:
        """One budget for all of `texts`, loaded together: the limit of their joint size."""
        return cls(_limit(sum(len(text) for text in texts)), files=len(texts))

    def refusal(self, what: str, file: str) -> tuple[str, str]:
        """The message and hint of a RuleError for `what` (in `file`) passing the limit."""
        if self.files == 1:
            return (f"{what} takes the file past {self.limit:,} characters once its YAML aliases are expanded",
                    f"the limit is {EXPANSION_FACTOR} times the file's size, at least {MIN_EXPANDED_CHARS:,} and "
                    f"at most {MAX_EXPANDED_CHARS:,}; repeat long values less, or write them out")
        return (f"{what} takes the rule files loaded with it past {self.limit:,} characters once their YAML "
                "aliases are expanded", self._shared_hint(file))

    def passed(self, file: str) -> RuleError:
        """The RuleError of a file left unread, as a file loaded before it passed the limit."""
        return RuleError(f"not read: the rule files loaded before it passed {self.limit:,} characters once their "
                         "YAML aliases were expanded", file=file, line=1, col=1, hint=self._shared_hint(file))

    def _shared_hint(self, file: str) -> str:
        most = max(self.spent, key=self.spent.get)
        by = "" if most == file else f"; {most} spent the most of it ({self.spent[most]:,})"
        return (f"the limit is {EXPANSION_FACTOR} times the size of the {self.files} files loaded together, at "
                f"least {MIN_EXPANDED_CHARS:,} and at most {MAX_EXPANDED_CHARS:,} for all of them{by}; repeat "
                "long values less, or write them out")


@dataclass
class _Expansion:
    """What copying one file's documents has cost so far, to refuse an alias bomb part way."""

    text: str
    file: str
    budget: Budget
    copied: set[int] = field(default_factory=set)  # ids of anchored values copied once already
    uses: dict[str, int] = field(default_factory=dict)  # alias uses per anchor name, in file order
    alias: str = ""  # the anchor whose alias is being copied now

    def spend(self, chars: int, doc: Document, path: Path) -> None:
        """Count `chars` more characters; raises RuleError at the alias that passed the limit."""
        budget = self.budget
        budget.chars += chars
        budget.spent[self.file] = budget.spent.get(self.file, 0) + chars
        if budget.chars <= budget.limit:
            return
        line, col = (self.alias and _alias_position(self.text, self.alias, self.uses[self.alias])) or doc.locate(path)
        message, hint = budget.refusal(f"the alias *{self.alias}" if self.alias else "this value", self.file)
        raise RuleError(message, file=doc.file, line=line, col=col, path=format_path(path), hint=hint)


def _anchor(node: Any) -> str:
    """The name a value was anchored with (`&name`), or ""."""
    anchor = node.yaml_anchor() if hasattr(node, "yaml_anchor") else None
    return anchor.value if anchor is not None else ""


def _alias_position(text: str, anchor: str, use: int) -> tuple[int, int] | None:
    """(line, col) of the use-th `*anchor` in the file, found by parsing again (only when refusing)."""
    seen = 0
    for event in YAML(typ="rt").parse(text):
        if isinstance(event, AliasEvent) and event.anchor == anchor:
            seen += 1
            if seen == use:
                return event.start_mark.line + 1, event.start_mark.column + 1
    return None


def _plain(node: Any, path: Path, doc: Document, cost: _Expansion) -> Any:
    """Copy a ruamel node into dicts and lists, recording positions and what aliases cost on the way."""
    if len(doc.values) > MAX_NODES:
        # Aliases of aliases expand exponentially: a few hundred bytes could hold a billion values.
        line, col = doc.values[path[:-1]] if path[:-1] in doc.values else (0, 0)
        raise RuleError(f"the document holds more than {MAX_NODES} values once its YAML aliases are expanded",
                        file=doc.file, line=line, col=col, hint="write the rule out without nested aliases")
    anchor = "" if cost.alias else _anchor(node)  # inside an alias every anchor was seen already
    if not anchor or id(node) not in cost.copied:
        if anchor:
            cost.copied.add(id(node))
        return _copy(node, path, doc, cost)
    cost.uses[anchor] = cost.uses.get(anchor, 0) + 1  # an alias: the anchored value once more
    cost.alias = anchor
    try:
        return _copy(node, path, doc, cost)
    finally:
        cost.alias = ""


def _copy(node: Any, path: Path, doc: Document, cost: _Expansion) -> Any:
    # Every value costs one character besides its text, as it takes at least one written out: an
    # alias of numbers or lists spends no text, and MAX_NODES counts per document, so a file of
    # thousands of small documents, each aliasing 49,999 numbers, was copied whole (10 KB: 1.7 million
    # values, 3.5 s and 640 MB; a 1 MB upload would end the process).
    cost.spend(1, doc, path)
    if isinstance(node, (CommentedMap, CommentedSeq)) and len(path) >= MAX_DEPTH:
        # The parser bounds the nesting as written; aliases can nest anchored values in each other past it.
        line, col = doc.locate(path)
        what = f"the alias *{cost.alias}" if cost.alias else "this value"
        raise RuleError(f"{what} nests deeper than {MAX_DEPTH} levels once its YAML aliases are expanded",
                        file=doc.file, line=line, col=col, path=format_path(path),
                        hint="write the rule out without nested aliases")
    if isinstance(node, CommentedMap):
        out = {}
        for k, v in node.items():
            line, col, vline, vcol = _key_position(node, k)
            doc.keys[path + (k,)] = (line + 1, col + 1)
            doc.values[path + (k,)] = (vline + 1, vcol + 1)
            name = str(k) if k is not None else "null"
            cost.spend(len(name), doc, path + (k,))
            out[name] = _plain(v, path + (k,), doc, cost)
        return out
    if isinstance(node, CommentedSeq):
        out = []
        for i, v in enumerate(node):
            line, col = node.lc.data[i]
            doc.values[path + (i,)] = (line + 1, col + 1)
            out.append(_plain(v, path + (i,), doc, cost))
        return out
    if isinstance(node, TaggedScalar):
        node = node.value  # `!!str 3`: the only tag yaml_limits lets through that round-trip keeps
    if isinstance(node, str):
        cost.spend(len(node), doc, path)
        return str(node)  # drop ruamel's scalar string subclasses
    if isinstance(node, (datetime, date)):
        return node.isoformat()  # rules are JSON-shaped: an unquoted timestamp means its ISO text
    return node


def _key_position(node: CommentedMap, key: Any) -> list[int]:
    """0-based key line, col, value line, col; a key merged in with `<<:` is where it was written."""
    if key in node.lc.data:
        return node.lc.data[key]
    merged = next((m for m in getattr(node, "merge", []) if key in m.lc.data), None)
    return merged.lc.data[key] if merged is not None else [node.lc.line, node.lc.col] * 2


def read_rule_text(raw: bytes, file: str) -> str:
    """A rule file's bytes as text (a leading BOM dropped); RuleError at the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # engine.bodies.decode_text says the offset; a person editing the file wants the line.
        start = exc.start
        line = raw.count(b"\n", 0, start) + 1
        col = len(raw[raw.rfind(b"\n", 0, start) + 1:start].decode("utf-8", "replace")) + 1
        raise RuleError(f"byte 0x{raw[start]:02x} is not UTF-8 text", file=file, line=line, col=col,
                        hint="save the file as UTF-8") from None


def parse_documents(text: str | bytes, file: str, *, budget: Budget | None = None) -> list[Document]:
    """Every YAML document in `text` (bytes are read as UTF-8).

    Raises RuleError for syntax errors, duplicate keys and control characters (in plain words,
    `detail` keeps the parser's), for what `yaml_limits` refuses (nesting, tags, lone surrogates),
    and for aliases that expand past `expansion_limit(text)` characters, or past what is left of
    `budget` when the file is loaded with others (`Budget.shared`).
    """
    if isinstance(text, bytes):
        text = read_rule_text(text, file)
    if budget is not None and budget.chars > budget.limit:
        raise budget.passed(file)  # parsed, each file left would be refused at its first value, at a parse's cost
    yaml = YAML(typ="rt")  # round-trip mode keeps positions and refuses duplicate keys
    yaml.Parser = CheckedParser
    try:
        nodes = list(yaml.load_all(text))
    except Refused as exc:
        raise RuleError(exc.message, file=file, line=exc.line + 1, col=exc.col + 1, hint=exc.hint) from None
    except MarkedYAMLError as exc:
        raise syntax_error(exc, text, file) from exc
    except ReaderError as exc:  # a control character; the reader knows only its offset
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise RuleError(f"the character U+{exc.character:04X} cannot appear in YAML text", file=file, line=line,
                        col=col, hint="remove it", detail=str(exc).replace("\n", " ")) from exc
    except (ValueError, KeyError, IndexError) as exc:  # an explicit tag the value does not fit, e.g. `!!int x`
        # ruamel's constructors raise a KeyError for `!!bool maybe` and an IndexError for `!!int 0x` or
        # `!!float ''`: messages that say nothing to the person, so only a ValueError's is kept.
        why = f": {exc}" if isinstance(exc, ValueError) else ""
        raise RuleError(f"a value does not fit its YAML tag{why}", file=file, hint="remove the tag (!!…)") from exc
    cost = _Expansion(text, file, budget or Budget(expansion_limit(text)))
    docs = []
    for node in nodes:
        if node is None:
            continue  # an empty document (a trailing `---`)
        doc = Document(file, None)
        doc.values[()] = (node.lc.line + 1, node.lc.col + 1) if hasattr(node, "lc") else (1, 1)
        doc.data = _plain(node, (), doc, cost)
        docs.append(doc)
    return docs
