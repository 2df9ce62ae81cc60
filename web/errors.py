"""One JSON error shape for every HTTP error: {"error": {"code", "message", "details"}}."""
from __future__ import annotations

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException


def handle_http_error(exc: HTTPException):
    """Render an HTTP error (from `abort()` or routing) as JSON instead of Werkzeug's HTML page."""
    body = {"error": {"code": exc.name.replace(" ", ""), "message": exc.description, "details": []}}
    return jsonify(body), exc.code


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_error)
