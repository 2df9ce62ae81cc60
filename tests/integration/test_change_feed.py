"""The InLoox change feed as signed webhooks, with real processes: poller, worker, sandbox, a receiver."""
from __future__ import annotations

import os

import pytest
from standardwebhooks.webhooks import Webhook

from tests.support.processes import wait_until
from tests.support.stack import make_task, start
from workers import deliveries
from workers.secrets import Keyring

ADMIN = {"Authorization": "Bearer feed-admin"}


@pytest.fixture
def api(redis_url, sandbox, rules_dir):
    from app import create_app

    app = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": sandbox.token, "RULES_PATH": str(rules_dir), "ADMIN_TOKEN": "feed-admin"})
    return app.test_client()


def _subscribe(api, receiver, events, fields=None) -> dict:
    answer = api.post("/subscriptions", json={"url": f"{receiver.url}/inloox", "events": events, "fields": fields},
                      headers=ADMIN)
    assert answer.status_code == 201, answer.get_data(as_text=True)
    assert answer.get_json()["secret"].startswith("whsec_")
    return answer.get_json()


def _verified(secret: str, delivery: dict) -> dict:
    """The delivery's body, verified as a Standard Webhooks receiver would (raises when the signature is wrong)."""
    return Webhook(secret).verify(delivery["raw"], {k.lower(): v for k, v in delivery["headers"].items()})


def test_each_task_change_is_delivered_once_signed_and_retried_with_the_same_id(stack, sandbox, receiver, api,
                                                                             redis_url):
    sub = _subscribe(api, receiver, ["Task.updated"], fields=["IsDone", "Name"])
    task = make_task(sandbox, "Write report")
    stack.env["DELIVERY_RETRY_SECONDS"] = "0.2 0.2 0.2 0.2"
    start(stack, redis_url)

    assert sandbox.patch(f"Task({task})", json={"IsDone": True}).ok
    [first] = wait_until(lambda: receiver.received, 20, "the delivery of the first change")
    body = _verified(sub["secret"], first)
    assert body["type"] == "inloox.Task.updated" and body["data"]["key"] == task
    assert body["data"]["changes"]["IsDone"] == {"from": False, "to": True}

    # A change of a field the subscription does not name is not delivered; a named one is.
    assert sandbox.patch(f"Task({task})", json={"WorkAmount": 3}).ok
    assert sandbox.patch(f"Task({task})", json={"Name": "Write the report"}).ok
    wait_until(lambda: len(receiver.received) == 2, 20, "the rename's delivery")
    assert _verified(sub["secret"], receiver.received[1])["data"]["changes"] == {
        "Name": {"from": "Write report", "to": "Write the report"}}

    # The receiver is down for three attempts: the fourth succeeds, with the same webhook-id.
    receiver.answers = [503, 503, 503]
    assert sandbox.patch(f"Task({task})", json={"IsDone": False}).ok
    wait_until(lambda: len(receiver.received) == 6, 30, "four attempts of the third change")
    attempts = receiver.received[2:]
    assert len({a["headers"]["webhook-id"] for a in attempts}) == 1
    for attempt in attempts:
        _verified(sub["secret"], attempt)

    def answered() -> list | None:
        # The receiver sees the fourth attempt a moment before the worker records its 200 answer: until then
        # the delivery is rightly still pending (a CI run listed it in between).
        listed = api.get(f"/subscriptions/{sub['id']}/deliveries", headers=ADMIN).get_json()["deliveries"]
        return listed if all(d["status"] != "pending" for d in listed) else None

    listed = wait_until(answered, 10, "the fourth attempt's answer recorded")
    assert [d["status"] for d in listed] == ["delivered"] * 3
    assert [a["status"] for a in listed[0]["attempts"]] == [503, 503, 503, 200]

    # After a rotation both the new and the old secret verify the next delivery.
    rotated = api.post(f"/subscriptions/{sub['id']}/rotate", headers=ADMIN).get_json()
    assert rotated["secret"] != sub["secret"]
    assert sandbox.patch(f"Task({task})", json={"IsDone": True}).ok
    wait_until(lambda: len(receiver.received) == 7, 20, "the delivery after the rotation")
    latest = receiver.received[6]
    assert len(latest["headers"]["webhook-signature"].split()) == 2
    assert _verified(rotated["secret"], latest) == _verified(sub["secret"], latest)


