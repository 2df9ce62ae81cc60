"""A workspace's compiled rule bundle outlives changes of its record, and never its incarnation.

Pausing, resuming or changing the limits of a workspace rebuilds its context in every process; compiling its bundle
again there is seconds of CPU for a large one, on a worker's event thread. The compiled rules are kept across such
rebuilds, keyed by the workspace's incarnation (made when the workspace is created), the bundle's number and its
content's digest: a workspace deleted and created again under its name starts its numbers at v1 again, and must
never run the v1 rules of the one deleted.

This test process is the long-lived process: it follows the registry through workers.worker_context as a worker does,
against the session's real Valkey.
"""
from __future__ import annotations

import gc
import os
import time

import pytest
import redis

from workers import bundles, registry
from workers.secrets import Keyring

PREFIX = "ws:acme:"
RULE = """
id: {id}
when:
  - webhook: forms
then:
  - notify: "https://hooks.example.com/team"
    title: "{id}"
    body: "{{{{ event.title }}}}"
"""


@pytest.fixture
def connection(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def keyring():
    return Keyring.from_config({"SECRETS_KEY": os.environ["SECRETS_KEY"]})


@pytest.fixture
def process(redis_url, monkeypatch):
    """workers.worker_context of this test process, reading its settings afresh (this test's Redis) as a worker does
    at its start, and holding no context or compiled rules of an earlier test."""
    from workers import worker_context

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("INLOOX_URL", "http://127.0.0.1:9/odata/")  # `default`'s: never called here
    monkeypatch.setenv("INLOOX_API_KEY", "unused")
    for name, value in (("_config", None), ("_connection", None), ("_served", None), ("_contexts", {}),
                        ("_kept", {})):
        monkeypatch.setattr(worker_context, name, value, raising=False)
    yield worker_context


def upload(connection, rule_id: str) -> int:
    """A bundle of one rule, `rule_id`, uploaded and activated; its number."""
    stored = bundles.upload(connection, PREFIX, {f"{rule_id}.yaml": RULE.format(id=rule_id)})
    assert isinstance(stored, bundles.Version), stored
    return stored.number


def create(connection, keyring) -> None:
    change = registry.put(connection, keyring, "acme", {"inloox_url": "http://127.0.0.1:9/odata/",
                                                        "inloox_api_key": "acme-token"})
    assert change.created


def rule_ids(context) -> list[str]:
    """The ids of the rules an event accepted now meets; no reference to the rules is kept."""
    return sorted(context.rules.current(not_before=time.time())[0].rules)


def test_pausing_resuming_and_new_limits_do_not_compile_a_workspaces_bundle_again(process, connection, keyring):
    create(connection, keyring)
    upload(connection, "rule-a")
    process.served().view.refresh()
    assert rule_ids(process.worker_context("acme")) == ["rule-a"]
    compiled = process.compiles

    changes = [(lambda: registry.pause(connection, "acme"), True),
               (lambda: registry.resume(connection, "acme"), False),
               (lambda: registry.put(connection, keyring, "acme", {"limits": {"runs_per_minute": 60}}), False)]
    for change, paused in changes:
        before = process.worker_context("acme").workspace
        change()
        process.served().view.refresh()
        context = process.worker_context("acme")
        assert context.workspace != before and context.workspace.paused is paused  # a context built anew
        assert context.workspace.incarnation == before.incarnation != ""
        before = None
        gc.collect()  # the context replaced is gone, as it soon is in a process that runs on
        assert rule_ids(context) == ["rule-a"]

    assert process.compiles == compiled


def test_a_workspace_deleted_and_made_again_never_runs_the_v1_rules_of_the_one_deleted(process, connection, keyring):
    create(connection, keyring)
    assert upload(connection, "old-rule") == 1
    process.served().view.refresh()
    held = process.worker_context("acme")  # as an event's thread holds it while the workspace goes and comes back
    assert rule_ids(held) == ["old-rule"]

    registry.delete(connection, "acme")
    create(connection, keyring)
    assert upload(connection, "new-rule") == 1

    # Before this process has seen the registry change: an event of the new workspace meets the new rules.
    assert rule_ids(held) == ["new-rule"]
    process.served().view.refresh()
    context = process.worker_context("acme")
    assert context.workspace.incarnation != held.workspace.incarnation
    assert rule_ids(context) == ["new-rule"]
    # Nor does anything this process kept of the old one come back, however its contexts are built.
    process._contexts.clear()
    assert rule_ids(process.worker_context("acme")) == ["new-rule"]


def test_what_is_kept_of_a_workspace_goes_when_the_process_serves_it_no_longer(process, connection, keyring):
    create(connection, keyring)
    upload(connection, "rule-a")
    process.served().view.refresh()
    assert rule_ids(process.worker_context("acme")) == ["rule-a"]
    assert "acme" in process._kept

    registry.delete(connection, "acme")
    process.served().view.refresh()
    with pytest.raises(process.UnknownWorkspace):
        process.worker_context("acme")
    assert "acme" not in process._kept
