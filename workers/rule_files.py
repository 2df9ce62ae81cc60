"""The state of a workspace's rule folder in Redis: each file's last good text, and which files are broken since when.

    <prefix>rules:last-good   hash: file name → JSON {"text", "digest", "since"}: the newest text of
                              the file in which every rule loaded
    <prefix>rules:broken      hash: file name → JSON {"since", "digest", "running", "good_since",
                              "errors"}: a file that does not load now ("running" names the digest
                              of the last good text in use, "" when none of the file runs)

Kept in Redis, not in each process: the web, every worker and the poller must run the same
version of a broken file, also after a restart while it is broken. Any process that loads the
folder records what it found (the same answer from the same files: the writes agree).
"""
from __future__ import annotations

import json
import time

import redis

from engine.last_good import GOOD, LoadedFiles

LAST_GOOD = "rules:last-good"
BROKEN = "rules:broken"


def last_good(connection: redis.Redis, prefix: str) -> dict[str, str]:
    """File name → its last good text."""
    return {name.decode(): json.loads(raw)["text"] for name, raw in connection.hgetall(prefix + LAST_GOOD).items()}


def record(connection: redis.Redis, prefix: str, texts: dict[str, str], loaded: LoadedFiles, *,
           now: float | None = None) -> None:
    """Note the good texts and the broken files of a load of the folder (`texts`: file name → text)."""
    now = time.time() if now is None else now
    good = {name.decode(): json.loads(raw) for name, raw in connection.hgetall(prefix + LAST_GOOD).items()}
    broken = {name.decode(): json.loads(raw) for name, raw in connection.hgetall(prefix + BROKEN).items()}
    with connection.pipeline(transaction=False) as pipe:
        for state in loaded.files:
            if state.status == GOOD:
                if good.get(state.name, {}).get("digest") != state.digest:
                    pipe.hset(prefix + LAST_GOOD, state.name, json.dumps(
                        {"text": texts[state.name], "digest": state.digest, "since": now}))
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


def broken_files(connection: redis.Redis, prefix: str) -> list[dict]:
    """The broken files, oldest breakage first: file, since, running, good_since, errors."""
    found = [{"file": name.decode(), **json.loads(raw)} for name, raw in connection.hgetall(prefix + BROKEN).items()]
    return sorted(found, key=lambda f: (f["since"], f["file"]))


def running(entry: dict) -> str:
    """What of a broken file runs: "last good" (its last good text), "valid rules" (a file never good: the
    rules in it that load), or "none"."""
    if not entry["running"]:
        return "none"
    return "last good" if entry.get("good_since") else "valid rules"
