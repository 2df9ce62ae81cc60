"""Resource paths under /api/odata/: `Set`, `Set/$count`, `Set(<key>)`, `Set(<key>)/Op`, `Set/Op()`.

Keys: `Task(3fa85f64-…)`, `Task(TaskItemId=3fa85f64-…)`, `FeatureFlagInfo('key')` and composite
`CustomField(Name='cf_2283e9e4_Label',ObjectId=3fa85f64-…)`; strings in single quotes with ''
for a quote. Operations may be namespace-qualified (`Default.AddNote`) and carry `()`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from inloox.metadata import EntitySet, Metadata

from . import edm
from .errors import BadRequest, NotFound

_SET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATION = re.compile(r"(?:[A-Za-z_][\w]*\.)*(?P<name>[A-Za-z_]\w*)(?:\((?P<args>.*)\))?", re.DOTALL)


@dataclass(frozen=True)
class Resource:
    """What a path addresses: a set, maybe one entity (key values as stored), maybe an operation."""

    entity_set: EntitySet
    key: dict | None = None
    operation: str | None = None
    count: bool = False
    arguments: dict = field(default_factory=dict)


def parse_path(metadata: Metadata, path: str) -> Resource:
    """The resource for a path relative to the service root; raises NotFound or BadRequest."""
    match = _SET_NAME.match(path)
    name = match.group(0) if match else path.split("/")[0]
    entity_set = metadata.entity_set(name)
    if entity_set is None:
        raise NotFound(f"Unknown entity set '{name}'", target=name)
    rest = path[len(name):]
    key = None
    if rest.startswith("("):
        key_text, rest = _split_parenthesised(rest)
        key = parse_key(entity_set, key_text)
    if rest in ("", "/"):
        return Resource(entity_set, key)
    if not rest.startswith("/"):
        raise BadRequest(f"Cannot read the path after '{name}': '{rest}'")
    segment = rest[1:]
    if segment == "$count" and key is None:
        return Resource(entity_set, count=True)
    op = _OPERATION.fullmatch(segment)
    if op is None:
        raise NotFound(f"No resource '{segment}' on {name}", target=segment)
    arguments = _pairs(op.group("args") or "") if op.group("args") else {}
    return Resource(entity_set, key, operation=op.group("name"), arguments=arguments)


def _split_parenthesised(text: str) -> tuple[str, str]:
    """The text inside the leading (...) and what follows, honouring quoted strings."""
    in_quote = False
    for index, char in enumerate(text):
        if char == "'":
            in_quote = not in_quote  # '' inside a string toggles twice: still inside
        elif char == ")" and not in_quote:
            return text[1:index], text[index + 1:]
    raise BadRequest(f"Unclosed key parenthesis in '{text}'")


def parse_key(entity_set: EntitySet, text: str) -> dict:
    """Key values (as stored) from the text inside `Set(...)`; raises BadRequest when malformed."""
    pairs = _pairs(text)
    if list(pairs) == [None]:
        if len(entity_set.key) != 1:
            raise BadRequest(f"{entity_set.name} has a composite key: name its parts "
                             f"({', '.join(k + '=…' for k in entity_set.key)})")
        pairs = {entity_set.key[0]: pairs[None]}
    if set(pairs) != set(entity_set.key):
        raise BadRequest(f"Key of {entity_set.name} is ({', '.join(entity_set.key)}), got ({text})")
    return {name: _key_value(entity_set, name, raw) for name, raw in pairs.items()}


def _pairs(text: str) -> dict:
    """`a=1,b='x'` → {'a': '1', 'b': "'x'"}; a lone value → {None: value}."""
    parts, current, in_quote = [], "", False
    for char in text:
        if char == "'":
            in_quote = not in_quote
        if char == "," and not in_quote:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    pairs = {}
    for part in (p.strip() for p in parts):
        name, sep, value = part.partition("=")
        if sep and not name.strip().startswith("'"):
            pairs[name.strip()] = value.strip()
        elif part:
            pairs[None] = part
    return pairs


def _key_value(entity_set: EntitySet, name: str, raw: str):
    prop = entity_set.properties[name]
    if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
        value = raw[1:-1].replace("''", "'")
    else:
        value = raw
    if prop.type == "Edm.String" and raw.startswith("'"):
        return value
    try:
        return edm.to_sql(prop, int(value) if prop.type.startswith("Edm.Int") else value)
    except (BadRequest, ValueError):
        raise BadRequest(f"Malformed key {name}={raw} for {entity_set.name}: expected {prop.type}",
                         target=name) from None


def format_key(entity_set: EntitySet, entity: dict) -> str:
    """`Set(<guid>)` or `Set(Name='x',ObjectId=<guid>)` for an entity, as InLoox writes its URLs."""
    def literal(name):
        value = entity[name]
        if entity_set.properties[name].type == "Edm.String":
            return "'" + str(value).replace("'", "''") + "'"
        return str(value)
    if len(entity_set.key) == 1:
        return f"{entity_set.name}({literal(entity_set.key[0])})"
    return f"{entity_set.name}({','.join(f'{k}={literal(k)}' for k in entity_set.key)})"
