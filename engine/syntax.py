"""YAML syntax errors in plain words, at the line a person should fix (used by engine/documents.py).

The parser reports where it gave up, in its own terms ("expected <block end>, but found '?'").
That is often a line after the mistake, so each explainer below looks at the text around the
parser's marks for the line a person should fix. Each returns (line, col, message, hint), 0-based,
or None when the error is not its kind; the first that answers wins.
"""
from __future__ import annotations

import json
import re

from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError

from .errors import RuleError

_INDENT_HINT = "YAML uses indentation to nest keys: the keys of one mapping start in the same column"
_LINE_BREAKS = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what the parser counts as a new line
_Explained = tuple[int, int, str, str]


def syntax_error(exc: MarkedYAMLError, text: str, file: str) -> RuleError:
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
