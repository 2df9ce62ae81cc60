"""Workspaces: one InLoox account each, with its own rules, secrets, limits, Redis keys and queue.

A hosted deployment serves many workspaces; `make run` serves one, called "default", configured
from the environment as before (INLOOX_URL, INLOOX_API_KEY, RULES_PATH, WEBHOOK_SECRET_*, …).
With WORKSPACES_FILE set, the workspaces are the ones that file lists (see docs/deploy.md):

    workspaces:
      acme:
        inloox_url: https://acme.inloox.app/api/odata/
        inloox_api_key: {env: ACME_INLOOX_TOKEN}   # any secret may come from the environment
        admin_token: {env: ACME_ADMIN_TOKEN}
        rules: rules/acme                          # a folder in git; without it, bundles uploaded
        webhooks: {forms: [whsec_...]}             #   with PUT /workspaces/acme/rules
        limits: {inloox_requests_per_second: 5, runs_per_minute: 600, flood_limit: 500,
                 runs_per_month: 10000, events_per_day: 50000,   # plan limits (workers/metering)
                 backlog_limit: 100000, webhooks_per_second: 100}
        alerts: json://alerts.example.com/acme        # where usage alerts go (an Apprise URL)

Which workspace the code is working for is held in a context variable, set where work enters
(a web request, a job, one workspace's poll or schedule tick) — as Flask holds `current_app`.
Every Redis key goes through `key()`, so it carries the workspace's prefix; code that forgets
to enter a workspace fails loudly instead of writing into another one's keys.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml import YAML, YAMLError

DEFAULT = "default"
# Also part of Redis keys, queue names and RQ job ids. `\Z`, not `$`: `$` also matches before a final newline, and
# "acme\n" was a workspace of its own, listed as "acme".
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}\Z")
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "workspaces.schema.json"


class WorkspaceConfigError(ValueError):
    """The workspaces file is unusable; the message names the file, the workspace and the field."""


@dataclass(frozen=True)
class Limits:
    """What one workspace may use of the shared deployment."""

    inloox_requests_per_second: float = 5.0  # shared by every process through Redis; 0: no limit
    runs_per_minute: int = 0  # runs started per minute; over it they wait; 0: no limit
    flood_limit: int = 500  # changes in one poll above which they are held for a person
    runs_per_month: int = 0  # billable runs a month; over it runs wait as `over_limit`; 0: no limit
    events_per_day: int = 0  # events accepted a day (UTC); over it webhooks are answered 429; 0: no limit
    # Events not yet handled plus runs not yet finished, at which webhooks are answered 429 until fewer wait: the
    # Redis every customer shares (noeviction) is not filled by one whose senders outrun its workers or InLoox
    # budget, or whose workspace is paused. 0: no limit.
    backlog_limit: int = 100_000
    # Webhooks accepted a second (after a burst of ten seconds' worth); faster ones are answered 429. A hosted
    # workspace's senders share the web, the workers and Redis with every other customer's: one flooding at the
    # web's whole rate slowed a quiet neighbour's runs from ms to seconds (bench/RESULTS.md section 40). Zapier
    # allows ~66 a second, Make 30. 0: no limit (the single workspace of `make run` has none unless set).
    webhooks_per_second: float = 100.0


@dataclass(frozen=True)
class Workspace:
    """One InLoox account served by this deployment. Secrets never appear in its repr."""

    name: str
    inloox_url: str
    inloox_api_key: str = field(repr=False)
    admin_token: str = field(default="", repr=False)
    rules_path: str | None = None  # None: rule bundles uploaded through the admin API
    webhook_sources: Mapping[str, list[str]] = field(default_factory=dict, repr=False)
    slack_signing_secret: str = field(default="", repr=False)
    teams_security_token: str = field(default="", repr=False)
    chat_user_map: str = ""
    limits: Limits = Limits()
    paused: bool = False  # paused: events are still accepted into its log, nothing of it runs
    alerts: str = ""  # where alerts about this workspace go (an Apprise URL); "" for none
    # What the registry keeps of the admin token (workers/registry): its sha256, never the token.
    admin_token_hash: str = field(default="", repr=False)
    # Which life of the name this is: made when the registry record is created, kept by every change of it, another
    # after a delete and a create under the same name (whose bundles start at v1 again). "" when not read from the
    # registry (declared, with no registry to read): then nothing compiled is kept across contexts.
    incarnation: str = ""

    @property
    def prefix(self) -> str:
        """The prefix of every Redis key of this workspace."""
        return f"ws:{self.name}:"

    @property
    def queue(self) -> str:
        """The RQ queue of this workspace's jobs (workers dequeue from all of them in turn)."""
        return self.name

    def secrets(self) -> list[str]:
        """Every secret value of this workspace, for log redaction."""
        hooks = [s for pair in self.webhook_sources.values() for s in pair]
        return [self.inloox_api_key, self.admin_token, self.slack_signing_secret, self.teams_security_token, *hooks]


