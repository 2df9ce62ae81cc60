"""Commands sent with less of redis-py's Python: a pipeline that packs and reads them (`pipeline(connection)`), and
SET sent as the command (`set_key`).

A busy worker sends its batches' runs in pipelines of ~200 commands, 12 an event
(workers.jobs._each_round_trip). redis-py 8.1 spends ~7 µs of Python a command around what hiredis
does in C: its serializer copies every argument through a generator before `hiredis.pack_command`,
each reply passes two `parse_response` layers, and every command is parsed for HIMPORT field sets
(`redis._himport_exec.pipeline_prepares`) that this project never registers. Measured in one thread
against Valkey (bench/RESULTS.md section 49): 92-102 µs against 60-62 µs for an event's 12 commands.

Only `_execute_pipeline`, the part between the connection and the replies, is replaced. Everything
around it is redis-py's own: the pooled connection, its retry and disconnect on a connection error
(`Pipeline.execute`), scripts loaded first, error replies kept in place (`raise_on_error=False`) or
raised annotated as redis-py does, and each reply through the client's response callback with the
command's options. A pipeline this path is not sure of goes redis-py's whole way: a connection with
HIMPORT field sets in its registry, a command read undecoded or with a default for an error reply
(NEVER_DECODE, EMPTY_RESPONSE), a command name with a space in it or an argument hiredis cannot pack.
"""
from __future__ import annotations

import hiredis
import redis
from redis.client import EMPTY_RESPONSE, NEVER_DECODE, Pipeline
from redis.exceptions import ResponseError

_pack = hiredis.pack_command


class LeanPipeline(Pipeline):
    """A non-transaction pipeline whose round trip is packed and read in one short loop."""

    def _execute_pipeline(self, connection, commands, raise_on_error):
        registry = getattr(connection, "himport_registry", None)
        if registry is not None and registry.revision:  # field sets registered (or discarded): redis-py's way
            return super()._execute_pipeline(connection, commands, raise_on_error)
        try:
            packed = b"".join([_pack(_usual(args, options)) for args, options in commands])
        except (TypeError, ValueError, _Unusual):  # packed nothing yet: nothing was sent
            return super()._execute_pipeline(connection, commands, raise_on_error)
        connection.send_packed_command([packed])
        callbacks, read, replies = self.response_callbacks, connection.read_response, []
        for args, options in commands:  # every reply read before raising: the pooled socket stays in step
            try:
                reply = read()
            except ResponseError as error:
                replies.append(error)
                continue
            callback = callbacks.get(args[0])
            if callback is not None:
                options.pop("keys", None)  # for redis-py's client-side cache only, as its parse_response does
                reply = callback(reply, **options)
            replies.append(reply)
        if raise_on_error:
            self.raise_first_error(commands, replies)
        return replies


class _Unusual(Exception):
    """A command this path leaves to redis-py's own packing and reading."""


def _usual(args: tuple, options: dict) -> tuple:
    """`args`, if this path reads the command's reply as redis-py would; otherwise raises _Unusual."""
    if NEVER_DECODE in options or EMPTY_RESPONSE in options:
        raise _Unusual
    if not isinstance(args[0], str) or " " in args[0]:  # "SCRIPT EXISTS": redis-py splits the name
        raise _Unusual
    return args


def pipeline(connection: redis.Redis) -> LeanPipeline:
    """`connection.pipeline(transaction=False)`, sent the lean way."""
    return LeanPipeline(connection.connection_pool, connection.response_callbacks, False, None)


def set_key(target, key: str, value, *, ex: int | None = None, px: int | None = None, nx: bool = False):
    """`target.set(key, value, ex=ex, px=px, nx=nx)`, queued on a pipeline or sent on a connection, as the command.

    redis-py 8 wraps `set()` in `experimental_args`, which binds each call's arguments to a dict to look for the
    experimental IFEQ/IFNE ones, and `set()` then checks every option it has: ~35,000 instructions a SET, against
    ~5,000 for `execute_command("SET", ...)`. A busy worker's event makes four (its trace, the ledger's two marks,
    the guards' note of the write): this took its instructions per event from 3.92 M to 3.82 M, 2.5 %
    (bench/worker_cpu.py --instructions --together --batch 16). The reply is `set()`'s: redis-py's callback for SET
    turns "OK" into True, nil (NX found the key) into None.
    """
    args = [key, value]
    if nx:
        args.append("NX")
    if ex is not None:
        args += ("EX", ex)
    if px is not None:
        args += ("PX", px)
    return target.execute_command("SET", *args)
