"""The workspace registry: every workspace (one InLoox account) as data in Redis, the source of truth
every process follows live.

    registry:workspaces   hash: name → record JSON: every field of a Workspace, each secret sealed
                          (workers/secrets), the admin token only as its sha256, the webhook sources
                          with their secrets' creation and expiry times, `paused`, and `incarnation`: a random
                          id made at the create, kept by every change, another after a delete and a create of
                          the name (records made before it had one stand for it by their `created_at`)
    registry:version      a counter every write bumps: a View re-reads the records only when it moved

Every write is one compare-and-set script that also bumps the version; a write that changes nothing
(the same PUT twice, a restart applying the same file) writes nothing. A workspace's other keys all
start `ws:<name>:` and its RQ queue is named after it, so `delete` removes it whole.

- `put`, `get`, `names`, `delete`, `pause`, `resume`, `new_admin_token`: the operator API's verbs;
  `Leftovers`: what a process still wrote for a workspace deleted under it, deleted soon after.
- `add_webhook`, `rotate_webhook`, `remove_webhook`, `webhooks`: webhook sources as data.
- `apply_config`, `apply_file`, `apply_default`: declared workspaces applied at every process's start.
- `View`: the registry as a process sees it, unsealed, re-read within a second of a change.
- `Served`: what a worker, poller or scheduler serves: its declared workspaces and the registry's others;
  `Shard`: those of them a worker's WORKER_WORKSPACES names.
- `rotate_secrets`: every secret re-sealed under the newest key.
"""
from workers.registry._apply import apply_config, apply_default, apply_file, apply_workspaces
from workers.registry._records import token_hash, token_matches
from workers.registry._removal import Leftovers, delete
from workers.registry._rotation import rotate_secrets
from workers.registry._store import (
    RECORDS, ROTATION_OVERLAP, VERSION, Change, RegistryError, UnknownWorkspace, check_name, get, names, new_admin_token, pause,
    put, read, resume, version, workspace,
)
from workers.registry._served import Served, Shard
from workers.registry._view import RegistryUnavailable, View
from workers.registry._webhooks import SourceExists, UnknownSource, add_webhook, remove_webhook, rotate_webhook, webhooks

__all__ = [
    "RECORDS", "ROTATION_OVERLAP", "VERSION", "Change", "SourceExists", "RegistryError", "RegistryUnavailable", "UnknownSource", "UnknownWorkspace",
    "Leftovers", "Served", "Shard", "View", "add_webhook", "apply_config", "apply_default", "apply_file", "apply_workspaces", "check_name",
    "delete", "get", "names", "new_admin_token", "pause", "put", "read", "remove_webhook", "resume",
    "rotate_secrets", "rotate_webhook", "token_hash", "token_matches", "version", "webhooks", "workspace",
]
