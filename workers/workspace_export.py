"""A workspace's export: its rule bundles, subscriptions (no secret), events and runs, as one JSON archive.

Enough to move the workspace: PUT its fields to another deployment, upload its bundles, subscribe
again (new secrets), and keep its history. Secrets never leave: neither the InLoox token nor any
webhook or subscription secret is in it.

The archive is written to a file as its events and runs are read, EXPORT_PAGE of them at a time: built whole,
2,000 events of 60 KiB (a 128 MiB archive) raised the web process's memory by 389 MiB, the memory that answers
every workspace's webhooks.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import BinaryIO

import redis

from workers import bundles, event_history, runs, subscriptions, workspaces

EXPORT_EVENTS = 10_000  # the newest logged events kept in an export, at most
EXPORT_RUNS = 10_000  # the newest runs, at most
EXPORT_PAGE = 100  # events (or runs) read from Redis and held at once: 100 webhook bodies of 64 KiB are ~6 MiB
# Bytes an archive may take on disk. EXPORT_EVENTS webhook bodies of 64 KiB are 625 MiB as ASCII JSON (twice that
# for text JSON escapes), and EXPORT_RUNS runs some hundreds of MiB more; past this, something is wrong and the
# disk the web's temporary files share is kept from filling (its file refuses more: web/export_disk.py).
EXPORT_MAX_BYTES = 2 * 1024 ** 3
FORMAT = "inloox-automation/workspace-export/1"


def write(connection: redis.Redis, record: dict, out: BinaryIO, **json_options) -> None:
    """Write the archive of the workspace whose public registry record is `record` to `out` as
    `json.dump(archive, out, **json_options)` would (UTF-8), holding a page of events or runs at a time.

    `out` counts and bounds the bytes, if anyone does: the web's file (web/export_disk.py) does, for its disk.
    """
    workspace = workspaces.Workspace(record["name"], record["inloox_url"], "")
    with workspaces.using(workspace):
        _write_json(lambda text: out.write(text.encode()), _archive(connection, workspace, record), json_options)


def _archive(connection: redis.Redis, workspace: workspaces.Workspace, record: dict) -> dict:
    """The archive, its events and runs as iterators that read them from Redis as they are written."""
    return {
        "format": FORMAT, "exported_at": datetime.now(timezone.utc).isoformat(),
        "workspace": record,
        "rule_bundles": [{**v.to_dict(), "files": bundles.files(connection, workspace.prefix, v.number)}
                         for v in bundles.versions(connection, workspace.prefix)],
        "subscriptions": [s.public() for s in subscriptions.all_subscriptions(connection)],
        "events": ({**e.summary(), "event": e.event}
                   for e in event_history.newest(connection, limit=EXPORT_EVENTS, page=EXPORT_PAGE)),
        "runs": runs.newest_runs(connection, limit=EXPORT_RUNS, batch=EXPORT_PAGE),
    }


def _write_json(sink: Callable[[str], object], archive: dict, options: dict) -> None:
    """`json.dumps(archive, **options)`, the same text, written a part at a time: each item of a value that is an
    iterator on its own (an archive's events and runs: 10,000 of each, up to 64 KiB each)."""
    indent = options.get("indent")
    pad = " " * indent if isinstance(indent, int) else indent
    item_separator, key_separator = options.get("separators") or ((",", ": ") if indent is not None else (", ", ": "))

    def line(level: int) -> str:
        return "" if indent is None else "\n" + pad * level

    def nested(value, level: int) -> str:
        # json puts line breaks only between items (a string holds "\n" escaped), so indenting them puts the text
        # where json.dumps would have indented it.
        return json.dumps(value, **options).replace("\n", line(level))

    if not archive:
        sink("{}")
        return
    sink("{")
    for n, name in enumerate(sorted(archive) if options.get("sort_keys") else archive):
        sink((item_separator if n else "") + line(1) + nested(name, 1) + key_separator)
        value = archive[name]
        if isinstance(value, Iterator):
            _write_items(sink, value, nested, item_separator, line)
        else:
            sink(nested(value, 1))
    sink(line(0) + "}")


def _write_items(sink: Callable[[str], object], items: Iterator, nested, item_separator: str, line) -> None:
    """A JSON array of `items`, one at a time, as the value of one of the archive's keys (its level 1)."""
    sink("[")
    empty = True
    for item in items:
        sink(("" if empty else item_separator) + line(2) + nested(item, 2))
        empty = False
    sink("]" if empty else line(1) + "]")