def test_a_subscription_to_a_private_address_is_refused_at_delivery_and_can_be_redelivered(stack, sandbox, receiver,
                                                                                          api, redis_url):
    private = api.post("/subscriptions", json={"url": "http://127.0.0.2:9/hook", "events": ["Task.*"]},
                       headers=ADMIN).get_json()
    good = _subscribe(api, receiver, ["*.updated"])
    task = make_task(sandbox, "Call Ann")
    start(stack, redis_url)
    assert sandbox.patch(f"Task({task})", json={"IsDone": True}).ok

    wait_until(lambda: receiver.received, 20, "the public subscriber's delivery")
    [refused] = wait_until(lambda: [d for d in api.get(f"/subscriptions/{private['id']}/deliveries",
                                                       headers=ADMIN).get_json()["deliveries"]
                                    if d["status"] == "failed"], 20, "the private one's refusal")
    assert refused["error"].startswith("refused: 127.0.0.2 resolves to 127.0.0.2, a non-public address")
    assert len(refused["attempts"]) == 1  # a refusal is not retried

    # The receiver has it a moment before the worker stores its answer; sent again before then, the redelivery is
    # refused (409, the next test), so wait for it as a person would see it listed.
    [delivered] = wait_until(lambda: [d for d in api.get(f"/subscriptions/{good['id']}/deliveries",
                                                         headers=ADMIN).get_json()["deliveries"]
                                      if d["status"] == "delivered"], 10, "the delivery's answer listed")
    again = api.post(f"/subscriptions/{good['id']}/deliveries/{delivered['id']}/redeliver", headers=ADMIN)
    assert again.status_code == 202
    wait_until(lambda: len(receiver.received) == 2, 20, "the redelivery")
    assert receiver.received[1]["headers"]["webhook-id"] == receiver.received[0]["headers"]["webhook-id"] == delivered["id"]
    assert api.delete(f"/subscriptions/{good['id']}", headers=ADMIN).status_code == 204
    assert api.get(f"/subscriptions/{good['id']}", headers=ADMIN).status_code == 404


def test_a_delivery_whose_attempt_is_on_its_way_is_not_redelivered_but_told_so(api, redis_url, receiver):
    """A redelivery asked for while an attempt was being sent (the receiver had it, its answer not yet stored) was
    answered 202 and never sent: the attempt ended by storing its own copy of the record, "delivered", over the
    redelivery's "pending", and the redelivery's job found nothing to send (a CI run). Now it is a 409 until the
    attempt's answer is stored, and then a redelivery like any other."""
    import redis as redis_lib

    from workers import workspaces

    connection = redis_lib.Redis.from_url(redis_url)
    sub = _subscribe(api, receiver, ["Task.*"])
    with workspaces.using(workspaces.Workspace("default", "http://unused.invalid/", "")):
        [delivery] = deliveries.fan_out(connection, {
            "id": "evt-1", "source": "inloox", "kind": "updated", "entity_set": "Task", "key": "k1",
            "occurred_at": "2026-11-30T08:00:00+00:00", "changes": {"IsDone": [False, True]}, "entity": {},
            "actor": {}})
        attempt = connection.lock(workspaces.key(f"delivery-lock:{delivery}"), timeout=30)  # as a worker's attempt
        assert attempt.acquire(blocking=False)
    path = f"/subscriptions/{sub['id']}/deliveries/{delivery}/redeliver"

    busy = api.post(path, headers=ADMIN)
    assert busy.status_code == 409
    assert "being sent right now" in busy.get_json()["error"]["message"]
    from app import create_app

    cli = create_app({"REDIS_URL": redis_url, "ADMIN_TOKEN": "feed-admin"}).test_cli_runner()
    said = cli.invoke(args=["subscriptions", "redeliver", sub["id"], delivery])
    assert said.exit_code != 0 and "being sent right now" in said.output
    page = api.post(f"/ui{path}", headers=ADMIN, follow_redirects=True).get_data(as_text=True)
    assert "Not queued: an attempt of" in page

    attempt.release()
    again = api.post(path, headers=ADMIN)
    assert again.status_code == 202 and again.get_json()["delivery"]["status"] == "pending"
    assert connection.zscore("ws:default:deliveries:due", delivery) is not None


