"""Which workspace a request is for, and who may act for it.

Workspace routes are registered twice: at their own path for the default workspace
(`/hooks/forms`, `/runs`) and under `/workspaces/<ws>/` for any workspace (`/workspaces/acme/runs`).
The `ws` URL value is taken off before the view runs (Flask's documented url_value_preprocessor
pattern), and the request works for that workspace until it ends.

Which workspaces exist is the registry's to say (workers/registry), read through the app's live
View: a workspace created, changed or deleted by any process is served so within a second or two.
A workspace whose secrets this process cannot unseal answers 503 naming the key it needs; the
others keep serving.

Admin endpoints take the workspace's own admin token (the registry keeps only its hash) or the
operator's token (OPERATOR_TOKEN), which serves every workspace. A workspace without an admin
token is open only while no operator token is configured either (local development).
"""
from __future__ import annotations

import contextlib
import functools
import hmac

import click
import redis
from flask import Blueprint, Flask, abort, current_app, g, request

from web.resources import get_registry, let_go_of_unserved
from workers import registry, workspaces
from workers.redis_server import redacted_url
from workers.secrets import SecretsKeyError

WORKSPACE_PREFIX = "/workspaces/<ws>"
_SCOPED = "workspace_blueprints"  # app.extensions: blueprints whose unprefixed routes are the default workspace's


def init_app(app: Flask) -> None:
    """Resolve the workspace of every request and leave it when the request ends."""
    app.url_value_preprocessor(_enter_workspace)
    app.url_defaults(_add_workspace)
    app.teardown_request(_leave_workspace)


def register(app: Flask, bp: Blueprint) -> None:
    """Serve `bp` for the default workspace at its own path and for each workspace below /workspaces/<ws>."""
    app.extensions.setdefault(_SCOPED, set()).add(bp.name)
    app.register_blueprint(bp)
    app.register_blueprint(bp, name=f"ws_{bp.name}", url_prefix=WORKSPACE_PREFIX + (bp.url_prefix or ""))


def _enter_workspace(endpoint, values) -> None:
    name = (values or {}).pop("ws", None)
    if name is None and request.blueprint not in current_app.extensions.get(_SCOPED, ()):
        _enter_default_if_served()  # a deployment-wide route (RQ's dashboard reads the default's admin)
        return
    served = served_workspace(name)
    if served is not None:
        g.workspace_token = workspaces.enter(served)


def served_workspace(name: str | None) -> workspaces.Workspace | None:
    """The workspace a workspace route's URL names (`name`, None for the unprefixed route: the default one); None for
    an unprefixed route in a hosted deployment without a default workspace; 404 or 503 (an HTTPException) if it is
    not served or cannot be read."""
    try:
        view = get_registry()
        known = view.workspaces()
    except (registry.RegistryUnavailable, redis.RedisError) as exc:
        abort(503, f"the workspace registry cannot be read: {exc}")
    let_go_of_unserved(known)
    unreadable = view.unreadable().get(name or workspaces.DEFAULT)
    if unreadable:
        abort(503, unreadable)
    if name is None and workspaces.DEFAULT not in known:
        return None
    name = name or workspaces.DEFAULT
    if name not in known:
        abort(404, f"no workspace {name!r}")
    return known[name]


def _enter_default_if_served() -> None:
    """Enter the default workspace when it is served and the registry can say so; never refuse:
    /healthz and /metrics answer whatever the registry's state."""
    try:
        known = get_registry().workspaces()
    except (registry.RegistryUnavailable, redis.RedisError, SecretsKeyError):
        return
    let_go_of_unserved(known)
    served = known.get(workspaces.DEFAULT)
    if served is not None:
        g.workspace_token = workspaces.enter(served)


def _add_workspace(endpoint: str, values: dict) -> None:
    """url_for(".runs") inside a workspace's pages links to that workspace's route (Flask's url_defaults)."""
    if "ws" not in values and "workspace_token" in g and \
            current_app.url_map.is_endpoint_expecting(endpoint, "ws"):
        values["ws"] = workspaces.current().name


def _leave_workspace(exc=None) -> None:
    token = g.pop("workspace_token", None)
    if token is not None:
        workspaces.leave(token)


NO_DEFAULT = "this deployment has no default workspace; use /workspaces/<ws>/…"


def require_workspace() -> None:
    """Refuse a workspace route that has no workspace (hosted deployment, no default workspace)."""
    if "workspace_token" not in g:
        abort(404, NO_DEFAULT)


