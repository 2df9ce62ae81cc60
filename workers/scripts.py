"""Lua scripts called on a connection (EVALSHA) or queued on a pipeline (EVAL), one round trip each.

redis-py's Script objects, queued on a pipeline, make the pipeline ask SCRIPT EXISTS first: a
round trip more per pipeline, three per event on the run path. On a pipeline we send EVAL with the
script's text instead: Redis caches the compiled script by its digest, so the cost is the bytes.
"""
from __future__ import annotations

from redis.client import Pipeline
from redis.commands.core import Script


def script(text: str) -> Script:
    """A script object for `call`; made once, at import."""
    return Script(None, text.encode())


def call(target, lua: Script, *, keys: list, args: list):
    """Run `lua` on `target` (a connection: its result; a pipeline: queued, the result comes with execute)."""
    if isinstance(target, Pipeline):
        return target.eval(lua.script, len(keys), *keys, *args)
    return lua(keys=keys, args=args, client=target)
