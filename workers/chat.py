"""Telling a chat what became of its command: the finished run's result, posted to Slack's response_url.

    after_run(connection, run)   queue post_result when a chat run with a response_url finished
    post_result(run_id)          RQ job: post the result once, through the outbound guard
    queue_reply(connection, url, message)   queue post_reply: one message to a response_url
    post_reply(reply)            RQ job: post it, through the outbound guard (a Slack click's outcome)
"""
from __future__ import annotations

import logging

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
    # OutboundRefused propagates: the job fails visibly in RQ's failed registry.
    http(ctx.outbound, "POST", reply["url"], body=reply["message"])
    return "posted"


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
