"""Many accounts on one InLoox host share a process's connections (a hosted service's poller and workers).

With a connection pool per client, a poller serving 1,000 workspaces kept 1,000 connections open to
the same host; a server that caps its connections (waitress, which serves the sandbox, at 100) left
the 101st workspace without an answer until an idle connection timed out, two minutes later.
"""
from __future__ import annotations

from inloox import Client

ACCOUNTS = 150  # more than the sandbox's server accepts at once (waitress: 100 connections)


def test_150_accounts_on_one_host_are_all_answered_over_shared_connections(sandbox):
    clients = [Client(sandbox.base_url, sandbox.token, timeout=(3, 5)) for _ in range(ACCOUNTS)]
    try:
        answered = [client.me()["DisplayName"] for client in clients]  # each after the one before, as a poller does
    finally:
        for client in clients:
            client.close()
    assert len(answered) == ACCOUNTS and len(set(answered)) == 1
