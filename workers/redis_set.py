"""SET on a connection or a pipeline, sent as the command itself rather than through redis-py's `set()`.

redis-py 8 wraps `set()` in `experimental_args`, which binds each call's arguments to a dict to look for the
experimental IFEQ/IFNE ones, and `set()` then checks every option it has: ~35,000 instructions a SET, against
~5,000 for `execute_command("SET", ...)`. A busy worker's event makes four (its trace, the ledger's two marks,
the guards' note of the write): `set_key` took its instructions per event from 3.92 M to 3.82 M, 2.5 %
(bench/worker_cpu.py --instructions --together --batch 16). The reply is `set()`'s: redis-py's callback for SET
turns "OK" into True, nil (NX found the key) into None.
"""
from __future__ import annotations


def set_key(target, key: str, value, *, ex: int | None = None, px: int | None = None, nx: bool = False):
    """`target.set(key, value, ex=ex, px=px, nx=nx)`: queued on a pipeline, sent on a connection."""
    args = [key, value]
    if nx:
        args.append("NX")
    if ex is not None:
        args += ("EX", ex)
    if px is not None:
        args += ("PX", px)
    return target.execute_command("SET", *args)
