"""Plan limits that hold and replay: `runs_per_month` (billable runs) and `events_per_day`.

    ws:<name>:limits:runs:inflight   sorted set: runs admitted under the monthly limit that have not
                                     billed or finished yet (a run's slot), by admission time
    ws:<name>:limits:runs:waiting    sorted set: runs over the limit (status `over_limit`), by creation
                                     time: the order they are released in
    ws:<name>:limits:alerted:<limit>:<period>:<percent>   the claim (SET NX) that the alert was sent: the name
                                     of the process that sent it

A run is admitted (`admit`) before its first step when the month's billable runs plus the runs in
flight stay under the limit; one script, so runs admitted at once never exceed it. A run that bills
(workers/metering/usage.py `bill`) or finishes gives its slot back in the script that writes its record (and count).
A run refused waits, stored with status `over_limit` and listed in `waiting`; each worker's
maintenance calls `release_waiting`, which starts as many as there is room for, oldest first,
once the limit is raised or removed, or a new month began. A released run is queued again under
its own id: its lock, status and step ledger make it run at most once (and a rule still runs at
most once per event: the run id is the event's and the rule's).

Over `events_per_day`, webhooks are answered 429 (web/hooks.py); events of other sources (our own
polling, schedules, chat, manual) are still accepted, and all sources count towards the limit. The event
log's append script refuses over it as it stores the webhook (workers/eventlog.py), after its check for
a duplicate, so that webhooks read at once by several web processes are not all let through; it returns
the day's count with the event it stored, and the web alerts (`alert_events`) from that: after an event
counted, never for a redelivery or a refusal.
At 80 % and 100 % of either limit, one notification goes to the workspace's `alerts` channel and
one log line is written, once each per period (the claim above). So, once an hour while it lasts, does a
webhook refused for the workspace's `backlog_limit` (workers/eventlog.py).
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from datetime import datetime, timedelta, timezone

import redis

from workers import scripts, workspaces
from workers.enqueue import queue_run
from workers.metering import usage
from workers.outbound import OutboundPolicy, OutboundRefused, notify
from workers.runs import ACTIVE, deadline, load_run, member, member_parts, note_reason, save_run, unlist

log = logging.getLogger(__name__)

INFLIGHT = "limits:runs:inflight"
WAITING = "limits:runs:waiting"
OVER_LIMIT = "over_limit"
THRESHOLDS = (80, 100)  # percent of a limit at which the workspace is told
RELEASE_BATCH = 100  # most runs one maintenance releases per workspace
RELEASE_LEASE = 4  # seconds: one worker releases a workspace's runs at a time
ALERT_TTL = 40 * 86400  # a month's claim outlives the month

# KEYS: the month's usage hash, the in-flight set. ARGV: limit, run id, now.
# 1: admitted (or was already); 0: the month's billable runs and those in flight fill the limit.
_ADMIT = """
if redis.call('ZSCORE', KEYS[2], ARGV[2]) then return 1 end
local used = tonumber(redis.call('HGET', KEYS[1], 'billable_runs') or '0') + redis.call('ZCARD', KEYS[2])
if used >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return 1
"""
_ADMIT_SCRIPT = scripts.script(_ADMIT)

# Alert claims this process has seen taken (by itself or another one), or is asking for → when it may forget each:
# once its period (an hour, a day, a month, in the claim's name) is past, nobody asks for that claim again.
_claimed: dict[str, float] = {}
_forget_at = [0.0]  # when `_claimed` is next looked through for claims to forget (monotonic)
FORGET_EVERY = 3600.0
HOUR, DAY, MONTH = 3600.0, 86400.0, 31 * 86400.0
_claiming = threading.Lock()  # one thread of this process asks for a claim: another finds it in `_claimed`
_claimant = os.urandom(8).hex()  # this process's name in the claims it takes


def _renamed() -> None:
    global _claimant
    _claimant = os.urandom(8).hex()  # a fork (a web server's processes) claims under a name of its own


os.register_at_fork(after_in_child=_renamed)


def admit(connection: redis.Redis, workspace: workspaces.Workspace, policy: OutboundPolicy, run: dict) -> bool:
    """True when `run` may start under the workspace's monthly limit (no round trip without a limit)."""
    limit = workspace.limits.runs_per_month
    if not limit:
        return True
    day = usage.today()
    admitted = scripts.call(connection, _ADMIT_SCRIPT, keys=[usage.month_key(workspace.name, usage.month_of(day)),
                                                             workspaces.key(INFLIGHT)],
                            args=[limit, run["id"], time.time()])
    if admitted:
        return True
    alert_runs(connection, workspace, policy, used=limit)  # the limit may have been lowered under the count
    return False


