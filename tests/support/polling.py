"""Fixtures of the tests that poll the sandbox in process (test_poll, test_scan, test_snapshots).

Imported by name into those modules: their `client` is an InLoox client, not the Flask test client
of tests/conftest.py.
"""
from __future__ import annotations

import pytest
import redis

from inloox import Client


@pytest.fixture
def connection(redis_url, workspace):
    """Redis, with the test's workspace current (keys are the workspace's)."""
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def client(sandbox):
    """An InLoox client of the sandbox."""
    with Client(sandbox.base_url, sandbox.token) as client:
        yield client