def test_bad_subscriptions_are_refused_with_the_field_named(api):
    for body, words in (({"events": ["Task.updated"]}, "url:"),
                        ({"url": "ftp://x.example/", "events": ["Task.updated"]}, "url:"),
                        ({"url": "https://x.example/", "events": ["Task.renamed"]}, "events:"),
                        ({"url": "https://x.example/", "events": ["Task.updated"], "fields": "IsDone"}, "fields:")):
        answer = api.post("/subscriptions", json=body, headers=ADMIN)
        assert answer.status_code == 422 and words in answer.get_json()["error"]["message"]
    assert api.get("/subscriptions").status_code == 401


def test_delivery_ids_are_stable_per_subscription_and_event():
    assert deliveries.delivery_id("sub_1", "evt") == deliveries.delivery_id("sub_1", "evt")
    assert deliveries.delivery_id("sub_1", "evt") != deliveries.delivery_id("sub_2", "evt")


def test_the_dashboard_and_the_cli_show_subscriptions_and_their_deliveries(redis_url, sandbox, rules_dir, receiver):
    from app import create_app

    app = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": sandbox.token, "RULES_PATH": str(rules_dir), "ADMIN_TOKEN": "feed-admin"})
    runner, client = app.test_cli_runner(), app.test_client()
    added = runner.invoke(args=["subscriptions", "add", f"{receiver.url}/hook?token=s3cr3t", "--event", "Task.*",
                                "--field", "IsDone"])
    assert added.exit_code == 0 and "secret: whsec_" in added.output, added.output
    sub_id = added.output.split()[0]
    listed = runner.invoke(args=["subscriptions", "list"]).output
    assert sub_id in listed and "active" in listed and "Task.*" in listed
    page = client.get("/ui/subscriptions", headers=ADMIN).get_data(as_text=True)
    assert sub_id in page and "Nothing delivered yet" in page and "s3cr3t" not in page
    assert "secret: whsec_" in runner.invoke(args=["subscriptions", "rotate", sub_id]).output
    assert runner.invoke(args=["subscriptions", "delete", sub_id]).output.strip() == f"{sub_id} deleted"
    assert "no subscriptions" in runner.invoke(args=["subscriptions", "list"]).output


def test_a_delivery_whose_job_was_lost_is_sent_by_the_sweeper(stack, sandbox, receiver, redis_url):
    import time

    import redis as redis_lib

    from workers import subscriptions, workspaces

    connection = redis_lib.Redis.from_url(redis_url)
    event = {"id": "evt-lost", "source": "inloox", "kind": "updated", "entity_set": "Task", "key": "k1",
             "occurred_at": "2026-11-30T08:00:00+00:00", "changes": {"IsDone": [False, True]}, "entity": {},
             "actor": {}}
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token)):
        sub, secret = subscriptions.create(connection, {"url": f"{receiver.url}/hook", "events": ["Task.*"]},
                                           keyring=Keyring.from_config(os.environ))
        [delivery] = deliveries.fan_out(connection, event, now=time.time() - 120)
        # The process died after storing the delivery and before its job reached the queue.
        connection.delete(*connection.keys("rq:queue:*"), *connection.keys("rq:job:*"))
        assert deliveries.fan_out(connection, event) == []  # handled again: nothing new, nothing twice
    stack.worker()
    [received] = wait_until(lambda: receiver.received, 30, "the sweeper to send the lost delivery")
    assert received["headers"]["webhook-id"] == delivery
    assert Webhook(secret).verify(received["raw"], {k.lower(): v for k, v in received["headers"].items()})
    time.sleep(1)
    assert len(receiver.received) == 1


