"""Which workspaces a poller process polls: the workspaces' leases, and the fair share between poller processes.

Each workspace is polled only by the holder of its Redis lease (`ws:<name>:poll:lease`, a redis-py
Lock with expiry), so any number of poller processes may run: they split the workspaces between
them, and the workspaces of a poller that died are taken over by the others within one lease period
(POLL_LEASE_SECONDS).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING

import redis
from redis.exceptions import LockError

from workers import scripts
from workers.poller.settings import PollerSettings

if TYPE_CHECKING:
    from workers.poller.loop import Account  # the round's view of a workspace: its lease and when it was renewed

log = logging.getLogger("poller")

POLLERS_KEY = "pollers:alive"  # deployment-wide: poller id → last round (epoch s)


def fair_share(connection: redis.Redis, me: str, total: int, poller: PollerSettings) -> int:
    """How many workspaces one poller should own: all of them split between the live pollers.

    Each poller stamps itself in POLLERS_KEY every round; one silent for a lease period is gone.
    A poller over its share takes no new leases and hands one back per round, so a poller that
    starts later soon finds free ones.
    """
    now = time.time()
    with connection.pipeline(transaction=False) as pipe:
        pipe.zadd(POLLERS_KEY, {me: now})
        pipe.zremrangebyscore(POLLERS_KEY, "-inf", now - poller.lease_seconds)
        pipe.zcard(POLLERS_KEY)
        alive = pipe.execute()[2]
    return max(1, math.ceil(total / max(alive, 1)))


def owned(accounts: list[Account]) -> int:
    return sum(a.renewed_at is not None for a in accounts)


def hold_lease(account: Account, poller: PollerSettings, *, may_take: bool = True) -> bool:
    """Keep the lease we hold (renewed once a third of its period has passed), or try to take a free one.

    False while another poller has it. Between renewals the holder trusts its own clock: a lease
    renewed less than a third of its period ago cannot have expired, so asking Redis would cost a
    command per workspace per round and tell nothing.
    """
    try:
        if account.renewed_at is not None:
            if time.monotonic() - account.renewed_at < poller.lease_seconds / 3:
                return True
            account.lease.reacquire()  # raises LockNotOwnedError when it expired under us
        elif not (may_take and account.lease.acquire(blocking=False)):
            return False
    except redis.exceptions.LockError:
        account.renewed_at = None  # expired under us (a long stall): the next round competes for it again
        return False
    account.renewed_at = time.monotonic()
    return True


# For each lease (KEYS[i], our token ARGV[i+1]): extend it to ARGV[1] ms if it is still ours; 1 or 0 each, -1 for a
# lease Redis refuses to read (a key of another type): an error of `call` would fail the script for every lease in it.
_RENEW = scripts.script("""
local renewed = {}
for i, lease in ipairs(KEYS) do
    local holder = redis.pcall('get', lease)
    if type(holder) == 'table' and holder.err then
        renewed[i] = -1
    elseif holder == ARGV[i + 1] then
        redis.call('pexpire', lease, ARGV[1])
        renewed[i] = 1
    else
        renewed[i] = 0
    end
end
return renewed
""")


def renew_leases(connection: redis.Redis, accounts: list[Account], poller: PollerSettings) -> None:
    """Renew, in one script, every lease held that a third of its period has passed since it was renewed.

    What `hold_lease` would do one workspace at a time (a script each: 3 commands per workspace
    every 5 s). A lease found no longer ours is let go: the round competes for it again.
    """
    now = time.monotonic()
    due = [a for a in accounts if a.renewed_at is not None and now - a.renewed_at >= poller.lease_seconds / 3
           and a.lease.local.token is not None]
    if not due:
        return
    renewed = scripts.call(connection, _RENEW, keys=[a.lease.name for a in due],
                           args=[int(poller.lease_seconds * 1000), *(a.lease.local.token for a in due)])
    for account, ours in zip(due, renewed):
        account.renewed_at = now if ours == 1 else None
        if ours == -1:  # no poller can take it again (SET NX finds the key): the workspace is not polled until it goes
            log.warning("%s: its poll lease %s cannot be read (not a lock); it is no longer polled",
                        account.workspace.name, account.lease.name)


def release(account: Account) -> None:
    """Hand the workspace's lease back (if it is still ours), for another poller to take."""
    if account.renewed_at is None:
        return
    account.renewed_at = None
    with contextlib.suppress(LockError):  # expired meanwhile: nothing to hand back
        account.lease.release()