def over_reason(workspace: workspaces.Workspace) -> str:
    """Why a run waits as `over_limit`."""
    return (f"the workspace's limit of {workspace.limits.runs_per_month} billable runs this month is reached; "
            "the run starts when the limit is raised or the month ends")


def wait(run: dict):
    """A pipeline write listing `run` among the waiting ones (in the order of creation), as "<run id> <rule id>"."""
    created = datetime.fromisoformat(run["created_at"]).timestamp()
    return lambda pipe: pipe.zadd(workspaces.key(WAITING), {member(run): created})


def settle(run: dict, *, finished: bool) -> str | None:
    """The sorted set to give the run's slot back to once it billed (the count holds it now) or `finished`
    (then, unbilled, it must be admitted again to run again), or None: given back in the script that writes the
    run's record and its count (workers/runs.py `save_run`'s `slot`). Given back before the count, over a
    connection lost in between, the slot let one more run in over the limit; after the record, in a command of
    its own, such a loss kept the slot of a run that had ended for good."""
    if finished and not run.get("billed"):
        # It gave its slot back without billing (failed, paused): should a person retry it (or resume the
        # account), it is admitted again as any new run is; with the mark kept it ran on no slot, over the limit.
        run.pop("limit_counted", None)
    if run.get("billed") or finished:
        return workspaces.key(INFLIGHT)
    return None


def alert_runs(connection: redis.Redis, workspace: workspaces.Workspace, policy: OutboundPolicy, *, used: int) -> None:
    """Tell the workspace (once per month and threshold) that `used` billable runs reached 80 % or 100 %."""
    limit = workspace.limits.runs_per_month
    period = usage.month_of(usage.today())
    for percent in _reached(used, limit):
        text = f"{percent} % of {limit} runs this month used ({used} billable runs) in workspace {workspace.name}"
        if percent == 100:
            text += "; new runs wait (status over_limit) until the limit is raised or the month ends"
        _alert(connection, workspace, policy, f"runs_per_month:{period}:{percent}", text, period=MONTH)


def alert_events(connection: redis.Redis, workspace: workspaces.Workspace, policy: OutboundPolicy, *, used: int) -> None:
    """Tell the workspace (once per day and threshold) that `used` events today reached 80 % or 100 %."""
    limit = workspace.limits.events_per_day
    period = usage.today().isoformat()
    for percent in _reached(used, limit):
        text = f"{percent} % of {limit} events today used ({used} accepted) in workspace {workspace.name}"
        if percent == 100:
            text += "; webhooks are answered 429 until midnight UTC"
        _alert(connection, workspace, policy, f"events_per_day:{period}:{percent}", text, period=DAY)


def alert_backlog(connection: redis.Redis, workspace: workspaces.Workspace, policy: OutboundPolicy, *,
                  waiting: int) -> None:
    """Tell the workspace (once an hour while it lasts) that its webhooks are refused for its backlog_limit."""
    limit = workspace.limits.backlog_limit
    _alert(connection, workspace, policy, f"backlog_limit:{datetime.now(timezone.utc):%Y-%m-%dT%H}",
           f"webhooks of workspace {workspace.name} are answered 429: {waiting:,} events and runs are waiting "
           f"(its backlog_limit is {limit:,}); they are accepted again once fewer wait", period=HOUR)


