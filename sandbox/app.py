"""`create_app(config)`: the sandbox's Flask app, wired like Flask's tutorial factory."""
from __future__ import annotations

import logging

from flask import Flask
from werkzeug.exceptions import HTTPException

from inloox.metadata import load_metadata

from . import admin, odata, runtime
from .errors import ODataError
from .faults import Faults
from .requestlog import RequestLog
from .store import Store


def create_app(test_config: dict | None = None) -> Flask:
    """The app; config keys SANDBOX_TOKEN, SANDBOX_SEED ('empty'|'demo'), SANDBOX_DATA (SQLite file;
    None or empty: in memory), SANDBOX_USERS ({token: (first, last)}: more people, kept across resets).

    Sets SANDBOX_SEEDED: whether the seed was planted (always in memory; for a file, when it was new).
    """
    app = Flask(__name__)
    app.config.from_mapping(SANDBOX_TOKEN="sandbox-token", SANDBOX_SEED="empty", SANDBOX_DATA=None, SANDBOX_USERS={})
    app.config.update(test_config or {})
    store = Store(load_metadata(), app.config["SANDBOX_DATA"])
    # A data file that already holds an account is the sandbox's state from its last run: kept.
    # Asked before the Sandbox adds the people named at start-up, who would make any file look used.
    app.config["SANDBOX_SEEDED"] = not app.config["SANDBOX_DATA"] or _is_empty(store)
    sandbox = runtime.Sandbox(store, Faults(), RequestLog(), app.config["SANDBOX_TOKEN"],
                              people=dict(app.config["SANDBOX_USERS"]))
    if app.config["SANDBOX_SEEDED"]:
        sandbox.reset(app.config["SANDBOX_SEED"])
    runtime.init_app(app, sandbox)
    app.register_blueprint(odata.bp)
    app.register_blueprint(admin.bp)
    app.register_error_handler(ODataError, odata.error_response)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _is_empty(store: Store) -> bool:
    with store.reading() as conn:
        return conn.execute('SELECT COUNT(*) FROM "UserInfo"').fetchone()[0] == 0


def _http_error(error: HTTPException):
    wrapped = ODataError(error.description or error.name)
    wrapped.status, wrapped.code = error.code or 500, error.name.replace(" ", "")
    return odata.error_response(wrapped)


def _unexpected_error(error: Exception):
    # Still an OData body, so clients parse it; the traceback goes to the server log.
    logging.getLogger(__name__).exception("unexpected error")
    wrapped = ODataError(f"Internal sandbox error: {type(error).__name__}: {error}")
    return odata.error_response(wrapped)
