"""A workspace's export: its rule bundles, subscriptions (no secret), events and runs, as one JSON archive.

Enough to move the workspace: PUT its fields to another deployment, upload its bundles, subscribe
again (new secrets), and keep its history. Secrets never leave: neither the InLoox token nor any
webhook or subscription secret is in it.
"""
from __future__ import annotations

from datetime import datetime, timezone

import redis

from workers import bundles, event_history, runs, subscriptions, workspaces

EXPORT_EVENTS = 10_000  # the newest logged events kept in an export, at most
EXPORT_RUNS = 10_000  # the newest runs, at most
FORMAT = "inloox-automation/workspace-export/1"


def export(connection: redis.Redis, record: dict) -> dict:
    """The archive of the workspace whose public registry record is `record`."""
    workspace = workspaces.Workspace(record["name"], record["inloox_url"], "")
    with workspaces.using(workspace):
        return {
            "format": FORMAT, "exported_at": datetime.now(timezone.utc).isoformat(),
            "workspace": record,
            "rule_bundles": [{**v.to_dict(), "files": bundles.files(connection, workspace.prefix, v.number)}
                             for v in bundles.versions(connection, workspace.prefix)],
            "subscriptions": [s.public() for s in subscriptions.all_subscriptions(connection)],
            "events": [{**e.summary(), "event": e.event}
                       for e in event_history.history(connection, limit=EXPORT_EVENTS)],
            "runs": runs.list_runs(connection, limit=EXPORT_RUNS),
        }
