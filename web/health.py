"""Liveness and readiness: `/healthz` (the process answers) and `/readyz` (its dependencies do)."""
from __future__ import annotations

import time
from datetime import datetime, timezone

import redis
from flask import Blueprint, g, jsonify
from rq import Worker

from inloox import InLooxError
from web.resources import DeclaredOnly, get_context, get_inloox, get_redis, get_registry, inloox_slot
from web.workspace import bearer_token, is_operator, operator_open
from workers import registry, rule_files, workspaces
from workers.poller import beats as poller_beats
from workers.consumer_beat import CONSUMER_BEAT, CONSUMER_BEAT_TTL, CONSUMER_STATES, REFUSED

bp = Blueprint("health", __name__)

# An idle worker beats every few seconds and a job runs at most ~45 s, so a minute of silence means
# no worker is taking jobs.
WORKER_HEARTBEAT_SECONDS = 60


@bp.get("/healthz")
def healthz():
    """The process is up; checks nothing else, so a slow dependency never restarts us."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Redis, InLoox, a live RQ worker and every poller process polling: 200 with each check, or 503 naming the failing one.

    `rules` says which version of the rules runs and which files are broken; a broken file does not
    make the service unready (its last good version runs, and the web must keep accepting events).
    `secrets` names the workspaces this process cannot unseal; only when it can unseal none is it unready.
    Workspaces are named to the operator's token only (`_names_shown`); anyone else is told how many.
    """
    checks = {"redis": _check_redis(), "secrets": _check_secrets(), "inloox": _check_inloox(),
              "worker": _check_worker(), "pollers": _check_pollers(), "rules": _check_rules()}
    ready = all(check["ok"] for check in checks.values())
    return jsonify(status="ready" if ready else "not ready", checks=checks), 200 if ready else 503


def _check_redis() -> dict:
    try:
        get_redis().ping()
    except redis.RedisError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True}


def _check_inloox() -> dict:
    # UserInfo/Me() proves both that InLoox answers and that the token is accepted.
    if "workspace_token" not in g:
        # A hosted deployment without a default workspace: one account's outage must not take the
        # web out of its load balancer; each workspace's runs pause on their own (see workers.jobs).
        return _without_default()
    try:
        with inloox_slot():  # a probe, too, holds none of the web's threads for long while InLoox hangs
            me = get_inloox().me()
    except InLooxError as exc:
        return {"ok": False, "error": str(exc)}
    except redis.RedisError as exc:  # the shared request budget lives in Redis
        return {"ok": False, "error": f"rate limit unavailable: {type(exc).__name__}: {exc}"}
    return {"ok": True, "user": me.get("DisplayName") or me.get("ContactId")}


def _check_rules() -> dict:
    if "workspace_token" not in g:
        return _without_default()
    try:
        context = get_context()
        version = context.rules.version()  # a bundle's rules are not compiled for it: the probe needs only its number
        broken = [rule_files.with_iso_times(e) for e in rule_files.broken_files(get_redis(), context.workspace.prefix)]
    except redis.RedisError as exc:
        return {"ok": True, "error": f"rule file states unavailable: {type(exc).__name__}: {exc}"}
    return {"ok": True, "version": version, "broken": broken}


def _check_secrets() -> dict:
    """The registry's workspaces this process cannot unseal: each by name, with the id of the key it lacks
    (never a secret; no id when the record or a secret of it is damaged).

    Unready only when the registry holds workspaces and this process can unseal none of them: its
    SECRETS_KEY serves nobody, and a load balancer should send it nothing. Some unreadable is
    "degraded" and ready: one customer's record must not take every web out of the load balancer
    (those answer 503 on their own routes). What the registry view already holds, re-read only when
    the registry changed: no unsealing per probe.
    """
    try:
        view = get_registry()
        readable, needed = view.workspaces(), view.needed_keys()
    except (registry.RegistryUnavailable, redis.RedisError) as exc:
        return {"ok": False, "error": f"the workspace registry cannot be read: {exc}"}
    if isinstance(view, DeclaredOnly):
        return {"ok": True, "skipped": f"no workspace registry ({view.why}): serving the declared workspaces only"}
    if not needed:
        return {"ok": True, "workspaces": len(readable)}
    unreadable = [{"workspace": name, "needs_key": key} if key else {"workspace": name, "damaged": True}
                  for name, key in sorted(needed.items())]
    if not _names_shown():
        unreadable = _counted(len(unreadable))
    if not readable:
        return {"ok": False, "workspaces": 0, "unreadable": unreadable,
                "error": f"SECRETS_KEY opens none of the registry's {len(needed)} workspace(s)"}
    return {"ok": True, "degraded": True, "workspaces": len(readable), "unreadable": unreadable}


