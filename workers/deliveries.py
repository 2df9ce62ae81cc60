"""Deliveries of InLoox changes to subscribers, as Standard Webhooks: durable, retried, signed.

    fan_out(connection, event)     for an accepted InLoox change: one delivery per subscription
                                   that wants it (called while the event is handled, before it
                                   is acknowledged, so a crash re-creates nothing twice)
    deliver(delivery_id, ws)       RQ job: one attempt; the next one is scheduled on failure (a second
                                   job that comes before that attempt is due does nothing)
    sweep(connection)              deliveries whose job got lost (a killed worker) are queued again

    <prefix>delivery:<id>          JSON record: subscription, event, type, body, status
                                   (pending, delivered, failed), attempts [{at, status, error}]
    <prefix>deliveries:due         sorted set: pending delivery id → when its attempt is due
    <prefix>subs:<id>:deliveries   sorted set: the subscription's deliveries by creation time

The delivery id is the `webhook-id`: the same for every attempt, so a receiver can drop repeats.
Attempts after a 5xx, a 429, a timeout or a lost connection follow SCHEDULE (the Standard Webhooks
reference schedule, then a day: about two days, 52 h, in all); then the delivery is failed and can be
sent again by a person (`redeliver`). Other answers (3xx: redirects are not followed; 4xx) fail it
at once. Every connection goes through the outbound guard (workers/egress.py). Deliveries run as
RQ jobs, apart from rule runs, which the event consumer executes on its own threads.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from datetime import datetime, timedelta, timezone

import redis
from rq import Queue
from standardwebhooks.webhooks import Webhook

from workers import failpoints, metrics, outbound, scripts, subscriptions, watched
from workers.enqueue import job_status_key, queue, waiting, workspace_job_id
from workers.outbound import OutboundRefused
from workers.secrets import SecretUnreadable
from workers.worker_context import WorkerContext, workspace_job
from workers.workspaces import current, key

log = logging.getLogger(__name__)

DELIVER = "workers.deliveries.deliver"
SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000, 86400)  # seconds before attempts 2, 3, …
GRACE = 60  # seconds past its due time before a pending delivery's job counts as lost
EARLY = 1.0  # seconds an attempt may start before it is due: the clocks of the workers that schedule and run it differ
KEEP_PER_SUBSCRIPTION = 1000  # deliveries listed per subscription (the newest)
RECORD_TTL = 7 * 86400  # seconds a delivery record is kept after its last change
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
RETRYABLE = {429} | set(range(500, 600))


# A delivery made once: its entry among the due ones (should we die before queueing its job, the sweeper finds it
# there), its record (SET NX: the claim a second handling of the event finds, and makes nothing), its subscription's
# index. The record after the due entry, in a script: Redis keeps what was written before a command it refuses, and a
# record stored beside a due index it refused (a key of another type) was a delivery no job and no sweeper would
# ever send. (A subscription's index refused after a new record leaves it due: the sweeper sends it.) KEYS: the due
# index, the record, the subscription's index. ARGV: id, now, record, its TTL, how many the index keeps. Returns 1
# when the record is new.
_CREATE = scripts.script("""
redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
local new = redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', ARGV[4]) and 1 or 0
redis.call('ZADD', KEYS[3], 'NX', ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[5]) - 1)
return new
""")


def delivery_id(sub_id: str, event_id: str) -> str:
    """The same subscription and event give the same id: handling an event twice delivers it once."""
    return "msg_" + hashlib.sha256(f"{sub_id}\n{event_id}".encode()).hexdigest()[:24]


def body(event: dict) -> str:
    """The JSON a subscriber receives for an InLoox change."""
    return json.dumps({"type": f"inloox.{event['entity_set']}.{event['kind']}", "timestamp": event["occurred_at"],
                       "data": {"entity_set": event["entity_set"], "key": event.get("key"),
                                "changes": {f: {"from": c[0], "to": c[1]} for f, c in (event.get("changes") or {}).items()},
                                "entity": event.get("entity") or {}, "actor": event.get("actor") or {}}},
                      separators=(",", ":"), default=str)


def fan_out(connection: redis.Redis, event: dict, *, now: float | None = None) -> list[str]:
    """Create (once) and queue a delivery of `event` for each subscription that wants it; returns the new ids.

    Two round trips whatever the number of subscribers: the records (SET NX each) with their index
    entries, then the jobs of those that are new.
    """
    wanted = subscriptions.matching(connection, event)
    if not wanted:
        return []
    now = time.time() if now is None else now
    payload = body(event)
    records = [{"id": delivery_id(sub.id, event["id"]), "subscription": sub.id, "event_id": event["id"],
                "type": f"inloox.{event['entity_set']}.{event['kind']}", "created_at": now,
                "status": PENDING, "attempts": [], "body": payload} for sub in wanted]
    with connection.pipeline(transaction=False) as pipe:
        for record in records:
            scripts.call(pipe, _CREATE, keys=[key("deliveries:due"), _key(record["id"]),
                                              key(f"subs:{record['subscription']}:deliveries")],
                         args=[record["id"], now, json.dumps(record), RECORD_TTL, KEEP_PER_SUBSCRIPTION])
        created = [r for r, new in zip(records, pipe.execute()) if new]
    if created:  # the others were queued by an earlier handling of this event (or are the sweeper's)
        queue(connection).enqueue_many([_job(record["id"]) for record in created])
    return [r["id"] for r in created]


@workspace_job
def deliver(ctx: WorkerContext, delivery: str) -> str:
    """One attempt at a delivery; returns its status. A second job for the same delivery waits its turn."""
    connection = ctx.connection
    lock = connection.lock(key(f"delivery-lock:{delivery}"), timeout=ctx.outbound.timeout + 15, blocking=False)
    if not lock.acquire():
        return "locked"
    try:
        record, due = _load_due(connection, delivery)
        if record is None or record["status"] != PENDING:
            connection.zrem(key("deliveries:due"), delivery)  # nothing left to do (an event handled twice)
            return record["status"] if record else "missing"
        now = time.time()
        if due is not None and due > now + EARLY:
            # A second job for an attempt already made: the sweeper's, for a delivery that waited its turn in a busy
            # queue past GRACE, or a redelivery's. Sent now, the retry would go out before its time and use up the
            # schedule (a delivery failed within seconds); the job queued for the next attempt comes at its time.
            return "not due"
        sub = subscriptions.get(connection, record["subscription"])
        if sub is None or sub.disabled:
            return _finish(connection, record, FAILED, now, "the subscription was deleted" if sub is None
                           else f"the subscription is disabled: {sub.disabled}")
        status, error, refused = _send(ctx, sub, record, now)
        failpoints.hit("delivery_sent")  # tests only (inert unless ENGINE_FAILPOINTS is set)
        record["attempts"].append({"at": now, "status": status, "error": error})
        if status is not None and 200 <= status < 300:
            if sub.failing_since is not None:
                subscriptions.update(connection, sub.id, _delivered)
            return _finish(connection, record, DELIVERED, now)
        _note_failure(connection, sub, now)
        retry = status in RETRYABLE or (status is None and not refused)
        schedule = ctx.delivery_schedule or SCHEDULE
        if retry and len(record["attempts"]) <= len(schedule) and not sub.disabled:
            delay = schedule[len(record["attempts"]) - 1]
            _save(connection, record, due=now + delay)
            _queue(connection, delivery, delay=delay, attempt=len(record["attempts"]))
            return PENDING
        return _finish(connection, record, FAILED, now, error or f"answered {status}")
    finally:
        _release(lock, delivery)


def _release(lock, delivery: str) -> None:
    token = lock.local.token  # redis-py's release forgets it before its round trip
    try:
        lock.release()
    except redis.exceptions.LockError:
        pass  # it ran out (a subscriber slower than the lock): a second attempt may be under way
    except (redis.ConnectionError, redis.TimeoutError):
        # Redis went away under the attempt: the lock is given back, and the delivery queued again if it is still
        # pending, once Redis answers (workers/recovery.py), not a lock time-out and the sweeper's GRACE later.
        from workers import recovery  # it sweeps deliveries (this module) too

        recovery.left_behind(lock.name, token, delivery, lock.timeout, functools.partial(_again, delivery=delivery))


def _again(connection: redis.Redis, *, delivery: str) -> bool:
    """Queue `delivery` again now if it is still pending (its attempt was cut short by Redis)."""
    record = load(connection, delivery)
    if record is None or record["status"] != PENDING:
        return False
    now = time.time()
    connection.zadd(key("deliveries:due"), {delivery: now})
    _queue(connection, delivery, tag=f"-back{int(now)}")
    log.warning("delivery %s (%s): its attempt was cut short by Redis; queued again", delivery, current().name)
    return True


def signed_headers(webhook_id: str, body: str, secrets: list[str], now: float) -> dict[str, str]:
    """The headers of a Standard Webhooks POST of the JSON `body` at `now` (seconds), signed with each of `secrets`.

    Also what `flask webhooks send` signs its test delivery with: one way to sign, the way the web verifies.
    """
    stamp = datetime.fromtimestamp(int(now), timezone.utc)
    return {"content-type": "application/json", "webhook-id": webhook_id, "webhook-timestamp": str(int(now)),
            "webhook-signature": " ".join(Webhook(s).sign(webhook_id, stamp, body) for s in secrets)}


def _send(ctx: WorkerContext, sub: subscriptions.Subscription, record: dict,
          now: float) -> tuple[int | None, str, bool]:
    """(HTTP status or None, error text, refused by the guard) of one POST, signed with every active secret."""
    try:
        secrets = sub.signing_secrets(now, ctx.keyring)
    except SecretUnreadable as exc:
        # Retried on the schedule: a process started with the right SECRETS_KEY will sign it.
        log.error("delivery %s (%s) not sent: cannot sign: %s", record["id"], current().name, exc)
        return None, f"cannot sign: {exc}", False
    headers = {**signed_headers(record["id"], record["body"], secrets, now), "user-agent": "inloox-automation"}
    try:
        # Only the status counts: a receiver's 2xx with a long body is a delivery, not a failure to retry.
        response = outbound.send(ctx.outbound, "POST", sub.url, answer_bytes=0, data=record["body"].encode(),
                                 headers=headers)
    except OutboundRefused as exc:
        return None, str(exc), exc.refused
    return response.status_code, "" if response.status_code < 300 else f"answered {response.status_code}", False


def _note_failure(connection: redis.Redis, sub: subscriptions.Subscription, now: float) -> None:
    """Count the subscription as failing; after DISABLE_AFTER of nothing but failures, disable it."""
    if sub.failing_since is not None and (now - sub.failing_since < subscriptions.DISABLE_AFTER or sub.disabled):
        return

    disabled_now = False

    def failing(stored: subscriptions.Subscription) -> None:
        nonlocal disabled_now
        disabled_now = False
        if stored.failing_since is None:
            stored.failing_since = now
        elif now - stored.failing_since >= subscriptions.DISABLE_AFTER and not stored.disabled:
            stored.disabled = (f"every delivery failed for {subscriptions.DISABLE_AFTER // 86400} days (since "
                               f"{datetime.fromtimestamp(stored.failing_since, timezone.utc):%Y-%m-%d %H:%M} UTC)")
            disabled_now = True

    # Only these fields change, in one compare-and-set: a rotation meanwhile keeps its secrets.
    stored = subscriptions.update(connection, sub.id, failing)
    if stored is not None:
        sub.disabled = stored.disabled
    if disabled_now:
        metrics.count(connection, "subscriptions_disabled")
        log.error("subscription %s (%s) disabled: %s", sub.id, current().name, sub.disabled)


def _delivered(stored: subscriptions.Subscription) -> None:
    stored.failing_since = None


def _finish(connection: redis.Redis, record: dict, status: str, now: float, error: str = "") -> str:
    record["status"], record["finished_at"] = status, now
    if error:
        record["error"] = error
    _save(connection, record, due=None)
    metrics.count(connection, "deliveries", status=status)
    return status


def _save(connection: redis.Redis, record: dict, *, due: float | None) -> None:
    with connection.pipeline(transaction=False) as pipe:
        pipe.set(_key(record["id"]), json.dumps(record), ex=RECORD_TTL)
        if due is None:
            pipe.zrem(key("deliveries:due"), record["id"])
        else:
            pipe.zadd(key("deliveries:due"), {record["id"]: due})
        pipe.execute()


def _queue(connection: redis.Redis, delivery: str, *, delay: float = 0.0, attempt: int = 0, tag: str = "") -> None:
    options = {"job_id": workspace_job_id(f"{delivery}-{attempt}{tag}"), "result_ttl": 0, "job_timeout": 60}
    args = (delivery, current().name)
    if delay > 0:
        queue(connection).enqueue_in(timedelta(seconds=delay), DELIVER, *args, **options)
    else:
        queue(connection).enqueue(DELIVER, *args, **options)


def _job(delivery: str):
    """A first attempt's job, for Queue.enqueue_many."""
    return Queue.prepare_data(DELIVER, (delivery, current().name), job_id=workspace_job_id(f"{delivery}-0"),
                              result_ttl=0, timeout=60)