def alert_pace(connection: redis.Redis, workspace: workspaces.Workspace, policy: OutboundPolicy) -> None:
    """Tell the workspace (once an hour while it lasts) that webhooks faster than its webhooks_per_second are refused."""
    pace = workspace.limits.webhooks_per_second
    _alert(connection, workspace, policy, f"webhooks_per_second:{datetime.now(timezone.utc):%Y-%m-%dT%H}",
           f"webhooks of workspace {workspace.name} are answered 429: they come faster than its webhooks_per_second "
           f"({pace:g}); they are accepted again at that pace", period=HOUR)


def until_midnight(now: datetime | None = None) -> int:
    """Seconds (at least 1) until the next UTC midnight, when a new day's events_per_day begin."""
    now = now or datetime.now(timezone.utc)
    midnight = datetime.combine(usage.today(now) + timedelta(days=1), datetime.min.time(), timezone.utc)
    return max(1, math.ceil((midnight - now).total_seconds()))


def release_waiting(connection: redis.Redis, workspace: workspaces.Workspace) -> list[str]:
    """Start the runs waiting over the limit, oldest first, as many as there is room for; returns their ids."""
    with workspaces.using(workspace):
        waiting = [i.decode() for i in connection.zrange(workspaces.key(WAITING), 0, RELEASE_BATCH - 1)]
        if not waiting:
            return []
        room = _room(connection, workspace)
        if room <= 0 or not connection.set(workspaces.key("limits:releasing"), 1, nx=True, ex=RELEASE_LEASE):
            return []
        released = [member_parts(listed)[0] for listed in waiting[:room] if _release(connection, listed)]
        if released:
            log.info("workspace %s: %d run(s) waiting over the limit released", workspace.name, len(released))
        return released


def _room(connection: redis.Redis, workspace: workspaces.Workspace) -> int:
    """How many more runs may start this month (RELEASE_BATCH without a limit)."""
    limit = workspace.limits.runs_per_month
    if not limit:
        return RELEASE_BATCH
    with connection.pipeline(transaction=False) as pipe:
        pipe.hget(usage.month_key(workspace.name, usage.month_of(usage.today())), "billable_runs")
        pipe.zcard(workspaces.key(INFLIGHT))
        billed, in_flight = pipe.execute()
    return limit - int(billed or 0) - in_flight


def _release(connection: redis.Redis, listed: str) -> bool:
    """Queue one waiting run ("<run id> <rule id>"; the run id alone, as listed before the rule was named) again: its
    deadline for the sweeper, then its new status and its leaving the list in one transaction, then its job. Raises
    Redis's refusal of the deadline (`runs:active` of another type), the run left waiting, its record saying why.

    Should this process die before queueing the job, the run is `queued` with a deadline: the
    sweeper (workers/recovery.py) starts it. A run whose record expired while it waited (7 days untouched) leaves
    the run listings too: they kept its id for good, up to `backlog_limit` of them a week of a workspace over its limit.
    """
    run_id, rule_id = member_parts(listed)
    run = load_run(connection, run_id)
    if run is None or run["status"] != OVER_LIMIT:
        with connection.pipeline(transaction=False) as pipe:
            pipe.zrem(workspaces.key(WAITING), listed)
            if run is None:
                unlist(pipe, run_id, rule_id)
            pipe.execute()
        return False
    # The job's name is stored with the run: a sweeper that finds it past its deadline asks that job whether it
    # still waits its turn (workers/recovery.py).
    released = {**run, "status": "queued", "reason": "released: the monthly run limit has room again",
                "job": f"{run_id}-limit{time.time_ns()}"}
    now = datetime.now(timezone.utc)
    try:
        # Its deadline for the sweeper first, in a command of its own: Redis applies the rest of a MULTI whose one
        # command it refuses, and with `runs:active` of another type the run said `queued`, had left the waiting list
        # and had neither deadline nor job: never run nor failed, even once the key was mended. Refused here, the run
        # waits as it was; listed, it is the sweeper's should what follows be cut off or refused.
        connection.zadd(workspaces.key(ACTIVE), {run_id: deadline(released, now=now.timestamp())})
    except redis.ResponseError as exc:
        _note_refused(connection, run, exc, now=now)
        raise  # the worker's housekeeping logs it, for this workspace alone (workers/consumer/)
    with connection.pipeline() as pipe:
        save_run(pipe, released, now=now)
        pipe.zrem(workspaces.key(WAITING), listed)
        pipe.execute()
    queue_run(connection, released, job_id=released["job"])
    return True