def _names_shown() -> bool:
    """Whether this request may see customers' workspace names: with the operator's token, or where the operator's
    powers are anyone's (local development). A hosted deployment's /readyz answers its load balancer and whoever
    else asks; which customers' keys are missing or whose log is damaged is not theirs to know."""
    try:
        return is_operator(bearer_token()) or operator_open()
    except (registry.RegistryUnavailable, redis.RedisError):
        return False  # the registry cannot say whether anyone is guarded: named to the operator only


def _counted(count: int) -> dict:
    return {"count": count, "names": "shown to the operator's token (OPERATOR_TOKEN)"}


def _without_default() -> dict:
    """A check of the default workspace's, skipped: there is none, or this process cannot unseal it."""
    try:
        unreadable = workspaces.DEFAULT in get_registry().needed_keys()
    except (registry.RegistryUnavailable, redis.RedisError):
        unreadable = False
    return {"ok": True, "skipped": "the default workspace cannot be unsealed here (see checks.secrets)"
            if unreadable else "no default workspace"}


def _check_worker() -> dict:
    """At least one RQ worker with a recent heartbeat (RQ's registry), and every such worker's loops running:
    its event consumer, and its poller and schedules when it runs them (WORKER_POLLS)."""
    try:
        workers = Worker.all(connection=get_redis())
        now = datetime.now(timezone.utc)
        alive = [w for w in workers
                 if w.last_heartbeat and (now - w.last_heartbeat).total_seconds() < WORKER_HEARTBEAT_SECONDS]
        states = get_redis().mget([CONSUMER_BEAT + w.name for w in alive]) if alive else []
    except redis.RedisError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if not alive:
        return {"ok": False, "error": f"no RQ worker with a heartbeat in the last {WORKER_HEARTBEAT_SECONDS}s"}
    # A worker that has not said yet (it started < 10 s ago) counts as running until its beat is due.
    states = [state.decode() if state is not None else None for state in states]
    running = ("running" + REFUSED, "running", "none")
    stopped = {w.name: state or "not running" for w, state in zip(alive, states)
               if not (state or "").startswith(running) and (state is not None or _older_than(w, now, CONSUMER_BEAT_TTL))}
    if stopped:
        return {"ok": False, "workers": len(alive),
                "error": "not running in " + ", ".join(f"{n} ({_trouble(s)})" for n, s in sorted(stopped.items()))}
    # Logs Redis refuses (a key of another type under a workspace's log) are set aside, the other workspaces served:
    # "degraded" and ready, as with secrets; one customer's damaged key takes no web out of the load balancer.
    refused = sorted({name for state in states if state and state.startswith("running" + REFUSED)
                      for name in state.removeprefix("running" + REFUSED).split(", ")})
    if refused:
        return {"ok": True, "degraded": True, "workers": len(alive),
                "event_logs_refused": refused if _names_shown() else _counted(len(refused))}
    return {"ok": True, "workers": len(alive)}


def _check_pollers() -> dict:
    """Every poller process (`python -m workers.poller`) seen beating lately, with its loops running.

    None seen: nothing is missed (a deployment whose workers poll, WORKER_POLLS=1, has none; their
    pollers are the worker check's). One that stopped took its beat with it; one that died is
    said gone (workers/poller/beats.py).
    """
    try:
        beats = poller_beats.read(get_redis())
    except redis.RedisError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    now = time.time()
    troubled = [f"{beat.where()} ({trouble})" for beat in beats if (trouble := beat.trouble(now))]
    if troubled:
        return {"ok": False, "pollers": len(beats) - len(troubled), "error": "not polling: " + ", ".join(troubled)}
    return {"ok": True, "pollers": len(beats)}


def _trouble(state: str) -> str:
    """A worker's beat as a person reads it: the consumer's own states name it ("event consumer failing")."""
    return f"event consumer {state}" if state in CONSUMER_STATES else state


def _older_than(worker: Worker, now: datetime, seconds: float) -> bool:
    return worker.birth_date is None or (now - worker.birth_date).total_seconds() > seconds