# -- the workspace being worked for ------------------------------------------------------------

_current: ContextVar[Workspace] = ContextVar("workspace")


def current() -> Workspace:
    """The workspace this code is working for; raises when no work has entered one."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("working outside of a workspace: enter one with workspaces.using(ws)") from None


@contextlib.contextmanager
def using(workspace: Workspace) -> Iterator[Workspace]:
    """Work for `workspace` inside the block (nests; the previous one is back afterwards)."""
    token = enter(workspace)
    try:
        yield workspace
    finally:
        leave(token)


def enter(workspace: Workspace):
    """Enter `workspace` until `leave(token)` (for request hooks that cannot use a `with` block)."""
    return _current.set(workspace)


def leave(token) -> None:
    """Back to the workspace worked for before `enter` gave `token`."""
    _current.reset(token)


def key(name: str) -> str:
    """The Redis key `name` of the current workspace."""
    return current().prefix + name


# -- configuration ------------------------------------------------------------------------------

def load_workspaces(config: Mapping, environ: Mapping[str, str] = os.environ) -> dict[str, Workspace]:
    """The workspaces of this deployment: those of WORKSPACES_FILE, or "default" from the settings."""
    path = config.get("WORKSPACES_FILE") or ""
    if path:
        return read_workspaces_file(path, environ)
    return {DEFAULT: default_workspace(config)}


def default_workspace(config: Mapping) -> Workspace:
    """The single workspace of `make run`, from the classic settings."""
    return Workspace(
        name=DEFAULT, inloox_url=config["INLOOX_URL"], inloox_api_key=config["INLOOX_API_KEY"],
        admin_token=config.get("ADMIN_TOKEN") or "", rules_path=config.get("RULES_PATH") or "rules",
        webhook_sources=dict(config.get("WEBHOOK_SOURCES") or {}),
        slack_signing_secret=config.get("SLACK_SIGNING_SECRET") or "",
        teams_security_token=config.get("TEAMS_SECURITY_TOKEN") or "",
        chat_user_map=config.get("CHAT_USER_MAP") or "",
        limits=Limits(inloox_requests_per_second=float(config.get("INLOOX_REQUESTS_PER_SECOND") or 0),
                      webhooks_per_second=float(config.get("WEBHOOKS_PER_SECOND") or 0)),
    )


def read_workspaces_file(path: str, environ: Mapping[str, str] = os.environ) -> dict[str, Workspace]:
    """Parse and check a workspaces file (YAML or JSON); errors name the file, workspace and field."""
    try:
        data = YAML().load(Path(path).read_text())  # round-trip mode: nodes know their line
    except (OSError, YAMLError) as exc:
        raise WorkspaceConfigError(f"{path}: cannot read the workspaces file: {exc}") from exc
    from jsonschema import Draft202012Validator  # here: only a workspaces file needs it (~3.5 MB a process)

    errors = sorted(Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).iter_errors(data),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise WorkspaceConfigError("\n".join(
            f"{path}:{_line(data, list(e.absolute_path))}: {'.'.join(map(str, e.absolute_path)) or '(top)'}: "
            f"{e.message}" for e in errors))
    return {name: _workspace(path, name, given, environ) for name, given in data["workspaces"].items()}


def _line(data, path: list) -> int:
    """The 1-based line of the value at `path` (or of the nearest enclosing one that knows its line)."""
    line, node = 1, data
    for part in path:
        lc = getattr(node, "lc", None)
        try:
            line = (lc.key(part) if isinstance(part, str) else lc.item(part))[0] + 1 if lc else line
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
    return line


def _workspace(path: str, name: str, given: dict, environ: Mapping[str, str]) -> Workspace:
    def secret(field_name: str) -> str:
        return _resolve(path, f"{name}.{field_name}", given.get(field_name, ""), environ)

    hooks = {}
    for source, secrets in (given.get("webhooks") or {}).items():
        secrets = [secrets] if isinstance(secrets, (str, dict)) else secrets  # one secret, or several (rotation)
        hooks[source] = [_resolve(path, f"{name}.webhooks.{source}", s, environ) for s in secrets]
    return Workspace(
        name=name, inloox_url=given["inloox_url"], inloox_api_key=secret("inloox_api_key"),
        admin_token=secret("admin_token"), rules_path=given.get("rules"), webhook_sources=hooks,
        slack_signing_secret=secret("slack_signing_secret"), teams_security_token=secret("teams_security_token"),
        chat_user_map=given.get("chat_user_map", ""), limits=Limits(**(given.get("limits") or {})),
        alerts=given.get("alerts", ""),
    )


def _resolve(path: str, where: str, value, environ: Mapping[str, str]) -> str:
    """A secret as written, or read from the environment when written as `{env: NAME}`."""
    if isinstance(value, dict):
        if value["env"] not in environ:
            raise WorkspaceConfigError(f"{path}: workspaces.{where}: environment variable {value['env']} is not set")
        return environ[value["env"]]
    return value