def bearer_token() -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def is_operator(given: str) -> bool:
    """True when `given` is the operator token (False when none is configured)."""
    expected = current_app.config.get("OPERATOR_TOKEN")
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def operator_open() -> bool:
    """True when the operator's powers are anyone's: no OPERATOR_TOKEN, and no workspace has an admin token
    either (local development); a workspace this process cannot read is taken to have one."""
    if current_app.config.get("OPERATOR_TOKEN"):
        return False
    # Open while an admin token guards a workspace, anyone (that workspace's admin, another customer's, a
    # stranger) could change, pause or delete it, or mint it a new admin token: the token would be worth nothing.
    view = get_registry()
    return not view.unreadable() and not any(w.admin_token_hash or w.admin_token for w in view.workspaces().values())


def is_admin(given: str) -> bool:
    """True when `given` is an admin token of the current workspace (or no token is configured at all)."""
    workspace = workspaces.current()
    stored = workspace.admin_token_hash or registry_hash(workspace.admin_token)
    if not stored and not current_app.config.get("OPERATOR_TOKEN"):
        return True
    return registry.token_matches(given, stored) or is_operator(given)


def registry_hash(token: str) -> str:
    """The hash the registry would keep of `token` (a Workspace built in code carries the token itself)."""
    return registry.token_hash(token)


def admin_token_hashes() -> list[str]:
    """Hashes of the tokens that may administer the current workspace: its own and the operator's."""
    workspace = workspaces.current()
    own = workspace.admin_token_hash or registry_hash(workspace.admin_token)
    return [h for h in (own, registry_hash(current_app.config.get("OPERATOR_TOKEN") or "")) if h]


def require_admin_token() -> None:
    """Admin routes need `Authorization: Bearer <token>` of the workspace or the operator."""
    require_workspace()
    if not is_admin(bearer_token()):
        abort(401, "an admin token is needed (Authorization: Bearer …)")


def require_operator_token(without: str = "") -> None:
    """Deployment-wide routes (every workspace's metrics and usage, the operator API) need the operator token;
    without one configured they are open only while `operator_open()` (`without`: what to use instead)."""
    expected = current_app.config.get("OPERATOR_TOKEN")
    if not expected:
        if not operator_open():  # they show or change every workspace: no customer's admin token opens them
            abort(401, "this route needs OPERATOR_TOKEN, since workspaces have admin tokens" + without)
        return
    if not hmac.compare_digest(bearer_token().encode(), expected.encode()):
        abort(401, "the operator token is needed (Authorization: Bearer …)")


def require_view_of_every_workspace() -> None:
    """Views of every workspace (/metrics, /usage): the operator's, or, without OPERATOR_TOKEN, a token that
    administers every workspace served (a deployment of one workspace and its ADMIN_TOKEN: it sees only its own)."""
    if current_app.config.get("OPERATOR_TOKEN"):
        return require_operator_token()
    if operator_open():
        return
    given, view = bearer_token(), get_registry()
    hashes = [w.admin_token_hash or registry_hash(w.admin_token) for w in view.workspaces().values()]
    if not given or view.unreadable() or not all(registry.token_matches(given, h) for h in hashes):
        abort(401, "this route shows every workspace: it needs OPERATOR_TOKEN (or, without one, a token that "
                   "administers every workspace); a workspace's own is at /workspaces/<ws>/…")


@contextlib.contextmanager
def redis_errors_as_messages():
    """A `flask` command meeting an unreachable Redis says so in one line, not with a traceback."""
    try:
        yield
    except redis.RedisError as exc:
        raise click.ClickException(f"Redis ({redacted_url(current_app.config['REDIS_URL'])}) failed: {exc}") from exc


def cli_registry() -> registry.View:
    """The registry for a `flask` command: a missing key or an unreadable registry is one "Error: …" line."""
    try:
        with redis_errors_as_messages():
            view = get_registry()
            view.refresh()  # a command acts on the registry as it is now (and says here if it cannot be read)
            return view
    except (SecretsKeyError, registry.RegistryUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc


def cli_workspace(command):
    """Give a `flask` command a `--workspace` option (default: "default", or $WORKSPACE) and run it in that workspace."""
    @functools.wraps(command)
    def in_workspace(*args, workspace: str, **kwargs):
        declared = current_app.config.get("WORKSPACES") or {}
        try:
            known = cli_registry().workspaces()
        except click.ClickException:
            if workspace not in declared:
                raise
            # The registry cannot be read (no Redis, no key): a workspace this process's settings declare
            # is still known, so commands that need no Redis (`rules run --dry-run`, `rules check`) work.
            known = declared
        if workspace not in known:
            raise click.ClickException(f"no workspace {workspace!r}; this deployment serves "
                                       f"{', '.join(sorted(known))}")
        with workspaces.using(known[workspace]), redis_errors_as_messages():
            return command(*args, **kwargs)

    return click.option("--workspace", "-w", default=workspaces.DEFAULT, envvar="WORKSPACE", show_default=True,
                        help="The workspace to act on.")(in_workspace)
