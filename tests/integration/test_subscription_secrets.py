"""Subscription secrets at rest: sealed in Redis, shown once, and still signing after a key rotation.

Real Valkey, real `rq worker` and poller processes, the sandbox, and a receiver that verifies as a
Standard Webhooks receiver does (the standardwebhooks library).
"""
from __future__ import annotations

import os
import time

import pytest
import redis as redis_lib
from standardwebhooks.webhooks import Webhook

from tests.support.processes import wait_until
from tests.support.stack import make_task, start
from workers import subscriptions, workspaces
from workers.secrets import Keyring, generate_key

ADMIN = {"Authorization": "Bearer feed-admin"}


@pytest.fixture
def app(redis_url, sandbox, rules_dir):
    from app import create_app

    return create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                       "INLOOX_API_KEY": sandbox.token, "RULES_PATH": str(rules_dir), "ADMIN_TOKEN": "feed-admin"})


def every_value(connection: redis_lib.Redis) -> bytes:
    """Every key and value in the database, of every type, as one blob to search."""
    found = []
    for name in connection.scan_iter(count=1000):
        kind = connection.type(name).decode()
        found.append(name)
        if kind == "string":
            found.append(connection.get(name) or b"")
        elif kind == "hash":
            found += [part for pair in connection.hgetall(name).items() for part in pair]
        elif kind == "list":
            found += connection.lrange(name, 0, -1)
        elif kind == "set":
            found += connection.smembers(name)
        elif kind == "zset":
            found += connection.zrange(name, 0, -1)
        elif kind == "stream":
            found += [part for _, entry in connection.xrange(name) for pair in entry.items() for part in pair]
    return b"\n".join(found)


def assert_nowhere(connection: redis_lib.Redis, shown: list[str]) -> None:
    values = every_value(connection)
    for secret in shown:
        # The whole secret, and its random part alone (what a receiver's library decodes).
        assert secret.encode() not in values, f"{secret[:10]}… is stored in plain text"
        assert secret.removeprefix("whsec_").encode() not in values, f"{secret[:10]}… is stored in plain text"
    assert b"fernet:" in values


def verified(secret: str, delivery: dict) -> dict:
    """The delivery's body, verified as a Standard Webhooks receiver would (raises when the signature is wrong)."""
    return Webhook(secret).verify(delivery["raw"], {k.lower(): v for k, v in delivery["headers"].items()})


def delivered_to(receiver, path: str) -> list[dict]:
    return [d for d in receiver.received if d["path"] == path]


def test_no_subscription_secret_is_stored_in_plain_text_and_the_shown_one_signs(stack, sandbox, receiver, app,
                                                                                redis_url):
    client, runner = app.test_client(), app.test_cli_runner()
    connection = redis_lib.Redis.from_url(redis_url)
    task = make_task(sandbox, "Write report")
    created = client.post("/subscriptions", json={"url": f"{receiver.url}/api", "events": ["Task.updated"]},
                          headers=ADMIN)
    assert created.status_code == 201, created.get_data(as_text=True)
    api_sub, api_secret = created.get_json()["id"], created.get_json()["secret"]
    added = runner.invoke(args=["subscriptions", "add", f"{receiver.url}/cli", "--event", "Task.*"])
    assert added.exit_code == 0, added.output
    cli_sub, cli_secret = added.output.split()[0], added.output.split("secret: ")[1].split()[0]
    assert api_secret.startswith("whsec_") and cli_secret.startswith("whsec_")
    assert_nowhere(connection, [api_secret, cli_secret])

    start(stack, redis_url)  # the poller watches Task from its first poll: someone subscribed
    assert sandbox.patch(f"Task({task})", json={"IsDone": True}).ok
    wait_until(lambda: delivered_to(receiver, "/api") and delivered_to(receiver, "/cli"), 20, "both deliveries")
    assert verified(api_secret, delivered_to(receiver, "/api")[0])["data"]["key"] == task
    assert verified(cli_secret, delivered_to(receiver, "/cli")[0])["data"]["key"] == task

    rotated = client.post(f"/subscriptions/{api_sub}/rotate", headers=ADMIN)
    assert rotated.status_code == 200
    api_rotated = rotated.get_json()["secret"]
    cli_rotated = runner.invoke(args=["subscriptions", "rotate", cli_sub]).output.split("secret: ")[1].split()[0]
    assert_nowhere(connection, [api_secret, cli_secret, api_rotated, cli_rotated])
    assert "secret" not in str(client.get(f"/subscriptions/{api_sub}", headers=ADMIN).get_json())

    # The next delivery verifies with the new secret and, for a day, with the one shown at create.
    assert sandbox.patch(f"Task({task})", json={"IsDone": False}).ok
    wait_until(lambda: len(delivered_to(receiver, "/api")) == 2 and len(delivered_to(receiver, "/cli")) == 2, 20,
               "the deliveries after the rotations")
    for path, first, second in (("/api", api_secret, api_rotated), ("/cli", cli_secret, cli_rotated)):
        latest = delivered_to(receiver, path)[1]
        assert verified(first, latest) == verified(second, latest)
    assert_nowhere(connection, [api_secret, cli_secret, api_rotated, cli_rotated])


