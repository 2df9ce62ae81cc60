"""Runs: one matched rule for one event, with the trace of every step, kept in Redis.

A run's id is derived from (event id, rule id), so handling the same event twice finds the run it
already made instead of making a second one, even when the rule changed in between: a rule runs
at most once per event. The run keeps the plan (and rule version) it was made with. Keys are the workspace's own
(`workspaces.key`): a run of one workspace cannot be read through another.

    run:<id>            JSON of the run (status, plan, steps with requests, responses and timings)
    runs                sorted set of run ids by creation time (newest last): what `list_runs` reads
    runs:rule:<rule>    the same, per rule
    runs:done           finished runs ("<run id> <rule id>") by the time they finished: what is trimmed
    runs:active         runs some process must still move on (not finished, not paused), by the
                        time they count as lost: what the sweeper reads (workers/recovery.py)
    runs:paused         paused runs ("<run id> <rule id>") by their last write: what takes the
                        listings' ids of those whose record expired untouched
    trace:<event id>    the event's explain report; `traces` lists them by the time it was handled

Retention, by count and by age (see docs/deploy.md):

- The newest RUNS_KEEP finished runs (status in TERMINAL) are kept. Storing or finishing a run
  deletes the runs that finished before those, in the same transaction: the record and its
  entries in `runs`, `runs:rule:<rule>` and `runs:done`, not only the listing. Unfinished runs
  (queued, retrying, held, paused, over_limit) are never in `runs:done`, so no count deletes a run that is
  still waiting; a run joins it when it finishes.
- Every record expires RUNS_MAX_AGE after its last write (a waiting run's TTL starts again on each
  change); finished runs older than that leave the indexes when a run is next stored or finishes, and
  so do paused runs nobody resumed in that time (`runs:paused`).
- Traces: the newest TRACES_KEEP, at most RUNS_MAX_AGE old, deleted with their index entries.

Records are compact JSON: a step's output is kept once (in `outputs`) and its request once (in the
plan) when they are the same; a trace keeps its matched rules' plans in their runs. `load_run` and
`load_trace` put them back, so readers see the whole record; records stored before load as they are.
"""
from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import redis
from redis.client import Pipeline

from engine import Plan
from workers import scripts
from workers.round_trips.pipeline import set_key
from workers.workspaces import key

RUNS_KEEP = 10_000  # finished runs kept per workspace (newest first); unfinished runs are never trimmed
TRACES_KEEP = 10_000  # event traces kept per workspace (newest first)
RUNS_MAX_AGE = 7 * 24 * 3600  # seconds a run record or trace lives after its last write
TRIM_BATCH = 1000  # most entries one store deletes (a lowered keep-count catches up over several)
# Every status a run can be in, in the order a run moves through them (the runs API's `status`
# enum, the dashboard's filter and `flask runs list --status` offer these).
STATUSES = ("queued", "held", "retrying", "succeeded", "failed", "skipped", "shadow", "paused", "over_limit")
TERMINAL = frozenset({"succeeded", "failed", "skipped", "shadow"})
WAITING_FOR_A_PERSON = frozenset({"paused"})
# Runs over the workspace's monthly limit: workers/metering/limits.py lists and releases them, not the sweeper.
WAITING_FOR_THE_LIMIT = frozenset({"over_limit"})
ACTIVE = "runs:active"
PAUSED = "runs:paused"
GRACE = 30.0  # seconds past a run's due time before it counts as lost
LIMITED_GRACE = 600.0  # the same for a run waiting its turn behind its rule's `concurrency` limit
# zlib-compress run records and traces (about 60% smaller); readers go through decode_run /
# decode_record (`load_run`, `list_runs`, `load_trace`), which read both forms.
COMPRESS = True
COMPRESS_OVER = 200  # bytes of JSON below which compressing gains nothing

