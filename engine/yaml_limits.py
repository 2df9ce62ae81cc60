"""What YAML a rule file may hold, checked while ruamel parses it: nesting, tags, lone surrogates.

Rule files come from outside (an upload, a folder anyone may have written to), and three things in
them would otherwise stop the process reading them rather than being reported at their line:
- nesting deeper than `MAX_DEPTH`: ruamel's parser is a loop, but its composer and constructor
  recurse once per level, so 1,000 `[` are a RecursionError;
- a tag beyond YAML's standard ones (`TAGS`): round-trip mode never builds a Python object from a
  tag (none of its constructors is for `!!python/…`; an unknown tag becomes a tagged map, list or
  string), but rules are JSON-shaped data, so `!!python/object/apply:os.system` is a file to look
  at, not one to half-load, and refusing it before composing keeps it that way whatever ruamel does;
- an escape that is half of a surrogate pair (`"\\ud800"`): no UTF-8 can carry it, so storing or
  printing the rule would fail later. A whole pair written as two escapes, as JSON writes it,
  becomes its one character.

`CheckedParser` checks each event as the composer takes it, before the composer goes a level
deeper, so a file is parsed once (walking the events first cost 45% more per load).
"""
from __future__ import annotations

import re

from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent, ScalarEvent
from ruamel.yaml.parser import RoundTripParser

from .bodies import MAX_DEPTH

_STANDARD = "tag:yaml.org,2002:"
TAGS = frozenset(_STANDARD + name for name in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp"))
_TAGS_IN_WORDS = "!!str, !!int, !!float, !!bool, !!null, !!map, !!seq and !!timestamp"
_SURROGATE = re.compile("[\ud800-\udfff]")
_LONE_SURROGATE = re.compile("[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")


class Refused(Exception):
    """An event that must not reach the composer; 0-based `line` and `col` of where it starts."""

    def __init__(self, message: str, hint: str, line: int, col: int):
        super().__init__(message)
        self.message, self.hint, self.line, self.col = message, hint, line, col


class CheckedParser(RoundTripParser):
    """ruamel's round-trip parser, raising Refused for an event past the limits as it hands it over."""

    def reset_parser(self) -> None:
        super().reset_parser()
        self.depth = 0

    def get_event(self):
        event = super().get_event()
        if isinstance(event, CollectionEndEvent):
            self.depth -= 1
            return event
        if isinstance(event, CollectionStartEvent):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _refused(event, f"the YAML nests deeper than {MAX_DEPTH} levels",
                               "rules nest about 15 levels; write this value flatter")
        if isinstance(event, (CollectionStartEvent, ScalarEvent)) and event.tag is not None:
            _check_tag(event)
        if isinstance(event, ScalarEvent) and _SURROGATE.search(event.value):
            event.value = _joined_pairs(event)
        return event


def _check_tag(event) -> None:
    tag = str(event.tag)
    if tag not in TAGS:
        shown = "!!" + tag[len(_STANDARD):] if tag.startswith(_STANDARD) else tag
        raise _refused(event, f"the tag {shown} is not one a rule file may use",
                       f"remove it: rule files hold plain values, tagged at most {_TAGS_IN_WORDS}")


def _joined_pairs(event: ScalarEvent) -> str:
    """The scalar's text with each escaped surrogate pair made its one character; Refused for a lone half."""
    lone = _LONE_SURROGATE.search(event.value)
    if lone:
        raise _refused(event, f"the escape \\u{ord(lone.group()):04x} is half of a surrogate pair, not a character",
                       "write the character itself, or as \\U followed by its 8 hex digits")
    return event.value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")


def _refused(event, message: str, hint: str) -> Refused:
    return Refused(message, hint, event.start_mark.line, event.start_mark.column)