def test_a_subscription_failing_for_five_days_is_disabled_and_the_operator_told(stack, sandbox, receiver, redis_url,
                                                                                api):
    import time

    import redis as redis_lib

    from workers import subscriptions, workspaces

    connection = redis_lib.Redis.from_url(redis_url)
    event = {"id": "evt-late", "source": "inloox", "kind": "updated", "entity_set": "Task", "key": "k1",
             "occurred_at": "2026-11-30T08:00:00+00:00", "changes": {"Name": ["a", "b"]}, "entity": {}, "actor": {}}
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token)):
        sub, _ = subscriptions.create(connection, {"url": f"{receiver.url}/hook", "events": ["Task.updated"]},
                                      keyring=Keyring.from_config(os.environ))
        sub.failing_since = time.time() - subscriptions.DISABLE_AFTER - 60  # nothing delivered for 5 days
        subscriptions.save(connection, sub)
        receiver.answers = [503]
        deliveries.fan_out(connection, event)
    worker = stack.worker()
    wait_until(lambda: api.get(f"/subscriptions/{sub.id}", headers=ADMIN).get_json()["disabled"], 20,
               "the subscription to be disabled")
    shown = api.get(f"/subscriptions/{sub.id}", headers=ADMIN).get_json()
    assert shown["disabled"].startswith("every delivery failed for 5 days")
    # The worker disables the subscription, then stores the delivery that failed: a reader may see the
    # first a few milliseconds before the second (CI did once).
    def deliveries_shown():
        return api.get(f"/subscriptions/{sub.id}/deliveries", headers=ADMIN).get_json()["deliveries"]

    wait_until(lambda: deliveries_shown()[0]["status"] != "pending", 10, "the delivery to be finished")
    [failed] = deliveries_shown()
    assert failed["status"] == "failed" and len(failed["attempts"]) == 1
    wait_until(lambda: "disabled: every delivery failed" in worker.output(), 10, "the worker's error line")
    wait_until(lambda: 'inloox_automation_subscriptions_disabled_total{workspace="default"} 1.0'
               in api.get("/metrics", headers=ADMIN).get_data(as_text=True), 10, "the counter on /metrics")




def test_a_delivery_waiting_its_turn_behind_a_slow_subscriber_is_not_attempted_before_it_is_due(stack, sandbox,
                                                                                                 receiver, redis_url):
    """Deliveries of a burst of changes, for a subscriber that answers 503 after 2 s, wait their turn (4 at a time) for
    over a minute. The sweeper took those still waiting for deliveries whose job was lost and queued each again, and
    the second job sent it again as soon as the first had failed: its retry, due in 10 minutes, went out at once, and
    the delivery was failed (its schedule used up) seconds after its first attempt. (With the burst itself, 180
    changes, 8 were failed so.)"""
    import collections
    import time

    import redis as redis_lib
    from rq import Queue

    from workers import subscriptions, workspaces

    connection = redis_lib.Redis.from_url(redis_url)
    receiver.answers, receiver.delay = [503] * 100, 2.0
    stack.env["DELIVERY_RETRY_SECONDS"] = "600"  # one retry, 10 minutes after the first attempt
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token)):
        sub, _ = subscriptions.create(connection, {"url": f"{receiver.url}/hook", "events": ["Task.updated"]},
                                      keyring=Keyring.from_config(os.environ))
        for number in range(40):  # made two minutes ago, their jobs still queued behind the burst's others
            event = {"id": f"evt-{number}", "source": "inloox", "kind": "updated", "entity_set": "Task",
                     "key": f"task-{number}", "occurred_at": "2026-11-30T08:00:00+00:00",
                     "changes": {"IsDone": [False, True]}, "entity": {}, "actor": {}}
            deliveries.fan_out(connection, event, now=time.time() - 120)
    stack.worker()

    def shown() -> list[dict]:
        with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token)):
            return deliveries.listed(connection, sub.id, limit=100)

    wait_until(lambda: all(d["attempts"] for d in shown()), 60, "every delivery's first attempt")
    wait_until(lambda: Queue("default", connection=connection).count == 0, 60, "the queue to be drained")
    time.sleep(5)  # the jobs taken last end (2 s each)

    sent = collections.Counter(r["headers"]["webhook-id"] for r in receiver.received)
    assert len(sent) == 40 and set(sent.values()) == {1}, "a delivery sent again before its retry was due"
    assert collections.Counter(d["status"] for d in shown()) == {"pending": 40}


