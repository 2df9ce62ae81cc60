"""The event log: every accepted event of a workspace, in one Redis Stream, read by the workers.

    ws:<name>:events        stream; each entry's field `z` is the event's JSON, zlib-compressed
    group `engine`          the workers' consumer group: an entry delivered to a worker stays in the
                            group's pending list until that worker acknowledges it, so an event whose
                            worker died is claimed by another one (see workers/consumer/)

Accepting an event is one Lua script: claim the dedup key (SET NX) and append the entry, or do
neither. No WATCH: redis-py turns any connection error during a WATCH into WatchError, which used to
be read as "a concurrent duplicate" while Redis was still loading its AOF. Here a Redis error is an
error (the sender is told to retry), and a duplicate is only ever a claim that exists.

The entry's id is Redis's clock at acceptance (milliseconds): the worker matches the event against
rules at least that new (workers/worker_context.py), and retention cuts the stream by it.
"""
from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from workers import activity, metrics, runs, scripts, workspaces
from workers.metering import usage
from workers.metering.limits import WAITING as WAITING_OVER_LIMIT

log = logging.getLogger(__name__)

GROUP = "engine"
BACKLOG_LOOK_MS = 1000
BACKLOG_HEADROOM = 20_000
PACE_BURST_SECONDS = 10  # a paced workspace may send this many seconds' worth at once after a quiet spell
EVENTS_KEEP = 100_000  # handled entries kept per workspace (the newest), at most
EVENTS_MAX_AGE = 7 * 86400  # seconds a handled entry is kept, at most
CONSUMER_FORGET_MS = 3600 * 1000  # a consumer of the group silent this long, with nothing pending, is deleted

