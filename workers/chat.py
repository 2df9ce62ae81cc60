"""Telling a chat what became of its command: the finished run's result, posted to Slack's response_url.

    after_run(connection, run)   queue post_result when a chat run with a response_url finished
    post_result(run_id)          RQ job: post the result once, through the outbound guard
    queue_reply(connection, url, message)   queue post_reply: one message to a response_url
    post_reply(reply)            RQ job: post it, through the outbound guard (a Slack click's outcome)
    response_url_refusal(url, hosts)   why a response_url is not on SLACK_RESPONSE_HOSTS, or None

A response_url comes in the request, and the outbound guard alone would let workers post a run's result to any
public host: only the hosts of SLACK_RESPONSE_HOSTS (Slack's own, hooks.slack.com) are posted to. The web refuses
a command or click whose URL is elsewhere; the jobs check again, for what was queued before the setting changed.
"""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

import redis

from engine.commands import excerpt
from workers import workspaces
from workers.enqueue import queue, workspace_job_id
from workers.outbound import http
from workers.runs import TERMINAL, load_run
from workers.worker_context import workspace_job

log = logging.getLogger(__name__)

POST_RESULT = "workers.chat.post_result"
POST_REPLY = "workers.chat.post_reply"
POSTED_TTL_SECONDS = 24 * 3600  # Slack's response_url lives 30 minutes; a day is plenty


def after_run(connection: redis.Redis, run: dict) -> None:
    """Queue the result message of a finished run that came from a chat command with a response_url."""
    event = run["plan"]["event"]
    if run["status"] in TERMINAL and event.get("source") == "chat" and event["payload"].get("response_url"):
        queue(connection).enqueue(POST_RESULT, run["id"], workspaces.current().name,
                                  job_id=workspace_job_id(f"chat-result-{run['id']}"))


@workspace_job
def post_result(ctx, run_id: str) -> str:
    """Post the run's result to its response_url, at most once; returns what happened."""
    run = load_run(ctx.connection, run_id)
    if run is None:
        return "missing"
    if not ctx.connection.set(workspaces.key(f"chat:posted:{run_id}"), 1, nx=True, ex=POSTED_TTL_SECONDS):
        return "already posted"
    url = run["plan"]["event"]["payload"]["response_url"]
    refusal = response_url_refusal(url, ctx.slack_response_hosts)
    if refusal:  # said in the log, and as the job's result; the run itself is done and stays as it is
        log.warning("run %s: result not posted: %s", run_id, refusal)
        return f"refused: {refusal}"
    # OutboundRefused propagates: the job fails visibly, and the claim above keeps it from repeating.
    http(ctx.outbound, "POST", url, body={"response_type": "ephemeral", "text": result_text(run)})
    return "posted"


def queue_reply(connection: redis.Redis, url: str, message: dict) -> None:
    """Queue `message` for `url`: the web answers Slack's click within its 3 s and a worker posts."""
    queue(connection).enqueue(POST_REPLY, {"url": url, "message": message}, workspaces.current().name,
                              result_ttl=0)


@workspace_job
def post_reply(ctx, reply: dict) -> str:
    """Post `reply["message"]` to `reply["url"]` once (no retries: a late "confirmed" would only confuse)."""
    refusal = response_url_refusal(reply["url"], ctx.slack_response_hosts)
    if refusal:
        log.warning("Slack reply not posted: %s", refusal)
        return f"refused: {refusal}"
    # OutboundRefused propagates: the job fails visibly in RQ's failed registry.
    http(ctx.outbound, "POST", reply["url"], body=reply["message"])
    return "posted"


def response_url_refusal(url: str, hosts: str) -> str | None:
    """Why `url` may not be posted to under SLACK_RESPONSE_HOSTS `hosts`, or None if it may.

    A bare host allows https only; `http://HOST` allows http too. Hosts are compared exactly (lowercased), as
    OUTBOUND_ALLOW's are: `hooks.slack.com.evil.example` or `evil.example/hooks.slack.com` is not Slack's.
    """
    try:
        parts = urlsplit(url)
        host, scheme = (parts.hostname or "").lower(), parts.scheme.lower()
        parts.port  # noqa: B018 - a port that is no number raises ValueError here: such a URL is refused
    except ValueError:
        host, scheme = "", ""
    allowed = set()
    for entry in (e.strip().lower() for e in hosts.replace(",", " ").split()):
        schemes = ("http", "https") if entry.startswith("http://") else ("https",)
        allowed.update((s, entry.removeprefix("http://").removeprefix("https://").rstrip("/")) for s in schemes)
    if host and (scheme, host) in allowed:
        return None
    shown = f"{scheme}://{host}" if host else "a URL without a host"
    return f"the response_url's host ({shown}) is not on SLACK_RESPONSE_HOSTS ({hosts or 'empty'})"


def result_text(run: dict) -> str:
    """The run in a few lines: the command as typed, its status, and each step's outcome."""
    payload = run["plan"]["event"]["payload"]
    typed = excerpt(payload.get("typed") or f"{run['plan']['event']['kind']} {payload.get('text', '')}")
    head = f"`{typed}`: {run['status']}" + (f" ({run['reason']})" if run.get("reason") else "")
    lines = [f"• {s['verb']} {_target(s)}: {s['status']}" + (f" ({s.get('reason') or s.get('error')})"
                                                            if s["status"] != "done" else "")
             for s in run["steps"]]
    return "\n".join([head, *lines])


def _target(step: dict) -> str:
    request = step.get("request") or {}
    return str(request.get("entity_set") or step.get("action", ""))
