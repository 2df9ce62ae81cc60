"""YAML rule documents as plain data plus the line and column of every key and value.

Two things can go wrong before a rule is even read, and both are reported here as a RuleError:
the YAML does not parse (`_syntax_error` puts the parser's complaint in plain words, at the line a
person should fix), or its aliases expand to far more than the file holds (`MAX_NODES`, and the
character budget of `_Expansion`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.reader import ReaderError

from .errors import RuleError

Path = tuple  # a path into a document: keys and list indexes, e.g. ("then", 0, "values")

MAX_NODES = 50_000  # values in one document once YAML aliases are expanded; rules have hundreds
# Characters of text (keys and string values) a file may expand to through its aliases. A file
# without aliases holds at most its own size, so 10× leaves room for anchors used as intended; the
# floor keeps a small file free to reuse a paragraph, and the ceiling bounds what any one file costs
# the process loading it: an alias repeats a string without copying it in YAML, but each use is a
# copy once the document is plain data (and again in the rule's version hash and in schema checks).
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
    return min(max(EXPANSION_FACTOR * len(text), MIN_EXPANDED_CHARS), MAX_EXPANDED_CHARS)


@dataclass
class _Expansion:
    """What copying one file's documents has cost so far, to refuse an alias bomb part way."""

    text: str
    limit: int
    chars: int = 0
    copied: set[int] = field(default_factory=set)  # ids of anchored values copied once already
    uses: dict[str, int] = field(default_factory=dict)  # alias uses per anchor name, in file order
    alias: str = ""  # the anchor whose alias is being copied now

    def spend(self, chars: int, doc: Document, path: Path) -> None:
        """Count `chars` more characters; raises RuleError at the alias that passed the limit."""
        self.chars += chars
        if self.chars <= self.limit:
            return
        line, col = _alias_position(self.text, self.alias, self.uses.get(self.alias, 0)) or doc.locate(path)
        what = f"the alias *{self.alias}" if self.alias else "this value"
        raise RuleError(f"{what} takes the file past {self.limit:,} characters once its YAML aliases are expanded",
                        file=doc.file, line=line, col=col, path=format_path(path),
                        hint=f"the limit is {EXPANSION_FACTOR} times the file's size, at least "
                             f"{MIN_EXPANDED_CHARS:,} and at most {MAX_EXPANDED_CHARS:,}; "
                             "repeat long values less, or write them out")


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


def parse_documents(text: str, file: str) -> list[Document]:
    """Every YAML document in `text`.

    Raises RuleError for syntax errors, duplicate keys and control characters (in plain words,
    `detail` keeps the parser's), and for aliases that expand past `expansion_limit(text)` characters.
    """
    yaml = YAML(typ="rt")  # round-trip mode keeps positions and refuses duplicate keys
    try:
        nodes = list(yaml.load_all(text))
    except MarkedYAMLError as exc:
        raise _syntax_error(exc, text, file) from exc
    except ReaderError as exc:  # a control character; the reader knows only its offset
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise RuleError(f"the character U+{exc.character:04X} cannot appear in YAML text", file=file, line=line,
                        col=col, hint="remove it", detail=str(exc).replace("\n", " ")) from exc
    except ValueError as exc:  # an explicit tag the value does not fit, e.g. `!!int x`
        raise RuleError(f"a value does not fit its YAML tag: {exc}", file=file, hint="remove the tag (!!…)") from exc
    cost = _Expansion(text, expansion_limit(text))
    docs = []
    for node in nodes:
        if node is None:
            continue  # an empty document (a trailing `---`)
        doc = Document(file, None)
        doc.values[()] = (node.lc.line + 1, node.lc.col + 1) if hasattr(node, "lc") else (1, 1)
        doc.data = _plain(node, (), doc, cost)
        docs.append(doc)
    return docs


# --- YAML syntax errors in plain words ------------------------------------------------------------
# The parser reports where it gave up, in its own terms ("expected <block end>, but found '?'").
# That is often a line after the mistake, so each explainer below looks at the text around the
# parser's marks for the line a person should fix. Each returns (line, col, message, hint), 0-based,
# or None when the error is not its kind; the first that answers wins.

_INDENT_HINT = "YAML uses indentation to nest keys: the keys of one mapping start in the same column"
_LINE_BREAKS = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what the parser counts as a new line
_Explained = tuple[int, int, str, str]


def _syntax_error(exc: MarkedYAMLError, text: str, file: str) -> RuleError:
    """The RuleError for a YAML syntax error: plain words, at the line to fix, the parser's words as detail."""
    lines = _LINE_BREAKS.split(text)
    detail = " ".join(str(p) for p in (exc.context, exc.problem) if p).replace("\n", " ") or str(exc)
    found = next(filter(None, (explain(exc, lines) for explain in _EXPLAINERS)), None)
    if found is None:
        mark = exc.problem_mark or exc.context_mark
        found = (mark.line, mark.column, detail, "") if mark else (-1, -1, detail, "")
    line, col, message, hint = found
    return RuleError(message, file=file, line=line + 1, col=col + 1, hint=hint, detail=detail)