# Deletes what is past the keep-count or the age cut-off from a retention index, records included.
# KEYS: the retention index (runs:done or traces), the listing index (runs or traces).
# ARGV: keep, age cut-off (a score), record key prefix, per-rule index prefix ("" for traces), batch.
# runs:done and runs:paused members are "<run id> <rule id>"; trace members are event ids (any text).
_TRIM = """
local done, listing = KEYS[1], KEYS[2]
local keep, batch = tonumber(ARGV[1]), tonumber(ARGV[5])
local members = redis.call('ZRANGEBYSCORE', done, '-inf', '(' .. ARGV[2], 'LIMIT', 0, batch)
local excess = math.min(redis.call('ZCARD', done) - #members - keep, batch - #members)
if excess > 0 then
  for _, m in ipairs(redis.call('ZRANGE', done, #members, #members + excess - 1)) do
    members[#members + 1] = m
  end
end
for _, m in ipairs(members) do
  local id = m
  if ARGV[4] ~= '' then
    local space = string.find(m, ' ', 1, true)
    id = string.sub(m, 1, space - 1)
    redis.call('ZREM', ARGV[4] .. string.sub(m, space + 1), id)
  end
  redis.call('DEL', ARGV[3] .. id)
  redis.call('ZREM', listing, id)
  redis.call('ZREM', done, m)
end
return #members
"""
_TRIM_SCRIPT = scripts.script(_TRIM)

# Takes out of runs:paused the runs last paused before the age cut-off whose record is gone (it expired while paused),
# and their ids out of the listings. One whose record is there was resumed since (a record is rewritten at each
# change), or its record outlives the cut by the clocks' skew: looked at again a record's life later.
# KEYS: runs:paused, runs. ARGV: age cut-off (a score), record key prefix, per-rule index prefix, batch, now (a score).
_FORGET_PAUSED_SCRIPT = scripts.script("""
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[4]))
for _, m in ipairs(members) do
  local space = string.find(m, ' ', 1, true)
  local id = string.sub(m, 1, space - 1)
  if redis.call('EXISTS', ARGV[2] .. id) == 0 then
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', ARGV[3] .. string.sub(m, space + 1), id)
    redis.call('ZREM', KEYS[1], m)
  else
    redis.call('ZADD', KEYS[1], ARGV[5], m)
  end
end
return #members
""")

# KEYS: record, runs, runs:rule:<rule>, runs:active, runs:done, then optional ones ("" for none): the
# rule's pause flag, its run counter on the entity (workers/guards.py), the run's lock (workers/jobs.py).
# ARGV: record, ttl, run id, created (score), deadline ("" for none), done member ("" unless finished),
# finished (score), counter limit, counter window (seconds), lock token, lock lease (ms).
# Returns {created, refused, the pause reason or nil, the count or nil, leased}: refused, nothing is stored.
_CREATE = """
-- A run that exists already (its event handled again: a worker died before acknowledging it) is neither counted by
-- the loop guard nor refused by it: counted at each handling, redeliveries of one event paused its rule as a loop.
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, 0, false, false, 0} end
local paused, count = false, false
if KEYS[6] ~= '' then paused = redis.call('GET', KEYS[6]) end
if KEYS[7] ~= '' then
  count = redis.call('INCR', KEYS[7])
  redis.call('EXPIRE', KEYS[7], ARGV[9], 'NX')
end
if paused or (count and count > tonumber(ARGV[8])) then return {0, 1, paused, count, 0} end
-- The listings and the sweeper's index before the record (none exists: see above): Redis keeps what a script wrote
-- before an error, and a record stored before a listing Redis refused was a run no listing showed and no sweeper knew.
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[4], ARGV[5], ARGV[3]) end
if ARGV[6] ~= '' then redis.call('ZADD', KEYS[5], ARGV[7], ARGV[6]) end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local leased = 0
if KEYS[8] ~= '' and redis.call('SET', KEYS[8], ARGV[10], 'NX', 'PX', ARGV[11]) then leased = 1 end
return {1, 0, paused, count, leased}
"""
_CREATE_SCRIPT = scripts.script(_CREATE)