# KEYS: dedup claim, stream, metrics hash, usage of the day, usage of the month (workers/metering),
# the workspace's activity stamp (workers/activity.py), its unfinished runs (workers/runs.py ACTIVE), its
# backlog as last counted, its pace, its runs waiting over its monthly limit (workers/metering/limits.py WAITING).
# ARGV: event id, claim ttl, event JSON, counter field if accepted, counter field if duplicate, usage field, day
# ttl, month ttl, backlog limit (0: none), the workers' group, how long a count is used, the headroom below the
# limit it needs for that, events a second (0: no pace), events at once, events a day (0: no limit), then the
# latest time to accept it by Redis's clock (ms since 1970; 0: any time), then the day's usage field of each source.
# Returns the new entry's id ({id, the day's events with it} with a daily limit), false for a duplicate, {waiting}
# when the workspace's backlog is at its limit, {-1, ms} when it is ahead of its pace by ms, {-2, used} when it
# accepted its events of the day, or {-3, ms} when it came ms after its latest time (nothing written in any case).
# The latest time is a chat's patience (web/commands.py): checked here, where the entry is written, because a Redis
# that holds writes (a failover's CLIENT PAUSE, a slow fsync) stored a command seconds after the web sent it.
# The day's events are counted here, with the append: read by the web before it, the count let every webhook through
# that two web processes (or threads) read before the others were stored, however many. The count it returns is
# what the web's usage alerts read: they follow an event counted, never a duplicate or a refusal.
# The pace is GCRA (a token bucket kept as one time): the key holds when the workspace's sending would be back to
# its pace, by Redis's clock (ms); an event may be accepted while that is at most the burst's time ahead of now.
# An accepted event marks its workspace active (the entry id's milliseconds), so that the poller polls
# it at full speed again, at no round trip of its own.
# The backlog: the log's entries the workers have not acknowledged (pending) or not read (lag; all of
# them before a worker made the group) and the runs not finished, those waiting over the monthly limit too (not
# in ACTIVE: no sweeper moves them on; uncounted, a workspace over its limit stored a run record for every
# webhook, kept 7 days, however many). A lag Redis cannot tell counts 0:
# wrongly refusing every sender is worse than a late refusal. Counting it cost Valkey ~16 us an event
# (XINFO GROUPS), ~15 % of its part: a count far enough below the limit (BACKLOG_HEADROOM, more than a
# deployment accepts for one workspace in BACKLOG_LOOK_MS) is kept that long and used by the next events.
_APPEND = """
local fresh = redis.call('EXISTS', KEYS[1]) == 0
local latest = tonumber(ARGV[16])
if latest > 0 and fresh then
  local clock = redis.call('TIME')
  local late = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000 - latest
  if late > 0 then return {-3, math.ceil(late)} end
end
local daily, used = tonumber(ARGV[15]), 0
if daily > 0 and fresh then
  for _, n in ipairs(redis.call('HMGET', KEYS[4], unpack(ARGV, 17))) do used = used + (tonumber(n) or 0) end
  if used >= daily then return {-2, used} end
end
local pace, now, due = tonumber(ARGV[13]), 0, nil
if pace > 0 and fresh then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
  local gap = 1000 / pace
  due = math.max(tonumber(redis.call('GET', KEYS[9])) or now, now) + gap
  local ahead = due - now - gap * tonumber(ARGV[14])
  if ahead > 0 then return {-1, math.ceil(ahead)} end
end
local limit = tonumber(ARGV[9])
if limit > 0 and fresh then
  local waiting = tonumber(redis.call('GET', KEYS[8]))
  if not waiting then
    waiting = redis.call('ZCARD', KEYS[7]) + redis.call('ZCARD', KEYS[10])
    if redis.call('EXISTS', KEYS[2]) == 1 then
      local grouped = false
      for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
        local f = {}
        for i = 1, #group, 2 do f[group[i]] = group[i + 1] end
        if f['name'] == ARGV[10] then
          grouped = true
          waiting = waiting + f['pending'] + (tonumber(f['lag']) or 0)
        end
      end
      if not grouped then waiting = waiting + redis.call('XLEN', KEYS[2]) end
    end
    if waiting + tonumber(ARGV[12]) < limit then redis.call('SET', KEYS[8], waiting, 'PX', ARGV[11]) end
  end
  if waiting >= limit then return {waiting} end
end
if fresh then
  -- The entry first, then the claim of its id: Redis keeps what a script wrote before an error, and a claim
  -- written before an XADD Redis refused (the log's key of another type) made the sender's retry of an event
  -- answered 503 a duplicate, the event lost.
  local id = redis.call('XADD', KEYS[2], '*', 'z', ARGV[3])
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  if due then redis.call('SET', KEYS[9], due, 'PX', math.ceil(due - now) + 1) end
  redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
  -- The day's and month's TTLs are set by their first count of this source (every writer sets them
  -- when it makes a key; workers/metering/expiry.py), not with every event.
  if redis.call('HINCRBY', KEYS[4], ARGV[6], 1) == 1 then redis.call('EXPIRE', KEYS[4], ARGV[7]) end
  if redis.call('HINCRBY', KEYS[5], ARGV[6], 1) == 1 then redis.call('EXPIRE', KEYS[5], ARGV[8]) end
  redis.call('SET', KEYS[6], string.match(id, '^%d+'))
  if daily > 0 then return {id, used + 1} end
  return id
end
redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
return false
"""
_APPEND_SCRIPT = scripts.script(_APPEND)

# Each worker reads as a consumer of its own name (RQ's, new at every start), and Redis keeps a consumer in the
# group until it is deleted: every restart of every worker added one to every workspace's group, for good. One
# that has nothing pending and has not asked for ARGV[2] ms is deleted here, in one step with the look at its
# pending entries (one with any keeps them: another worker takes them over, workers/consumer/). A live one deleted
# is made again by its next read. KEYS: the stream. ARGV: the group, idle ms. Returns how many went.
_FORGET = """
local gone = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #consumer, 2 do f[consumer[i]] = consumer[i + 1] end
  if f['pending'] == 0 and f['idle'] >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    gone = gone + 1
  end
end
return gone
"""
_FORGET_SCRIPT = scripts.script(_FORGET)


@dataclass(frozen=True)
class Entry:
    """One event as read from the log: its stream id, the event dict and its acceptance time."""

    id: str
    event: dict

    @property
    def accepted_at(self) -> float:
        """Seconds since the epoch by Redis's clock when the event was accepted."""
        return int(self.id.split("-", 1)[0]) / 1000.0


def stream_key(workspace: str | None = None) -> str:
    """The stream of `workspace` (default: the current one)."""
    if workspace is None:
        return workspaces.key("events")
    return f"ws:{workspace}:events"


