"""Snapshots → changes: what the poller compares between two reads of the same entity."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from .edm import parse_datetime, same_value


def _same(a: Any, b: Any) -> bool:
    """Equal values, treating one instant written two ways (`Z` vs `+00:00`) as the same; true is not 1."""
    if same_value(a, b):
        return True
    if isinstance(a, str) and isinstance(b, str):
        da, db = parse_datetime(a), parse_datetime(b)
        return da is not None and db is not None and da.tzinfo is not None and da == db
    return False


def diff_snapshots(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None,
                   fields: Iterable[str] | None = None) -> dict[str, tuple[Any, Any]]:
    """{field: (from, to)} for fields whose value differs; None stands for a missing snapshot.

    `fields` limits the comparison (default: every field of either snapshot). A created entity
    (old is None) changes every field from None; a deleted one (new is None) changes them to None.
    """
    old, new = old or {}, new or {}
    names = list(fields) if fields is not None else list(dict.fromkeys([*old, *new]))
    changes = {}
    for name in names:
        before, after = old.get(name), new.get(name)
        if not _same(before, after):
            changes[name] = (before, after)
    return changes