def _note_refused(connection: redis.Redis, run: dict, error: redis.ResponseError, *, now: datetime) -> None:
    """The waiting run's record says why it was not released (once: each maintenance meets the refusal again)."""
    reason = (f"the monthly run limit has room again, but Redis refuses {workspaces.key(ACTIVE)} ({error}): "
              "the run starts once that key is mended")
    if run.get("reason") != reason:
        note_reason(connection, run, reason, now=now)


def _reached(used: int, limit: int) -> list[int]:
    return [p for p in THRESHOLDS if limit and used >= math.ceil(limit * p / 100)]


def _alert(connection: redis.Redis, workspace: workspaces.Workspace, policy: OutboundPolicy, claim: str,
           text: str, *, period: float, now: float | None = None) -> None:
    """Send `text` to the workspace's alerts channel and log it, if nobody claimed `claim` before.

    The claim holds this process's name: should Redis fail as it is taken (raised, the alert not sent), the next
    call asks again (the note of it as seen is dropped again) and finds either no claim (it takes it now) or its
    own, stored but its answer lost (it sends the alert then); another process's name, it leaves the alert be.
    Before, an alert whose claim met a Redis error was never sent: not by this process, which had noted it, nor
    by another, if the claim got stored. One thread of this process asks at a time (noted as seen while it asks):
    two asking at once both found this process's name, the first one's claim, and both sent the alert.
    `period`: how long the claim's name is asked for (an hour's, a day's, a month's), after which it is forgotten here
    (kept, a web process noted one claim more an hour for each workspace refused over its backlog, for good)."""
    name = f"ws:{workspace.name}:limits:alerted:{claim}"
    now = time.monotonic() if now is None else now
    with _claiming:
        if name in _claimed:
            return
        _claimed[name] = now + 2 * period
        if now >= _forget_at[0]:
            _forget_at[0] = now + FORGET_EVERY
            for gone in [n for n, until in _claimed.items() if until <= now]:
                del _claimed[gone]
    try:
        held = connection.set(name, _claimant, nx=True, ex=ALERT_TTL, get=True)  # the claim there was, if any
    except BaseException:
        with _claiming:
            _claimed.pop(name, None)
        raise
    if held is not None and held.decode() != _claimant:
        return  # another process (or an earlier life of this one) sent it
    log.warning("usage alert: %s", text)
    if not workspace.alerts:
        return
    # On a thread of its own: it is set off by a webhook (on a web thread every customer's webhooks need) or a run,
    # and a workspace's channel that hangs held that thread for the outbound time-out. At most a few an hour each.
    threading.Thread(target=_send_alert, args=(policy, workspace, text), name="usage-alert", daemon=True).start()


def _send_alert(policy: OutboundPolicy, workspace: workspaces.Workspace, text: str) -> None:
    try:
        notify(policy, workspace.alerts, text, title=f"Usage of workspace {workspace.name}")
    except OutboundRefused as exc:
        log.warning("usage alert for workspace %s not delivered: %s", workspace.name, exc)
    except Exception:  # noqa: BLE001 - a thread of its own: said here, not by Python's hook on stderr
        log.exception("usage alert for workspace %s not delivered", workspace.name)
