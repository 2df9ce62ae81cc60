"""Helpers for crash tests: workers armed with failpoints (workers/failpoints.py), whether a process froze at
one, and which event log consumer a worker process is, so a test can kill it while it has events in flight."""
from __future__ import annotations

from pathlib import Path

import redis

from tests.support.processes import Process
from tests.support.stack import PREFIX, Stack

EVENTS = f"{PREFIX}events"  # the default workspace's event log (workers/eventlog.py)
GROUP = "engine"


def armed_worker(stack: Stack, name: str, failpoints: str) -> Process:
    """`stack.worker(name)` with ENGINE_FAILPOINTS=`failpoints`: it SIGKILLs itself at that point."""
    plain = stack.env
    stack.env = {**plain, "ENGINE_FAILPOINTS": failpoints}
    try:
        return stack.worker(name)
    finally:
        stack.env = plain


def died_at(process: Process) -> str | None:
    """The failpoint a worker killed itself at (its last words, see failpoints.hit), or None."""
    for line in reversed(process.output().splitlines()):
        if line.startswith("failpoint ") and ": SIGKILL" in line:
            return line.split()[1].rstrip(":")
    return None


def frozen_at(process: Process, point: str) -> bool:
    """The process stopped itself at failpoint `point` (ENGINE_FAILPOINTS=freeze:…) and is stopped still."""
    if f"failpoint {point}: SIGSTOP" not in process.output():
        return False
    stat = Path(f"/proc/{process.popen.pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] == "T"  # the state follows the command's name in parentheses


def consumer_name(redis_url: str, process: Process) -> str | None:
    """The RQ worker name (= its event consumer's name) of `process`, once it has registered."""
    connection = redis.Redis.from_url(redis_url)
    for key in connection.smembers("rq:workers"):
        if connection.hget(key, "pid") == str(process.popen.pid).encode():
            return key.decode().removeprefix("rq:worker:")
    return None


def in_flight(redis_url: str, consumer: str) -> int:
    """How many event log entries `consumer` has been given and not yet acknowledged."""
    connection = redis.Redis.from_url(redis_url)
    try:
        consumers = connection.xinfo_consumers(EVENTS, GROUP)
    except redis.ResponseError:  # no log or group yet
        return 0
    return next((c["pending"] for c in consumers if c["name"].decode() == consumer), 0)