def _load_due(connection: redis.Redis, delivery: str) -> tuple[dict | None, float | None]:
    """The delivery's record and when its next attempt is due (None: no attempt is), in one round trip."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.get(_key(delivery))
        pipe.zscore(key("deliveries:due"), delivery)
        raw, due = pipe.execute()
    return (json.loads(raw) if raw is not None else None), due


def load(connection: redis.Redis, delivery: str) -> dict | None:
    raw = connection.get(_key(delivery))
    return json.loads(raw) if raw is not None else None


def listed(connection: redis.Redis, sub_id: str, *, limit: int = 50) -> list[dict]:
    """A subscription's newest deliveries, without their bodies."""
    ids = [i.decode() for i in connection.zrevrange(key(f"subs:{sub_id}:deliveries"), 0, limit - 1)]
    records = [json.loads(raw) for raw in connection.mget([_key(i) for i in ids]) if raw is not None] if ids else []
    return [{k: v for k, v in r.items() if k != "body"} for r in records]


class AttemptInFlight(Exception):
    """A delivery's attempt is being sent right now: its answer, not yet stored, would overwrite a redelivery."""


def redeliver(connection: redis.Redis, sub_id: str, delivery: str) -> dict | None:
    """Send a failed (or delivered) delivery again, same id and body; None when there is no such delivery. A pending
    one is sent now rather than at its next attempt's time.

    Raises AttemptInFlight while an attempt holds the delivery's lock: that attempt ends by storing its own copy of
    the record (delivered), over the redelivery's "pending", and the redelivery's job then finds nothing to send (a
    202 and no delivery, in a CI run). The lock and the record are watched, so an attempt that starts or ends between
    the look and the write makes it look again.
    """
    lock = key(f"delivery-lock:{delivery}")
    now = time.time()

    def again(pipe) -> dict | None:
        raw = pipe.get(_key(delivery))
        record = json.loads(raw) if raw is not None else None
        if record is None or record["subscription"] != sub_id:
            return None
        if pipe.exists(lock):
            raise AttemptInFlight(f"an attempt of {delivery} is being sent right now; redeliver it once that "
                                  "attempt is listed")
        record["status"] = PENDING
        record.pop("error", None)
        pipe.multi()
        pipe.set(_key(delivery), json.dumps(record), ex=RECORD_TTL)
        pipe.zadd(key("deliveries:due"), {delivery: now})
        return record

    record = watched.transaction(connection, again, _key(delivery), lock)
    if record is not None:
        _queue(connection, delivery, attempt=len(record["attempts"]), tag=f"-again{int(now)}")
    return record