# A run's record and the counts that must land with it, or neither (a billable run's, whose record says `billed`:
# workers/metering/usage.py `bill`), and its slot under the monthly limit given back with them (a slot given back
# without the record let one more run in over the limit; a record without its slot given back kept the slot for
# good). KEYS: the record, the slots' sorted set (when ARGV[3] names a member), then each counted hash. ARGV: the
# record, its TTL, the run's slot ('' for none), then for each hash: its TTL (0: left as it is), how many fields,
# then each field and amount. Returns the first count.
# Every key and field is checked before anything is written: Redis keeps what a script wrote before an error, and a
# record saying `billed` stored before a count Redis refused (a hash under a key of another type, a field that is no
# integer) was a billable run never counted, its end handled again finding it billed.
_SAVE_COUNTED = """
local counted = ARGV[3] ~= '' and 3 or 2
-- Every count's field read first: an HGET of a key of another type raises here, before anything is written, and a
-- field that is no integer is refused here, not by its HINCRBY after the record.
local at = 4
for i = counted, #KEYS do
  local fields = tonumber(ARGV[at + 1])
  at = at + 2
  for _ = 1, fields do
    local n = redis.call('HGET', KEYS[i], ARGV[at])
    if n and not (n == '0' or (#n < 19 and string.match(n, '^-?[1-9]%d*$'))) then
      return redis.error_reply('ERR ' .. KEYS[i] .. ' field ' .. ARGV[at] ..
                               ' holds no integer: the run and its counts are not stored')
    end
    at = at + 2
  end
end
if counted == 3 then redis.call('ZREM', KEYS[2], ARGV[3]) end  -- before the record: it raises on a key of another type
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local first = false
at = 4
for i = counted, #KEYS do
  local ttl, fields = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  at = at + 2
  for _ = 1, fields do
    local n = redis.call('HINCRBY', KEYS[i], ARGV[at], ARGV[at + 1])
    first = first or n
    at = at + 2
  end
  if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
end
return first
"""
_SAVE_COUNTED_SCRIPT = scripts.script(_SAVE_COUNTED)


TRIM_EVERY = 1.0  # seconds between one process's trims of one index (at the default keep and age)
_last_trim: dict[str, float] = {}


def _due(index: str) -> bool:
    """True (and noted) when this process last trimmed `index` TRIM_EVERY ago or more."""
    now = time.monotonic()
    if now - _last_trim.get(index, -TRIM_EVERY) < TRIM_EVERY:
        return False
    _last_trim[index] = now
    return True


def run_id(plan: Plan) -> str:
    """The run id of a plan: the same event and rule (and for_each item) give the same id, whatever its version."""
    return _run_id(plan.event_id, plan.rule_id, plan.item_key)


def _run_id(event_id: str, rule_id: str, item_key: str | None) -> str:
    text = f"{event_id}\n{rule_id}"
    text += f"\n{item_key}" if item_key is not None else ""
    return "run_" + hashlib.sha256(text.encode()).hexdigest()[:24]


def new_run(plan: Plan, *, now: datetime, status: str = "queued", reason: str = "", ruleset_version: str = "",
            forced: dict | None = None) -> dict:
    """A run record for `plan`, before any step ran; `ruleset_version` names the rule set it came from.

    `forced` ({"at", "by"}: a replay with --force) gives the run an id of its own, so that it runs
    even though the rule already ran for the event; the record keeps `forced`.
    """
    identity = run_id(plan) if forced is None else _run_id(f"{plan.event_id}\nforced {forced['at']}", plan.rule_id,
                                                          plan.item_key)
    planned = plan_record(plan, forced)
    return {
        **({"forced": forced} if forced else {}),
        "id": identity, "rule_id": plan.rule_id, "rule_version": plan.rule_version,
        "ruleset_version": ruleset_version,
        "event_id": plan.event_id, "source": plan.event.get("source"), "mode": plan.mode,
        "status": status, "reason": reason, "created_at": now.isoformat(), "updated_at": now.isoformat(),
        "plan": planned, "steps": [], "outputs": {}, "attempts": 0,
    }


def plan_record(plan: Plan, forced: dict | None) -> dict:
    """`plan` as a run record keeps it: a forced run's writes under keys of their own (the ledger and InLoox
    markers know the first run's keys). Also for a plan made again for a stored run (a hold's end)."""
    planned = plan.to_dict()
    if forced is not None:
        planned["operations"] = [{**op, "idempotency_key": _forced_key(op["idempotency_key"], forced["at"])}
                                 for op in planned["operations"]]
    return planned