def test_a_subscriber_url_whose_host_is_no_name_fails_its_deliveries_on_the_schedule(stack, sandbox, receiver, api,
                                                                                   redis_url):
    """A typo in a subscriber's host (an empty label, or one over 63 characters) is no name to look up: Python's
    resolver raised UnicodeError through the outbound guard, which crashed every attempt's job. Its deliveries stayed
    pending with no attempt shown, the sweeper queued them again every minute for ever (each crash a failed RQ job
    kept), and the subscription was never disabled. Now such a host fails as a name that is not found does."""
    import time

    import redis as redis_lib

    from workers import subscriptions, workspaces

    connection = redis_lib.Redis.from_url(redis_url)
    stack.env["DELIVERY_RETRY_SECONDS"] = "0.2"
    event = {"id": "evt-typo", "source": "inloox", "kind": "updated", "entity_set": "Task", "key": "k1",
             "occurred_at": "2026-11-30T08:00:00+00:00", "changes": {"IsDone": [False, True]}, "entity": {}, "actor": {}}
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token)):
        typo, _ = subscriptions.create(connection, {"url": "https://hooks..example.com/inloox", "events": ["Task.*"]},
                                       keyring=Keyring.from_config(os.environ))
        long, _ = subscriptions.create(connection, {"url": f"https://{'a' * 64}.example.com/", "events": ["Task.*"]},
                                       keyring=Keyring.from_config(os.environ))
        deliveries.fan_out(connection, event, now=time.time())
    stack.worker()

    for sub in (typo, long):
        [failed] = wait_until(lambda: [d for d in api.get(f"/subscriptions/{sub.id}/deliveries", headers=ADMIN)
                                       .get_json()["deliveries"] if d["status"] == "failed"], 30,
                              f"the delivery to {sub.url} to fail")
        assert [a["error"] for a in failed["attempts"]] == ["failed: ConnectionError"] * 2  # tried, then retried once