def sweep(connection: redis.Redis, *, now: float | None = None) -> list[str]:
    """Queue again the pending deliveries GRACE past due whose job was lost (no one holds their lock, and no job of
    theirs waits in the queue or is scheduled). Four round trips for up to 100, and one job each queued again.

    A delivery waiting its turn behind a backlog (its job queued, not lost) is left to that job: a job more at each
    look would pile up in Redis, one a minute per delivery, for as long as the backlog lasts. It is looked at again
    GRACE later.
    """
    now = time.time() if now is None else now
    lost = [i.decode() for i in connection.zrangebyscore(key("deliveries:due"), "-inf", now - GRACE, start=0, num=100)]
    if not lost:
        return []
    with connection.pipeline(transaction=False) as pipe:
        for delivery in lost:
            pipe.exists(key(f"delivery-lock:{delivery}"))
            pipe.get(_key(delivery))
        looked = pipe.execute()
    unlocked, done = {}, []  # unlocked: delivery -> the number of its next attempt, which names its job (`_queue`)
    for delivery, locked, raw in zip(lost, looked[::2], looked[1::2]):
        record = json.loads(raw) if raw is not None else None
        if record is None or record["status"] != PENDING:
            done.append(delivery)  # nothing left to do (its job would say the same)
        elif not locked:
            unlocked[delivery] = len(record["attempts"])
    with connection.pipeline(transaction=False) as pipe:
        for delivery, attempt in unlocked.items():
            for name in _job_names(delivery, attempt):
                pipe.hget(*job_status_key(name))
        if done:
            pipe.zrem(key("deliveries:due"), *done)
        statuses = iter(pipe.execute())
    restarted = []
    for delivery in unlocked:
        own, swept = next(statuses), next(statuses)
        if not (waiting(own) or waiting(swept)):  # a started one still running holds the lock
            restarted.append(delivery)
    if unlocked:
        connection.zadd(key("deliveries:due"), {delivery: now for delivery in unlocked})
    for delivery in restarted:
        _queue(connection, delivery, attempt=unlocked[delivery], tag="-sweep")
    return restarted


def _job_names(delivery: str, attempt: int) -> tuple[str, str]:
    """The names of the jobs that may be waiting for a delivery's attempt: its own, and the sweeper's."""
    return f"{delivery}-{attempt}", f"{delivery}-{attempt}-sweep"


def _key(delivery: str) -> str:
    return key(f"delivery:{delivery}")
