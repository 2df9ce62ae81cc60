"""The state of a workspace's rule folder in Redis: each file's last good text, and which files are broken since when.

    <prefix>rules:last-good   hash: file name → JSON {"text", "digest", "since"}, deflated (see
                              _pack_good): the newest text of the file in which every rule loaded
    <prefix>rules:broken      hash: file name → JSON {"since", "digest", "running", "good_since",
                              "errors"}: a file that does not load now ("running" names the digest
                              of the last good text in use, "" when none of the file runs)
    <prefix>rules:said        hash: file name → "<status> <digest>": what the logs last said of the file

Kept in Redis, not in each process: the web, every worker and the poller must run the same
version of a broken file, also after a restart while it is broken. Any process that loads the
folder records what it found (the same answer from the same files: the writes agree).

Each file that breaks, loads again or is loaded (new or changed) gets one log line (logger "rules"),
where the person editing rules looks: the `make run` terminal. Every process loads the folder, so
the line is claimed in `rules:said` first (compare-and-set): one process says it, once per change.
"""
from __future__ import annotations

import json
import logging
import time
import zlib
from datetime import datetime, timezone

import redis

from engine.last_good import GOOD, KEPT, FileState, LoadedFiles

LAST_GOOD = "rules:last-good"
BROKEN = "rules:broken"
SAID = "rules:said"
_DEFLATED = b"z"  # a last good entry's marker: raw deflate follows (a plain JSON entry starts with "{")

log = logging.getLogger("rules")
# Set the field to ARGV[2] unless it holds that already (ARGV[2] "": delete it); returns the value before.
_CLAIM = """
local before = redis.call('HGET', KEYS[1], ARGV[1])
if (before or '') == ARGV[2] then return {0, before} end
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return {1, before}
"""


def last_good(connection: redis.Redis, prefix: str) -> dict[str, str]:
    """File name → its last good text."""
    return {name.decode(): _unpack_good(raw)["text"] for name, raw in connection.hgetall(prefix + LAST_GOOD).items()}


def record(connection: redis.Redis, prefix: str, texts: dict[str, str], loaded: LoadedFiles, *,
           now: float | None = None) -> None:
    """Note the good texts and the broken files of a load of the folder (`texts`: file name → text)."""
    now = time.time() if now is None else now
    stored = {name.decode(): raw for name, raw in connection.hgetall(prefix + LAST_GOOD).items()}
    good = {name: _unpack_good(raw) for name, raw in stored.items()}
    broken = {name.decode(): json.loads(raw) for name, raw in connection.hgetall(prefix + BROKEN).items()}
    with connection.pipeline(transaction=False) as pipe:
        for state in loaded.files:
            if state.status == GOOD:
                if good.get(state.name, {}).get("digest") != state.digest:
                    pipe.hset(prefix + LAST_GOOD, state.name, _pack_good(
                        {"text": texts[state.name], "digest": state.digest, "since": now}))
                elif stored[state.name][:1] != _DEFLATED:  # stored plain by an older version: shrink it
                    pipe.hset(prefix + LAST_GOOD, state.name, _pack_good(good[state.name]))
                if state.name in broken:
                    pipe.hdel(prefix + BROKEN, state.name)
                continue
            before = broken.get(state.name, {})
            entry = {"since": before.get("since", now), "digest": state.digest, "running": state.running,
                     "good_since": good.get(state.name, {}).get("since") if state.running else None,
                     "errors": [str(e) for e in state.errors]}
            if entry != before:
                pipe.hset(prefix + BROKEN, state.name, json.dumps(entry))
        present = {state.name for state in loaded.files}
        gone = [name for name in good.keys() | broken.keys() if name not in present]
        if gone:  # a file deleted and later written anew starts without a last good text
            pipe.hdel(prefix + LAST_GOOD, *gone).hdel(prefix + BROKEN, *gone)
        pipe.execute()
    _say(connection, prefix, loaded)


def _pack_good(entry: dict) -> bytes:
    """A last good entry as stored: its JSON deflated (raw, no header) behind a marker.

    Every workspace keeps a copy of each of its files, and rule files are repetitive YAML: deflated,
    the example rules take 40 % less. Entries stored before as plain JSON still read (_unpack_good).
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return _DEFLATED + packer.compress(json.dumps(entry).encode()) + packer.flush()


def _unpack_good(raw: bytes) -> dict:
    if raw[:1] == _DEFLATED:
        return json.loads(zlib.decompress(raw[1:], -15))
    return json.loads(raw)  # stored before entries were deflated


def _say(connection: redis.Redis, prefix: str, loaded: LoadedFiles) -> None:
    """Log one line per file whose state changed since the logs last said it (whichever process claims it)."""
    said = {name.decode(): value.decode() for name, value in connection.hgetall(prefix + SAID).items()}
    now = {state.name: f"{state.status} {state.digest}" for state in loaded.files}
    for state in loaded.files:
        if said.get(state.name) != now[state.name]:
            claimed, before = connection.eval(_CLAIM, 1, prefix + SAID, state.name, now[state.name])
            if claimed:
                _log_change(state, before.decode().split()[0] if before else None, loaded)
    for name in said.keys() - now.keys():
        if connection.eval(_CLAIM, 1, prefix + SAID, name, "")[0]:
            log.info("rule file %s is gone: its rules no longer run", name)


def _log_change(state: FileState, before: str | None, loaded: LoadedFiles) -> None:
    if state.status == GOOD:
        rules = sum(rule.file == state.path for rule in loaded.ruleset.rules.values())
        again = before is not None and before != GOOD
        log.info("rule file %s %s: %d rule(s)", state.path, "loads again" if again else "loaded", rules)
        return
    more = f" (and {len(state.errors) - 1} more error(s))" if len(state.errors) > 1 else ""
    runs = ("its last good version keeps running" if state.status == KEPT else
            "its rules that load run" if state.running else "none of its rules run")
    first = state.errors[0].format() if state.errors else f"{state.path}: it does not load"
    log.warning("rule file broken: %s%s; %s", first, more, runs)  # the error begins with file:line


def broken_files(connection: redis.Redis, prefix: str) -> list[dict]:
    """The broken files, oldest breakage first: file, since, running, good_since, errors."""
    found = [{"file": name.decode(), **json.loads(raw)} for name, raw in connection.hgetall(prefix + BROKEN).items()]
    return sorted(found, key=lambda f: (f["since"], f["file"]))


def with_iso_times(entry: dict) -> dict:
    """A broken file's entry as an API shows it: `since` and `good_since` in ISO 8601 (UTC), not epoch seconds."""
    return {**entry, **{name: datetime.fromtimestamp(entry[name], timezone.utc).isoformat()
                        for name in ("since", "good_since") if entry.get(name) is not None}}


def running(entry: dict) -> str:
    """What of a broken file runs: "last good" (its last good text), "valid rules" (a file never good: the
    rules in it that load), or "none"."""
    if not entry["running"]:
        return "none"
    return "last good" if entry.get("good_since") else "valid rules"