def _forced_key(key: str, at: str) -> str:
    return "op_" + hashlib.sha256(f"{key}\nforced {at}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Lease:
    """A run's lock, taken with its record when the run is created (workers/jobs.py owns the key)."""

    key: str
    token: bytes
    ms: int


@dataclass(frozen=True)
class Creation:
    """What `queue_create`'s script did: stored the run or not, what the guards read, the lease."""

    created: bool
    refused: bool  # the guards said no: nothing was stored, the caller stores the run as skipped
    paused: bytes | None  # the rule's pause reason, when the guards were asked
    count: int | None  # the rule's runs on the entity in the window, when counted
    leased: bool  # the lease was taken (only ever with the run's creation)

    @classmethod
    def of(cls, reply) -> "Creation":
        created, refused, paused, count, leased = (list(reply) + [None] * 5)[:5]
        return cls(bool(created), bool(refused), paused or None, count, bool(leased))


def create_run(connection: redis.Redis, run: dict, *, keep: int | None = None, max_age: int | None = None) -> bool:
    """Store a new run; False (and nothing written) when a run with its id exists already.

    Also applies retention: finished runs past the newest `keep` (RUNS_KEEP) or finished longer
    than `max_age` seconds (RUNS_MAX_AGE) ago are deleted, in the same transaction.
    """
    with connection.pipeline(transaction=False) as pipe:
        at = queue_create(pipe, run, keep=keep, max_age=max_age)
        return Creation.of(pipe.execute()[at]).created


def queue_create(pipe: Pipeline, run: dict, *, guard=None, lease: Lease | None = None, keep: int | None = None,
                 max_age: int | None = None) -> int:
    """Queue `create_run`'s script on `pipe`; the index of its reply (`Creation.of` reads it).

    `guard` (a `workers.guards.Admission`) is asked in the same script: a run it refuses is not
    stored. `lease` is taken when the run is created, so that nobody starts it before its creator.
    """
    max_age = RUNS_MAX_AGE if max_age is None else max_age
    # Guards, record, listing, recovery deadline and lease in one script: a process killed in between
    # must not leave a record that no index lists and no sweeper knows (a second handling of the
    # event would find the record, run it, and it would never be listed), nor a run its guard refused.
    created_at = _stamp(run["created_at"])
    lost_at = deadline(run, now=time.time()) if is_active(run) else ""
    finished = run["status"] in TERMINAL
    at = len(pipe.command_stack)
    scripts.call(pipe, _CREATE_SCRIPT,
                 keys=[_key(run["id"]), key("runs"), key(f"runs:rule:{run['rule_id']}"), key(ACTIVE), key("runs:done"),
                       guard.paused_key if guard else "", (guard.counter_key or "") if guard else "",
                       lease.key if lease else ""],
                 # A run created under its lease starts at once and its record is replaced when it
                 # ends, most often within the second: compressing it would cost CPU for nothing kept.
                 args=[_encode_run(run, compress=lease is None), max_age, run["id"], created_at, lost_at,
                       member(run) if finished else "", _stamp(run["updated_at"]),
                       guard.limit if guard else 0, guard.window if guard else 0,
                       lease.token if lease else "", lease.ms if lease else 0])
    _trim_runs(pipe, keep, max_age)
    return at


def load_run(connection: redis.Redis, run_id: str) -> dict | None:
    """The run, or None when there is none (never made, trimmed, or expired)."""
    raw = connection.get(_key(run_id))
    return decode_run(raw) if raw is not None else None


def save_run(connection: redis.Redis, run: dict, *, now: datetime, keep: int | None = None,
             max_age: int | None = None, counts: list[tuple[str, int, dict[str, int]]] | None = None,
             slot: str | None = None) -> int | None:
    """Write the run back after a change (on a connection, or queued on the caller's pipeline).

    A finished run joins `runs:done`, by the time it finished, and retention is applied as in
    `create_run`. An unfinished one leaves `runs:done` first, so that no trim deletes it from then
    on, and is listed again should a trim have taken it a moment before (a failed run retried just
    as it was the oldest kept).

    `counts` ([(hash, its TTL or 0, {field: amount})]) are added in the script that writes the record, so that
    both land or neither: the caller's pipeline may be cut off in the middle, and what the record says about
    them (a billable run's `billed`, workers/metering/usage.py) must be true. On a pipeline, the index of that
    script's reply (the first count's new value); else None. `slot` (a sorted set) gives the run's slot under the
    monthly limit back in that script too (workers/metering/limits.py `settle`): not before the record, nor after.
    """
    run["updated_at"] = now.isoformat()
    if isinstance(connection, Pipeline):
        return _queue_save(connection, run, now, keep, max_age, counts, slot)
    with connection.pipeline() as pipe:
        _queue_save(pipe, run, now, keep, max_age, counts, slot)
        pipe.execute()
    return None


def note_reason(connection: redis.Redis, run: dict, reason: str, *, now: datetime) -> None:
    """Store `reason` in the record of a run that waits, and nothing else (its status, indexes and deadline as they
    are): why it does not move on when Redis refuses a key its move needs (workers/metering/limits.py). `save_run`
    would write that key too. Its TTL starts again, as at any change of a waiting run."""
    run.update(reason=reason, updated_at=now.isoformat())
    connection.set(_key(run["id"]), _encode_run(run), ex=RUNS_MAX_AGE)


def _queue_save(pipe: Pipeline, run: dict, now: datetime, keep: int | None, max_age: int | None,
                counts: list | None, slot: str | None) -> int | None:
    max_age = RUNS_MAX_AGE if max_age is None else max_age
    if is_active(run):
        pipe.zadd(key(ACTIVE), {run["id"]: deadline(run, now=now.timestamp())})
    else:
        pipe.zrem(key(ACTIVE), run["id"])
    # A paused run waits for a person, who may never come: noted by its last write, so that its ids leave the
    # listings once its record expired untouched (`_trim_runs`); the sweeper knows nothing of it, nor does the trim
    # of finished runs, and a listing unlists only the ids it reads.
    # Not taken out when it goes on (a command more on every save of every run, for what is rare): the trim asks
    # whether its record is still there.
    if run["status"] in WAITING_FOR_A_PERSON:
        pipe.zadd(key(PAUSED), {member(run): now.timestamp()})
    if run["status"] in TERMINAL:
        at = _queue_record(pipe, run, max_age, counts, slot)
        pipe.zadd(key("runs:done"), {member(run): now.timestamp()})
        _trim_runs(pipe, keep, max_age)
    else:
        pipe.zrem(key("runs:done"), member(run))
        at = _queue_record(pipe, run, max_age, counts, slot)
        _list(pipe, run)
    return at if counts else None


def _queue_record(pipe: Pipeline, run: dict, max_age: int, counts: list | None, slot: str | None) -> int:
    """Queue the record's write (with `counts` and `slot`, in one script); the index of its reply."""
    at = len(pipe.command_stack)
    if not counts and slot is None:
        set_key(pipe, _key(run["id"]), _encode_run(run), ex=max_age)
        return at
    counts = counts or []
    args: list = [_encode_run(run), max_age, run["id"] if slot is not None else ""]
    for _, ttl, fields in counts:
        args += [ttl, len(fields)]
        for field, amount in fields.items():
            args += [field, amount]
    keys = [_key(run["id"]), *([slot] if slot is not None else []), *(hash_key for hash_key, _, _ in counts)]
    scripts.call(pipe, _SAVE_COUNTED_SCRIPT, keys=keys, args=args)
    return at


def _trim_runs(pipe: Pipeline, keep: int | None, max_age: int) -> None:
    if keep is None and max_age == RUNS_MAX_AGE and not _due(key("runs:done")):
        return  # trimmed by this process less than TRIM_EVERY ago: a second's runs more is no matter
    cut = time.time() - max_age
    scripts.call(pipe, _TRIM_SCRIPT, keys=[key("runs:done"), key("runs")],
                 args=[RUNS_KEEP if keep is None else keep, cut, key("run:"), key("runs:rule:"), TRIM_BATCH])
    # Paused runs by age alone (no count: a run still waiting is never deleted to make room), and only those whose
    # record expired: one paused then resumed was not taken out of runs:paused (no command more on every save).
    scripts.call(pipe, _FORGET_PAUSED_SCRIPT, keys=[key(PAUSED), key("runs")],
                 args=[cut, key("run:"), key("runs:rule:"), TRIM_BATCH, time.time()])


def is_active(run: dict) -> bool:
    """True when some process is expected to move the run on (not finished, not waiting for a person or the limit)."""
    return run["status"] not in TERMINAL | WAITING_FOR_A_PERSON | WAITING_FOR_THE_LIMIT


def deadline(run: dict, *, now: float) -> float:
    """When an active run counts as lost: its due time (a retry's, a hold's end, else now) plus a grace."""
    due = max(run.get("resume_at") or now, now)
    if run["status"] == "held":
        due = max(due, _stamp(run["created_at"]) + float(run["plan"].get("hold_seconds") or 0))
    limited = run["status"] == "queued" and (run.get("plan") or {}).get("concurrency")
    return due + (LIMITED_GRACE if limited else GRACE)


def list_runs(connection: redis.Redis, *, rule: str | None = None, status: str | None = None,
              limit: int = 50) -> list[dict]:
    """The newest runs first, optionally of one rule and/or in one status.

    Ids whose record is gone (a waiting run that expired untouched) are skipped and unlisted.
    """
    return list(newest_runs(connection, rule=rule, status=status, limit=limit))


def newest_runs(connection: redis.Redis, *, rule: str | None = None, status: str | None = None, limit: int = 50,
                batch: int = 200) -> Iterator[dict]:
    """`list_runs` read `batch` records at a time as it is consumed (an export's 10,000 runs were all held at once);
    the gone ids are unlisted once it is consumed whole."""
    index = key(f"runs:rule:{rule}" if rule else "runs")
    given, gone, batch_start = 0, [], 0
    while given < limit:
        ids = connection.zrevrange(index, batch_start, batch_start + batch - 1)
        if not ids:
            break
        batch_start += len(ids)
        for run_id, raw in zip(ids, connection.mget([_key(i.decode()) for i in ids])):
            if raw is None:
                gone.append(run_id)
                continue
            run = decode_run(raw)
            if status is None or run["status"] == status:
                yield run
                given += 1
                if given >= limit:
                    break
    if gone:  # not before: unlisted while the ranks are read, the ids after them would move and be skipped
        connection.zrem(index, *gone)


def record_step(run: dict, step: dict[str, Any]) -> None:
    """Add or replace the trace of one step (by its index)."""
    run["steps"] = [s for s in run["steps"] if s["index"] != step["index"]] + [step]
    run["steps"].sort(key=lambda s: s["index"])


def _key(run_id: str) -> str:
    return key(f"run:{run_id}")


def _list(pipe: Pipeline, run: dict) -> None:
    score = _stamp(run["created_at"])
    pipe.zadd(key("runs"), {run["id"]: score})
    pipe.zadd(key(f"runs:rule:{run['rule_id']}"), {run["id"]: score})


def unlist(pipe: Pipeline, run_id: str, rule_id: str | None) -> None:
    """Queue the removal of a run whose record is gone (expired untouched) from the listings (the rule's too, when
    known): only a finished run leaves them with the trim, and a listing removes only the ids it comes across."""
    pipe.zrem(key("runs"), run_id)
    if rule_id:
        pipe.zrem(key(f"runs:rule:{rule_id}"), run_id)


def member(run: dict) -> str:
    """The run as a member of a set that must find its listings again ("<run id> <rule id>": runs:done, the runs
    waiting over the monthly limit); run ids have no spaces, and the rule names its per-rule listing."""
    return f"{run['id']} {run['rule_id']}"


def member_parts(text: str) -> tuple[str, str]:
    """(run id, rule id) of a `member`; the rule is "" for a bare run id (as listed before the rule was named)."""
    run_id, _, rule_id = text.partition(" ")
    return run_id, rule_id


def _stamp(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _encode_run(run: dict, *, compress: bool = COMPRESS) -> str:
    """Compact JSON; a step's output or request that `outputs` or the plan holds already is left out."""
    operations = {o.get("step"): o.get("params") for o in (run.get("plan") or {}).get("operations") or ()}
    outputs = run.get("outputs") or {}
    steps = []
    for step in run.get("steps", ()):
        elided = []
        if "request" in step and step["request"] is not None and step["request"] == operations.get(step["index"]):
            elided.append("request")
        if "output" in step and step.get("id") in outputs and step["output"] == outputs[step["id"]]:
            elided.append("output")
        if elided:
            step = {k: v for k, v in step.items() if k not in elided} | {"elided": elided}
        steps.append(step)
    return encode_record({**run, "steps": steps} if "steps" in run else run, compress=compress)


def decode_run(raw: bytes) -> dict:
    """A run record as stored (compressed or not, with elided steps) → the whole run."""
    run = decode_record(raw)
    elided = [s for s in run.get("steps", ()) if "elided" in s]
    if elided:
        operations = {o.get("step"): o.get("params") for o in run["plan"].get("operations") or ()}
        for step in elided:
            for field in step.pop("elided"):
                step[field] = operations.get(step["index"]) if field == "request" else run["outputs"].get(step["id"])
    return run


# What makes orjson write what json.dumps(default=str) wrote: int keys as strings, dates and
# dataclasses through `default`.
_ORJSON_AS_JSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def encode_record(value, *, compress: bool) -> bytes:
    """Compact JSON (UTF-8), zlib-compressed when `compress` and it is long enough to gain.

    orjson, not json: three or four records are written per run, and json.dumps took 33 us for a
    1.3 KB run record against orjson's 5. What orjson refuses is written by json as before: a lone
    surrogate (an event accepted before the web repaired them, or an InLoox answer), escaped, is
    still JSON and reads back as the same string, and an integer past 64 bits stays exact, so one
    odd value never keeps an event's trace or run from being stored. Dates and dataclasses go to
    `str` as with json (orjson would write its own formats).
    """
    try:
        text = orjson.dumps(value, default=str, option=_ORJSON_AS_JSON)
    except TypeError:  # orjson.JSONEncodeError is one
        text = json.dumps(value, default=str, separators=(",", ":")).encode()
    return compress_small(text) if compress and len(text) >= COMPRESS_OVER else text


def compress_small(text: bytes) -> bytes:
    """zlib at level 1 with a window no larger than the text (most records are 1-3 KB): as small as
    with zlib's default 32 KB window, and cheaper to start. Level 1 takes half of level 6's time (12
    against 25 us for a 1 KB run record) for 3 % more bytes. One call, not a compressobj's compress
    and flush: zlib lets go of the GIL in each, and taking it back among a worker's busy threads
    cost more than compressing (54 against 31 us of CPU per record with 48 threads, 9 us alone).
    `zlib.decompress` reads any window and level from the header."""
    return zlib.compress(text, 1, max(9, min(15, len(text).bit_length())))


def decode_record(raw: bytes):
    """What `encode_record` (or plain `json.dumps`, as records were stored before) wrote."""
    text = raw if raw[:1] == b"{" else zlib.decompress(raw)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # NaN, as json.dumps wrote a float that was not a number
        return json.loads(text)


def save_trace(pipe, report: dict, run_ids: list[str], *, now: datetime, keep: int | None = None,
               max_age: int | None = None) -> None:
    """Keep an event's explain report (matched rules, near misses and why) with the runs it made.

    `pipe` is a pipeline the caller executes (with its other bookkeeping: one round trip). A
    matched rule's plan is the plan of its run: the trace names the run (`run`) and `load_trace`
    takes the plan from it. Traces past the newest `keep` (TRACES_KEEP) or older than `max_age`
    (RUNS_MAX_AGE) are deleted.
    """
    max_age = RUNS_MAX_AGE if max_age is None else max_age
    event_id = report["event"]["id"]
    made = set(run_ids)
    rules = []
    for outcome in report.get("rules", ()):
        plan = outcome.get("plan")
        if plan:
            made_by = _run_id(plan["event_id"], plan["rule_id"], plan.get("item_key"))
            if made_by in made:
                outcome = {**outcome, "plan": None, "run": made_by}
        rules.append(outcome)
    trace = {**report, "rules": rules, "runs": run_ids, "handled_at": now.isoformat()}
    if run_ids:  # the event is in its runs' plans: kept there once (load_trace puts it back)
        trace["event"] = {"id": event_id, "in_run": run_ids[0]}
    set_key(pipe, key(f"trace:{event_id}"), encode_record(trace, compress=COMPRESS), ex=max_age)
    pipe.zadd(key("traces"), {event_id: now.timestamp()})
    if keep is None and max_age == RUNS_MAX_AGE and not _due(key("traces")):
        return
    scripts.call(pipe, _TRIM_SCRIPT, keys=[key("traces"), key("traces")],
                 args=[TRACES_KEEP if keep is None else keep, time.time() - max_age, key("trace:"), "", TRIM_BATCH])


def load_trace(connection: redis.Redis, event_id: str) -> dict | None:
    """The trace of an event, or None; matched rules' plans are read from their runs (if still kept)."""
    raw = connection.get(key(f"trace:{event_id}"))
    if raw is None:
        return None
    trace = decode_record(raw)
    referring = [r for r in trace.get("rules", ()) if r.get("run") and r.get("plan") is None]
    holder = trace["event"].get("in_run")
    wanted = [r["run"] for r in referring] + ([holder] if holder else [])
    plans = {run_id: decode_record(raw_run).get("plan")
             for run_id, raw_run in zip(wanted, connection.mget([_key(i) for i in wanted]) if wanted else ())
             if raw_run is not None}
    for outcome in referring:
        outcome["plan"] = plans.get(outcome["run"])
    if holder and plans.get(holder):
        trace["event"] = plans[holder]["event"]
    return trace