class BacklogFull(Exception):
    """The workspace has `waiting` events and runs not yet done, at or over its `limit`: nothing was stored."""

    def __init__(self, waiting: int, limit: int):
        super().__init__(f"{waiting:,} events and runs waiting (the limit is {limit:,})")
        self.waiting, self.limit = waiting, limit


class DayFull(Exception):
    """The workspace accepted `used` events today (UTC), at or over its `limit` (events_per_day): nothing was stored."""

    def __init__(self, used: int, limit: int):
        super().__init__(f"{used:,} events accepted today (the limit is {limit:,})")
        self.used, self.limit = used, limit


class TooLate(Exception):
    """The event came `late` seconds after the latest time it could be accepted (`append`'s `latest`): nothing was
    stored."""

    def __init__(self, late: float):
        super().__init__(f"{late:.3f} s after the latest time it could be accepted")
        self.late = late


class TooFast(Exception):
    """The workspace sends faster than its `per_second` (after a burst of `burst`): nothing was stored; the next event
    may be accepted in `wait` seconds."""

    def __init__(self, wait: float, per_second: float, burst: int):
        super().__init__(f"more than {per_second:g} events a second (after a burst of {burst:,})")
        self.wait, self.per_second, self.burst = wait, per_second, burst


def append(target, event: dict, *, dedup_key: str, dedup_ttl: int, counted: tuple[str, str], backlog_limit: int = 0,
           per_second: float = 0.0, per_day: int = 0, latest: float = 0.0):
    """Run the append script on `target`: the new entry's id (None for a duplicate), or queue it on a pipeline.
    With `per_day` (on a connection), an accepted event's reply is (its id, the events accepted today with it).

    `counted` is the (accepted, duplicate) counter fields; the script counts the outcome itself, so
    the count is exact without knowing the outcome beforehand; so is the workspace's usage (an
    accepted event only). With a `backlog_limit` (on a connection only), an event that is not a duplicate
    is refused with BacklogFull while the workspace has that many events and runs waiting; with `per_second`,
    with TooFast while the workspace's events come faster (after a burst of PACE_BURST_SECONDS' worth); with
    `per_day`, with DayFull once the workspace accepted that many events today, every source counted; with `latest`
    (a time.time()), with TooLate when Redis's clock is past it as the event would be written.
    """
    name, day = workspaces.current().name, usage.today()
    burst = max(1, round(per_second * PACE_BURST_SECONDS))
    keys = [dedup_key, stream_key(), metrics.COUNTERS, usage.day_key(name, day), usage.month_key(name, usage.month_of(day)),
            activity.key(), workspaces.key(runs.ACTIVE), workspaces.key("events:backlog"), workspaces.key("events:pace"),
            workspaces.key(WAITING_OVER_LIMIT)]
    reply = scripts.call(target, _APPEND_SCRIPT, keys=keys,
                         args=[event["id"], dedup_ttl, encode(event), *counted, usage.event_field(event["source"]),
                               usage.DAY_TTL, usage.MONTH_TTL, backlog_limit, GROUP, BACKLOG_LOOK_MS, BACKLOG_HEADROOM,
                               per_second, burst, per_day, round(latest * 1000),
                               *map(usage.event_field, usage.SOURCES)])
    if isinstance(reply, list):
        if isinstance(reply[0], (bytes, str)):  # accepted, with the day's count
            return reply[0], int(reply[1])
        if int(reply[0]) == -1:
            raise TooFast(int(reply[1]) / 1000, per_second, burst)
        if int(reply[0]) == -2:
            raise DayFull(int(reply[1]), per_day)
        if int(reply[0]) == -3:
            raise TooLate(int(reply[1]) / 1000)
        raise BacklogFull(int(reply[0]), backlog_limit)
    return reply