def _at(lines: list[str], index: int) -> str:
    return lines[index] if 0 <= index < len(lines) else ""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content_before(lines: list[str], index: int) -> int | None:
    """The nearest line above `index` holding more than blanks or a comment."""
    return next((i for i in range(min(index, len(lines)) - 1, -1, -1) if _holds_content(lines[i])), None)


def _content_after(lines: list[str], index: int) -> int | None:
    """The nearest line below `index` holding more than blanks or a comment."""
    return next((i for i in range(index + 1, len(lines)) if _holds_content(lines[i])), None)


def _holds_content(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _duplicate_key(exc: MarkedYAMLError, lines: list[str]) -> _Explained | None:
    if not isinstance(exc, DuplicateKeyError) or exc.problem_mark is None:
        return None
    problem, mapping = exc.problem_mark, exc.context_mark
    match = re.match(r'found duplicate key "(.*?)" with value', exc.problem or "")
    key = match.group(1) if match else "?"
    first = _first_key_line(lines, key, mapping.line if mapping else 0, problem)
    where = f", first given at line {first + 1}" if first is not None else ""
    return problem.line, problem.column, f"duplicate key {key!r}{where}", "each key may appear only once in a mapping"


def _first_key_line(lines: list[str], key: str, start: int, problem) -> int | None:
    """The line where `key` first appears in the mapping starting at `start`: same column, or same flow line."""
    written = rf"(['\"]?){re.escape(key)}\1\s*:"
    for i in range(start, problem.line):
        head, tail = _at(lines, i)[:problem.column], _at(lines, i)[problem.column:]
        if re.fullmatch(r"[\s-]*", head) and re.match(written, tail):
            return i
    return problem.line if re.search(r"[{,]\s*" + written, _at(lines, problem.line)[:problem.column]) else None


def _tab(exc: MarkedYAMLError, lines: list[str]) -> _Explained | None:
    mark = exc.problem_mark
    if mark is None or "'\\t'" not in (exc.problem or ""):
        return None
    if _at(lines, mark.line)[:mark.column].strip():
        return mark.line, mark.column, "a tab character cannot separate the parts of a line", "use spaces"
    return mark.line, mark.column, "tab characters are not allowed for indentation", "indent with spaces"


def _unclosed_quote(exc: MarkedYAMLError, lines: list[str]) -> _Explained | None:
    """A quoted value that runs to the end of the file, or until another value's quote closes it."""
    start = exc.context_mark
    if exc.context == "while scanning a quoted scalar" and start is not None:
        return _quote_opened_at(lines, start.line, start.column)
    mark = exc.problem_mark
    if not isinstance(exc.problem, str) or "found '<scalar>'" not in exc.problem or mark is None:
        return None
    before = _at(lines, mark.line)[:mark.column].rstrip()
    if not before or before[-1] not in "'\"":
        return None
    if before.count(before[-1]) % 2 == 0:  # `"abc" def`: the quote is this value's own closing one
        return mark.line, mark.column, "text follows the closing quote of this value", "put the whole value in quotes"
    for i in range(mark.line):  # the quote that seemed to open this value closed a runaway one above
        column = _open_quote(_at(lines, i))
        if column is not None:
            return _quote_opened_at(lines, i, column)
    return None


def _quote_opened_at(lines: list[str], line: int, column: int) -> _Explained:
    quote = _at(lines, line)[column:column + 1] or '"'
    return line, column, f"unclosed quote started at line {line + 1}", f"end the value with {quote} on that line"


def _open_quote(line: str) -> int | None:
    """Column of a quote that starts a value on this line and is not closed on it, or None."""
    match = re.match(r"\s*(?:-\s+)*(?:[^\s'\"#][^#]*?:\s+)?(['\"])", line)
    if not match:
        return None
    quote, rest = match.group(1), line[match.end():]
    closed = re.search(r'(?<!\\)"' if quote == '"' else r"'(?!')", rest.replace("''", ""))
    return None if closed else match.start(1)


def _unclosed_bracket(exc: MarkedYAMLError, lines: list[str]) -> _Explained | None:
    start, mark = exc.context_mark, exc.problem_mark
    if not (exc.context or "").startswith("while parsing a flow") or start is None or mark is None:
        return None
    bracket = _at(lines, start.line)[start.column:start.column + 1]
    close = "]" if bracket == "[" else "}"
    if mark.line == start.line:
        if "but got ':'" in (exc.problem or ""):
            return mark.line, mark.column, "a ':' inside a value must be quoted", "write the value in quotes"
        return None
    if "<stream end>" in (exc.problem or "") or _indent(_at(lines, mark.line)) <= _indent(_at(lines, start.line)):
        return (start.line, start.column, f"unclosed {bracket!r} started at line {start.line + 1}",
                f"close it with {close!r}")
    return mark.line, mark.column, f"a ',' is missing between the items of the {bracket!r} at line {start.line + 1}", ""


def _mapping_value(exc: MarkedYAMLError, lines: list[str]) -> _Explained | None:
    """`key: a: b` (a colon in a value), or a line indented under one that already has a value."""
    mark = exc.problem_mark
    if exc.problem != "mapping values are not allowed here" or mark is None:
        return None
    line = _at(lines, mark.line)
    key = re.match(r"\s*(?:-\s+)*([^\s#'\"][^#]*?):\s+", line)
    if key is None or key.end(1) >= mark.column:  # the line was read as going on with the value above
        return _indentation(lines, mark.line, _content_before(lines, mark.line))
    value = line[key.end():].strip()
    return (mark.line, mark.column, "a ':' inside a value must be quoted",
            f"write {key.group(1)}: {json.dumps(value, ensure_ascii=False)}")


def _block_end(exc: MarkedYAMLError, lines: list[str]) -> _Explained | None:
    """The parser met a line that fits no open mapping or list: nearly always an indentation slip."""
    mark, problem = exc.problem_mark, exc.problem or ""
    if mark is None or not problem.startswith(("expected <block end>", "expected '<document start>'")):
        return None
    return _indentation(lines, mark.line, exc.context_mark.line if exc.context_mark else None)


def _no_colon(exc: MarkedYAMLError, lines: list[str]) -> _Explained | None:
    start = exc.context_mark
    if exc.problem != "could not find expected ':'" or start is None:
        return None
    above = _content_before(lines, start.line)
    where = f" (line {above + 1} starts at column {_indent(lines[above]) + 1})" if above is not None else ""
    return (start.line, _indent(_at(lines, start.line)), "this line is not a 'key: value' pair",
            f"write key: value, or indent it further to continue the value above{where}")


def _indentation(lines: list[str], at: int, block: int | None = None) -> _Explained:
    """Blame the line whose indentation differs from its neighbours: `at`, or the line above it.

    `block` is the line where the mapping or list the parser was reading starts, if known.
    """
    above = _content_before(lines, at)
    if above is None:
        return at, _indent(_at(lines, at)), "this line is indented differently from the lines around it", _INDENT_HINT
    before, after = _content_before(lines, above), _content_after(lines, at)
    culprit, others = at, [above]
    if before is None and _indent(lines[above]) > _indent(_at(lines, at)):
        culprit, others = above, [at]  # the first line of a document sets its indentation
    elif before is not None and _key_column(lines[before]) == _key_column(_at(lines, at)) != _key_column(lines[above]):
        culprit, others = above, [before, at]  # the line above is the odd one out
    elif above == block and after is not None and _key_column(lines[after]) == _key_column(_at(lines, at)):
        culprit, others = above, [at, after]  # the block's first line is out of step with the rest of it
    return (culprit, _indent(lines[culprit]),
            f"this line is indented differently from the lines around it: {_starts(lines, others)}", _INDENT_HINT)


def _key_column(line: str) -> int:
    """Where the line's first key starts: after its indentation and any list dashes."""
    item = re.match(r"(\s*-\s+)+(?=[^\s#])", line)
    return item.end() if item else _indent(line)


def _starts(lines: list[str], indexes: list[int]) -> str:
    """'line 19 starts at column 3', 'lines 19 and 21 start at column 7', noting where a list item's key starts."""
    if len(indexes) == 2:
        return f"lines {indexes[0] + 1} and {indexes[1] + 1} start at column {_indent(lines[indexes[0]]) + 1}"
    line = lines[indexes[0]]
    key = f" (its first key at column {_key_column(line) + 1})" if _key_column(line) != _indent(line) else ""
    return f"line {indexes[0] + 1} starts at column {_indent(line) + 1}{key}"


# The parser's words (its whole `problem`) → ours, at the parser's own mark.
_SAID_PLAINLY = (
    (r"found undefined alias '(.*)'", "*{0} is an alias, but no anchor &{0} comes before it",
     "a value starting with '*' must be quoted, e.g. \"*{0}\""),
    (r"found character '(.*)' that cannot start any token", "a value cannot start with '{0}' unless it is quoted",
     "put the value in quotes"),
    (r"found unknown escape character '(.*)'", "'\\{0}' is not an escape in a double-quoted value",
     "use single quotes, or write \\\\ for a backslash"),
    (r"sequence entries are not allowed here", "a list item ('- ') must start a line of its own",
     "put it on the next line, indented under its key"),
)


def _said_plainly(exc: MarkedYAMLError, lines: list[str]) -> _Explained | None:
    mark = exc.problem_mark
    for pattern, message, hint in _SAID_PLAINLY:
        match = re.fullmatch(pattern, exc.problem or "")
        if match and mark is not None:
            return mark.line, mark.column, message.format(*match.groups()), hint.format(*match.groups())
    return None


_EXPLAINERS = (_duplicate_key, _tab, _unclosed_quote, _unclosed_bracket, _mapping_value, _no_colon, _block_end,
               _said_plainly)
