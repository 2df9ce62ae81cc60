"""A local InLoox-compatible OData v4 server, driven by InLoox's own $metadata, for tests and demos."""
from .app import create_app

__all__ = ["create_app"]