def ensure_group(connection: redis.Redis, stream: str) -> None:
    """Create the workers' group on `stream` (and the stream) if missing, reading from its first entry."""
    try:
        connection.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read_new(connection: redis.Redis, streams: list[str], consumer: str, *, count: int,
             block_ms: int | None, acks: dict[str, list[str]] | None = None,
             more: tuple[list[str], int] | None = None) -> list[tuple[str, Entry]]:
    """Up to `count` entries per stream not yet delivered to any worker, now delivered to `consumer`;
    `acks` (entry ids by stream, handled) acknowledged first, in the same round trip. `more` (streams, extra):
    then up to `extra` more of each of those streams, in the same round trip too (their entries after the
    first read's)."""
    extra = more is not None and more[0] and more[1] > 0
    if acks or extra:
        with connection.pipeline(transaction=False) as pipe:
            for stream, ids in (acks or {}).items():
                ack(pipe, stream, ids)
            pipe.xreadgroup(GROUP, consumer, {s: ">" for s in streams}, count=count, block=block_ms)
            if extra:
                pipe.xreadgroup(GROUP, consumer, {s: ">" for s in more[0]}, count=more[1])
            answers = pipe.execute()[-2 if extra else -1:]
    else:
        answers = [connection.xreadgroup(GROUP, consumer, {s: ">" for s in streams}, count=count, block=block_ms)]
    return [(as_text(stream), entry)
            for answer in answers for stream, entries in answer or [] for entry_id, fields in entries
            if fields and (entry := readable(entry_id, fields)) is not None]


def claim_stale(connection: redis.Redis, stream: str, consumer: str, *, min_idle_ms: int,
                count: int) -> list[tuple[Entry | None, str, int]]:
    """Take over entries another worker got but has not acknowledged for `min_idle_ms`.

    Returns (entry, id, times delivered before); the entry is None when it was trimmed meanwhile, a stand-in
    (`damaged`) when it cannot be decoded: given up on, with a trace that says so.
    """
    stale = connection.xpending_range(stream, GROUP, min="-", max="+", count=count, idle=min_idle_ms)
    if not stale:
        return []
    ids = [item["message_id"] for item in stale]
    claimed = {as_text(i): fields for i, fields in connection.xclaim(stream, GROUP, consumer, min_idle_ms, ids)}
    result = []
    for item in stale:
        entry_id = as_text(item["message_id"])
        if entry_id not in claimed and not _claimed_by(item, consumer):
            continue  # another worker took it first
        fields = claimed.get(entry_id)
        entry = (readable(entry_id, fields) or damaged(entry_id)) if fields else None
        result.append((entry, entry_id, int(item["times_delivered"])))
    return result


def touch(connection: redis.Redis, stream: str, consumer: str, ids: Iterable[str]) -> None:
    """Reset the idle time of entries this worker is still handling, so nobody claims them."""
    ids = list(ids)
    if ids:
        connection.xclaim(stream, GROUP, consumer, 0, ids, justid=True)


def ack(target, stream: str, ids: list[str]) -> None:
    """Mark entries handled (their runs are stored and started)."""
    if ids:
        target.xack(stream, GROUP, *ids)


def trim(connection: redis.Redis, stream: str, *, keep: int = EVENTS_KEEP, max_age: float = EVENTS_MAX_AGE,
         now: float | None = None, approximate: bool = True, forget_idle_ms: int | None = None) -> None:
    """Drop handled entries older than `max_age`, and beyond the newest `keep` when nothing waits; with
    `forget_idle_ms`, also the group's consumers idle that long with nothing pending (workers gone).

    Never an entry that is not handled yet: the cut stops at the oldest pending or undelivered one.
    `approximate` lets Redis cut at its storage nodes' bounds (cheap; a few more entries stay).
    """
    now = time.time() if now is None else now
    group = group_info(connection, stream)
    if group is None:
        return
    safe = as_text(group["last-delivered-id"])
    summary = connection.xpending(stream, GROUP)
    if summary["pending"]:
        safe = min(safe, as_text(summary["min"]), key=id_order)
    cut = min(safe, f"{int((now - max_age) * 1000)}-0", key=id_order)
    connection.xtrim(stream, minid=cut, approximate=approximate)
    if not summary["pending"] and group.get("lag") == 0:  # None: Redis cannot tell; keep everything then
        connection.xtrim(stream, maxlen=keep, approximate=approximate)
    if forget_idle_ms is not None and int(group.get("consumers") or 0) > 1:
        scripts.call(connection, _FORGET_SCRIPT, keys=[stream], args=[GROUP, forget_idle_ms])


