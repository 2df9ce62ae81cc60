"""JSON request bodies, read once through `engine.bodies`: every `request.get_json()` of the app is bounded.

`init_app` installs both halves: the app's JSON provider parses with `engine.bodies.parse_json` (depth
limit, UTF-8 only, lone surrogates become U+FFFD), and the request class turns a body it refused into
a 400 that says why (Flask's own answer is a bare "Bad Request", and a 30,000-deep body was a 500).
"""
from __future__ import annotations

from typing import Any

from flask import Flask, Request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from engine.bodies import parse_json


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, except that `loads` refuses what `engine.bodies` refuses (a BodyError, a ValueError)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if kwargs:  # a caller asking for json.loads' own options (object_hook, …) gets exactly them
            return super().loads(s, **kwargs)
        # A program sent it: a string cut inside an emoji is repaired, not refused (see engine.bodies).
        return parse_json(s, "the body", repair=True)


class JSONBodyRequest(Request):
    """A request whose unreadable JSON body is answered with the reason, not a bare 400."""

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if e is None:
            raise UnsupportedMediaType(f"the body must be JSON (Content-Type: application/json), "
                                       f"not {self.mimetype or 'no content type'}")
        raise BadRequest(str(e))


def init_app(app: Flask) -> None:
    app.json = BoundedJSONProvider(app)
    app.request_class = JSONBodyRequest
