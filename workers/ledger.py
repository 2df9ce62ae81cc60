"""The step ledger: what we know about each operation's write, by its idempotency key.

    step:<idempotency key>  {"state": "sent", "at": …}    the request may have reached InLoox
                            {"state": "done", "output": …} it did, and this is what it returned

"sent" is written *before* a write goes out. Finding it on a later attempt means an earlier one
may have landed (a crash, a lost answer), so the executor checks InLoox before sending again.

An entry lives LEDGER_MAX_AGE (7 days) while its run may still be attempted (a failed or paused
run may be retried by a person that long). Once the run has succeeded (or was skipped), nothing
attempts it again, and its entries go after LEDGER_AFTER_FINISH: long enough for a late second
handling of its event (a worker that took it over), short enough that the ledger stays small.
Entries are compact JSON, zlib-compressed when long.
"""
from __future__ import annotations

from datetime import datetime, timezone

import redis

from workers import workspaces
from workers.round_trips.pipeline import set_key
from workers.runs import decode_record, encode_record

LEDGER_MAX_AGE = 7 * 24 * 3600  # seconds; workers.runs.RUNS_MAX_AGE, the sources' longest dedup claim
LEDGER_AFTER_FINISH = 3600  # seconds an entry is kept once its run has succeeded


def entry(connection: redis.Redis, key: str) -> dict | None:
    """The ledger entry of an operation, or None if it never started."""
    raw = connection.get(_key(key))
    return decode_record(raw) if raw is not None else None


def mark_sent(connection: redis.Redis, key: str) -> None:
    """Record, durably, that the write is about to be sent."""
    set_key(connection, _key(key), _dumps({"state": "sent", "at": _now()}), ex=LEDGER_MAX_AGE)


def mark_sent_first(target, key: str) -> None:
    """`mark_sent` unless the operation has an entry already (pipeline-friendly): with the creation of
    the run that will send it, so that a worker which also handles the event never overwrites a "done"."""
    set_key(target, _key(key), _dumps({"state": "sent", "at": _now()}), ex=LEDGER_MAX_AGE, nx=True)


def mark_done(connection: redis.Redis, key: str, output) -> None:
    """Record that the write landed, with its output for later steps and later attempts."""
    set_key(connection, _key(key), _dumps({"state": "done", "output": output, "at": _now()}), ex=LEDGER_MAX_AGE)


def finished(target, keys, *, keep_for: int = LEDGER_AFTER_FINISH) -> None:
    """The run of these operations has succeeded: keep their entries `keep_for` seconds more (pipeline-friendly)."""
    for key in keys:
        target.expire(_key(key), keep_for)


def mark_lost(connection: redis.Redis, key: str) -> None:
    """Record that the write went out and its answer was lost (InLoox may still apply it later)."""
    set_key(connection, _key(key), _dumps({"state": "sent", "at": _now(), "answer_lost": True}), ex=LEDGER_MAX_AGE)


def clear(connection: redis.Redis, key: str) -> None:
    """Forget a "sent" mark when InLoox answered that it did nothing (429, 503, refused connection)."""
    connection.delete(_key(key))


def _key(key: str) -> str:
    return workspaces.key(f"step:{key}")


def _dumps(value) -> bytes:
    return encode_record(value, compress=True)  # only this module reads the ledger


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