def entries(connection: redis.Redis, *, workspace: str | None = None, count: int = 1000) -> list[Entry]:
    """The newest `count` events of the log, oldest first (handled or not)."""
    found = connection.xrevrange(stream_key(workspace), count=count)
    return [entry for entry_id, fields in reversed(found) if (entry := readable(entry_id, fields)) is not None]


def waiting(connection: redis.Redis, *, workspace: str | None = None) -> list[Entry]:
    """Accepted events no worker has finished handling yet (undelivered or unacknowledged), oldest first."""
    stream = stream_key(workspace)
    group = group_info(connection, stream)
    if group is None:
        return entries(connection, workspace=workspace, count=10_000)
    pending = {as_text(p["message_id"]) for p in connection.xpending_range(stream, GROUP, "-", "+", 10_000)}
    last = id_order(as_text(group["last-delivered-id"]))
    return [e for e in entries(connection, workspace=workspace, count=10_000)
            if e.id in pending or id_order(e.id) > last]


def backlog(connection: redis.Redis, *, workspace: str | None = None) -> int:
    """How many accepted events are not handled yet: not yet delivered plus delivered but unacknowledged."""
    stream = stream_key(workspace)
    group = group_info(connection, stream)
    if group is None:
        return connection.xlen(stream)
    lag = group.get("lag")
    if lag is None:  # Redis cannot tell after some trims: count what is after the last delivered entry
        lag = len(connection.xrange(stream, min="(" + as_text(group["last-delivered-id"]), count=100_000))
    return int(lag) + int(group["pending"])


def group_info(connection: redis.Redis, stream: str) -> dict | None:
    """XINFO GROUPS' entry for the workers' group on `stream`, or None (no stream, or no group yet)."""
    if not connection.exists(stream):
        return None
    return next((g for g in connection.xinfo_groups(stream) if as_text(g["name"]) == GROUP), None)


def _claimed_by(item: dict, consumer: str) -> bool:
    return as_text(item["consumer"]) == consumer


def encode(event: dict) -> bytes:
    """An event as stored in the log: compact JSON, zlib-compressed (a third smaller: events are kept for days).

    With a window no larger than the event and level 1, as run records are (runs.compress_small): the same
    size for events this small, a little cheaper than level 6 with zlib's default 32 KB window."""
    return runs.compress_small(json.dumps(event, separators=(",", ":"), default=str).encode())


DAMAGED = "damaged"  # the source, and the event id's prefix, of an entry that cannot be decoded (`damaged`)


def decode_entry(entry_id, fields: dict) -> Entry:
    return Entry(as_text(entry_id), json.loads(zlib.decompress(fields[b"z"])))


def readable(entry_id, fields: dict, *, told: bool = True) -> Entry | None:
    """The entry, or None when it cannot be decoded (damaged, or written by no web of ours): logged by its id
    (`told`).

    Every read of the log goes through here. Raised, it failed the whole read or claim that brought it, and so every
    good entry beside it, at every claim again; the web's pages and replays of the log answered 500. Left out of a
    worker's read it stays pending, and the claim that takes it over gives up on it, keeping a trace that says so
    under its stand-in's id (`damaged`).
    """
    try:
        entry = decode_entry(entry_id, fields)
    except (KeyError, ValueError, zlib.error):  # ValueError: JSON's and UTF-8's errors
        entry = None
    if entry is None or not isinstance(entry.event, dict):
        if told:
            log.error("event entry %s cannot be decoded; it is left out (and given up on when a worker claims it)",
                      as_text(entry_id))
        return None
    return entry


def shown(entry_id, fields: dict) -> Entry:
    """The entry as a person's listing of the log shows it: a stand-in (`damaged`) when it cannot be decoded."""
    return readable(entry_id, fields, told=False) or damaged(entry_id)


def damaged(entry_id) -> Entry:
    """A stand-in for an entry that cannot be decoded, under the event id `damaged:<entry id>`: its trace (kept when
    a worker gives up on it) and the event pages name it by that; nothing ever runs for it."""
    entry_id = as_text(entry_id)
    return Entry(entry_id, {"id": f"{DAMAGED}:{entry_id}", "source": DAMAGED, "kind": "entry", "damaged": True})


def id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def as_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
