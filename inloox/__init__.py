"""The InLoox OData client, its errors, its schema and `$filter` builders: everything that speaks InLoox."""
from inloox.client import Client
from inloox.errors import (
    AuthError, ClientError, Conflict, HTTPStatusError, InLooxError, InvalidArguments, InvalidRequest, NotFound,
    OutcomeUnknown, RateLimited, RequestTimeout, ServerError, TransportError, UnexpectedRedirect,
)
from inloox.metadata import load_metadata
from inloox.query import (
    Filter, and_, contains, endswith, eq, ge, gt, in_, le, lt, ne, not_, or_, raw, render_filter,
    startswith,
)

__all__ = [
    "Client",
    "InLooxError", "TransportError", "OutcomeUnknown", "HTTPStatusError", "UnexpectedRedirect",
    "RequestTimeout", "RateLimited", "ServerError", "ClientError", "AuthError", "NotFound", "Conflict",
    "InvalidRequest", "InvalidArguments",
    "load_metadata",
    "Filter", "eq", "ne", "gt", "ge", "lt", "le", "in_", "contains", "startswith", "endswith",
    "and_", "or_", "not_", "raw", "render_filter",
]
