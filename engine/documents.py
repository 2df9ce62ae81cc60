"""YAML rule documents as plain data plus the line and column of every key and value."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from .errors import RuleError

Path = tuple  # a path into a document: keys and list indexes, e.g. ("then", 0, "values")


@dataclass
class Document:
    """One YAML document of a rule file; `value_at`/`key_at` give 1-based (line, col)."""

    file: str
    data: Any
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

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


MAX_NODES = 50_000  # values in one document once YAML aliases are expanded; rules have hundreds


def _plain(node: Any, path: Path, doc: Document) -> Any:
    """Copy a ruamel node into dicts and lists, recording positions on the way."""
    if len(doc.values) > MAX_NODES:
        # Aliases of aliases expand exponentially: a few hundred bytes could hold a billion values.
        line, col = doc.values[path[:-1]] if path[:-1] in doc.values else (0, 0)
        raise RuleError(f"the document holds more than {MAX_NODES} values once its YAML aliases are expanded",
                        file=doc.file, line=line, col=col, hint="write the rule out without nested aliases")
    if isinstance(node, CommentedMap):
        out = {}
        for k, v in node.items():
            line, col, vline, vcol = node.lc.data[k]
            doc.keys[path + (k,)] = (line + 1, col + 1)
            doc.values[path + (k,)] = (vline + 1, vcol + 1)
            out[str(k) if k is not None else "null"] = _plain(v, path + (k,), doc)
        return out
    if isinstance(node, CommentedSeq):
        out = []
        for i, v in enumerate(node):
            line, col = node.lc.data[i]
            doc.values[path + (i,)] = (line + 1, col + 1)
            out.append(_plain(v, path + (i,), doc))
        return out
    if isinstance(node, str):
        return str(node)  # drop ruamel's scalar string subclasses
    if isinstance(node, (datetime, date)):
        return node.isoformat()  # rules are JSON-shaped: an unquoted timestamp means its ISO text
    return node


def parse_documents(text: str, file: str) -> list[Document]:
    """Every YAML document in `text`; raises RuleError for syntax errors and duplicate keys."""
    yaml = YAML(typ="rt")  # round-trip mode keeps positions and refuses duplicate keys
    try:
        nodes = list(yaml.load_all(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        message = " ".join(str(p) for p in (exc.context, exc.problem) if p) or str(exc)
        hint = "each key may appear only once in a mapping" if "duplicate" in message else ""
        raise RuleError(message.replace("\n", " "), file=file, line=line, col=col, hint=hint) from exc
    docs = []
    for node in nodes:
        if node is None:
            continue  # an empty document (a trailing `---`)
        doc = Document(file, None)
        doc.values[()] = (node.lc.line + 1, node.lc.col + 1) if hasattr(node, "lc") else (1, 1)
        doc.data = _plain(node, (), doc)
        docs.append(doc)
    return docs