def test_a_delivery_waiting_its_turn_has_one_job_however_often_the_sweeper_looks(redis_url, sandbox, receiver):
    """Behind a long backlog (no worker here takes the queue), the sweeper queued another job for a delivery whose
    first job was still waiting, at every look a minute past its due time: RQ jobs piled up in Redis, one a minute
    per delivery, for as long as the backlog lasted. Now a delivery has one job waiting; one whose job was lost gets
    one again, once."""
    import time

    import redis as redis_lib

    from workers import enqueue, subscriptions, workspaces

    connection = redis_lib.Redis.from_url(redis_url)
    event = {"id": "evt-backlog", "source": "inloox", "kind": "updated", "entity_set": "Task", "key": "k1",
             "occurred_at": "2026-11-30T08:00:00+00:00", "changes": {"IsDone": [False, True]}, "entity": {},
             "actor": {}}

    def jobs_of(delivery: str) -> list[str]:
        queue = enqueue.queue(connection)
        ids = queue.job_ids + queue.scheduled_job_registry.get_job_ids()
        return [i for i in ids if delivery in i]

    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token)):
        subscriptions.create(connection, {"url": f"{receiver.url}/hook", "events": ["Task.*"]},
                             keyring=Keyring.from_config(os.environ))
        made = time.time()
        [delivery] = deliveries.fan_out(connection, event, now=made)
        for minutes in range(1, 6):  # five looks, each a minute and more past the last
            deliveries.sweep(connection, now=made + minutes * (deliveries.GRACE + 1))
        assert len(jobs_of(delivery)) == 1, jobs_of(delivery)

        # Its job lost (a worker killed with it, Redis restarted without it): queued again, once.
        connection.delete(*connection.keys("rq:queue:*"), *connection.keys("rq:job:*"))
        later = made + 10 * (deliveries.GRACE + 1)
        assert deliveries.sweep(connection, now=later) == [delivery]
        assert deliveries.sweep(connection, now=later + deliveries.GRACE + 1) == []
        assert len(jobs_of(delivery)) == 1, jobs_of(delivery)


def test_a_deleted_subscription_leaves_no_delivery_index_behind(api, redis_url, receiver):
    """Each subscription keeps an index of its newest deliveries (up to KEEP_PER_SUBSCRIPTION ids). Deleting the
    subscription left that index in Redis for good: a workspace that subscribes and unsubscribes (an integration
    set up again at each deploy) added one more each time, which nothing ever read or deleted."""
    import redis as redis_lib

    from workers import workspaces

    connection = redis_lib.Redis.from_url(redis_url)
    for round_ in range(5):
        sub = _subscribe(api, receiver, ["Task.*"])
        with workspaces.using(workspaces.Workspace("default", "http://unused.invalid/", "")):
            for n in range(20):
                deliveries.fan_out(connection, {
                    "id": f"evt-{round_}-{n}", "source": "inloox", "kind": "updated", "entity_set": "Task",
                    "key": f"k{n}", "occurred_at": "2026-11-30T08:00:00+00:00", "changes": {"IsDone": [False, True]},
                    "entity": {}, "actor": {}})
        assert connection.zcard(f"ws:default:subs:{sub['id']}:deliveries") == 20
        assert api.delete(f"/subscriptions/{sub['id']}", headers=ADMIN).status_code == 204
    assert connection.keys("ws:default:subs:*:deliveries") == []


def test_a_delivery_whose_index_redis_refuses_is_made_once_the_index_is_mended(redis_url, sandbox, receiver):
    """A delivery's record (SET NX, its claim) went before its entry among the due ones: with the due index under a key
    of another type, the record was stored and the rest refused, and the event handled again found the record, made
    nothing and queued nothing, and no sweeper knew of it: the change was never delivered."""
    import redis as redis_lib

    from workers import enqueue, subscriptions, workspaces

    connection = redis_lib.Redis.from_url(redis_url)
    event = {"id": "evt-refused", "source": "inloox", "kind": "updated", "entity_set": "Task", "key": "k1",
             "occurred_at": "2026-11-30T08:00:00+00:00", "changes": {"IsDone": [False, True]}, "entity": {},
             "actor": {}}
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token)):
        subscriptions.create(connection, {"url": f"{receiver.url}/hook", "events": ["Task.*"]},
                             keyring=Keyring.from_config(os.environ))
        connection.set("ws:default:deliveries:due", "not a sorted set")
        with pytest.raises(redis_lib.ResponseError):
            deliveries.fan_out(connection, event)
        connection.delete("ws:default:deliveries:due")

        [delivery] = deliveries.fan_out(connection, event)  # the event handled again (it failed)
        queue = enqueue.queue(connection)
        assert [i for i in queue.job_ids if delivery in i], queue.job_ids
