"""OData errors the sandbox answers with: a status, an OData code and a message naming the problem.

ODataError
├── BadRequest (400)        unknown property, wrong type, malformed filter/key/body
├── Unauthorized (401)      missing or wrong x-api-key
├── NotFound (404)          unknown entity set or key
├── MethodNotAllowed (405)  writes to read-only sets (Dynamic*)
├── Conflict (409)          a POST whose key already exists
└── NotImplemented (501)    operations from the metadata the sandbox does not model
"""
from __future__ import annotations


class ODataError(Exception):
    """An error rendered as `{"error": {"code", "message", "target"?}}` with `status`."""

    status = 500
    code = "InternalServerError"

    def __init__(self, message: str, *, target: str | None = None):
        super().__init__(message)
        self.message = message
        self.target = target

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.target:
            body["target"] = self.target
        return {"error": body}


class BadRequest(ODataError):
    status, code = 400, "BadRequest"


class Unauthorized(ODataError):
    status, code = 401, "Unauthorized"


class NotFound(ODataError):
    status, code = 404, "NotFound"


class MethodNotAllowed(ODataError):
    status, code = 405, "MethodNotAllowed"


class NotImplementedOperation(ODataError):
    status, code = 501, "NotImplemented"


class Conflict(ODataError):
    status, code = 409, "Conflict"