def test_after_secrets_rotate_a_process_with_only_the_new_key_still_signs(stack, sandbox, receiver, redis_url):
    from app import create_app

    old_key, new_key = os.environ["SECRETS_KEY"], generate_key()
    connection = redis_lib.Redis.from_url(redis_url)
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token)):
        sealed, sealed_secret = subscriptions.create(
            connection, {"url": f"{receiver.url}/sealed", "events": ["Task.updated"]}, keyring=Keyring([old_key]))
        # One stored before secrets were sealed, as an existing deployment has it: it keeps delivering.
        legacy_secret = subscriptions.new_secret()
        subscriptions.save(connection, subscriptions.Subscription(
            id="sub_legacy", url=f"{receiver.url}/legacy", events=["Task.updated"],
            secrets=[{"secret": legacy_secret, "until": None}], created_at=time.time()))
    task = make_task(sandbox, "Write report")
    start(stack, redis_url)
    assert sandbox.patch(f"Task({task})", json={"IsDone": True}).ok
    wait_until(lambda: delivered_to(receiver, "/sealed") and delivered_to(receiver, "/legacy"), 20,
               "the deliveries under the old key")
    verified(sealed_secret, delivered_to(receiver, "/sealed")[0])
    verified(legacy_secret, delivered_to(receiver, "/legacy")[0])

    # The operator adds the new key first, rotates, and then runs every process with the new key alone.
    rotating = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                           "INLOOX_API_KEY": sandbox.token, "SECRETS_KEY": f"{new_key},{old_key}"})
    result = rotating.test_cli_runner().invoke(args=["secrets", "rotate"])
    assert result.exit_code == 0, result.output
    counted = int(result.output.split()[1])
    assert counted >= 2, result.output  # the sealed subscription's secret and the legacy one, besides the registry's
    assert rotating.test_cli_runner().invoke(args=["secrets", "rotate"]).output.startswith("re-sealed 0 secret(s)")
    assert_nowhere(connection, [sealed_secret, legacy_secret])

    stack.stop()
    stack.env["SECRETS_KEY"] = new_key
    stack.worker("worker-new-key")
    stack.poller("poller-new-key")
    assert sandbox.patch(f"Task({task})", json={"IsDone": False}).ok
    wait_until(lambda: len(delivered_to(receiver, "/sealed")) == 2 and len(delivered_to(receiver, "/legacy")) == 2,
               30, "the deliveries signed by the processes with only the new key")
    assert verified(sealed_secret, delivered_to(receiver, "/sealed")[1])["data"]["key"] == task
    assert verified(legacy_secret, delivered_to(receiver, "/legacy")[1])["data"]["key"] == task
