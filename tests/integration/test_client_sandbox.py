"""inloox.Client against the sandbox InLoox server: paging, escaping, writes and every error class,
with faults switched on through the sandbox rather than patched into requests.
"""
from __future__ import annotations

import logging
import pickle
import traceback
import uuid

import pytest

from inloox import (
    AuthError, Client, InvalidRequest, NotFound, OutcomeUnknown, RateLimited, ServerError, TransportError,
    contains, eq, in_, ne,
)
from tests.support.processes import free_port, wait_until

SENTINEL = "ilx_SENTINELwrongTOKENsentinel0123"
TRICKY = "O'Brien) or (1 eq 1"


@pytest.fixture
def client(sandbox):
    with Client(sandbox.base_url, sandbox.token, timeout=(2, 10)) as client:
        yield client


def _gets_since(sandbox, mark: int) -> list[dict]:
    return [r for r in sandbox.requests()[mark:] if r["method"] == "GET"]


def test_a_long_read_follows_next_links_lazily_page_by_page(sandbox, client):
    for i in range(250):
        client.create("Task", {"Name": f"task {i:03}"})
    mark = len(sandbox.requests())
    rows = client.query("Task")
    assert _gets_since(sandbox, mark) == []
    seen = [next(rows) for _ in range(100)]
    assert len(_gets_since(sandbox, mark)) == 1
    seen += [next(rows) for _ in range(100)]
    assert len(_gets_since(sandbox, mark)) == 2
    seen += list(rows)
    gets = _gets_since(sandbox, mark)
    assert len(gets) == 3 and all(r["status"] == 200 for r in gets)
    assert len(seen) == 250 and len({row["TaskItemId"] for row in seen}) == 250


def test_top_and_select_and_orderby(sandbox, client):
    for name in ("b", "c", "a"):
        client.create("Task", {"Name": name})
    rows = list(client.query("Task", select=["TaskItemId", "Name"], orderby="Name desc", top=2))
    assert [row["Name"] for row in rows] == ["c", "b"]
    assert set(rows[0]) <= {"TaskItemId", "Name", "@odata.etag"}


def test_a_value_that_looks_like_filter_syntax_matches_only_itself(sandbox, client):
    for name in (TRICKY, "O'Brien", "Other"):
        client.create("Task", {"Name": name})
    assert [row["Name"] for row in client.query("Task", filter=eq("Name", TRICKY))] == [TRICKY]
    assert client.count("Task", filter=eq("Name", TRICKY)) == 1
    assert client.count("Task", filter=contains("Name", "'")) == 2
    assert client.count("Task") == 3


ADVERSARIAL_NAMES = [TRICKY, "x') or true or ('", "' eq null or '", "a' or 'a' eq 'a", "%27", "a%20b",
                     "&$top=1", "#fragment", "1+1", "null", "back\\slash", "Zoë ✓", "", " ", "''", "(", ")"]


def test_every_adversarial_name_matches_exactly_its_own_row(client):
    for name in ADVERSARIAL_NAMES:
        client.create("Task", {"Name": name})
    for name in ADVERSARIAL_NAMES:
        assert [row["Name"] for row in client.query("Task", filter=eq("Name", name))] == [name], name
        assert client.count("Task", filter=contains("Name", name)) >= 1


def test_create_get_update_delete(sandbox, client):
    created = client.create("Task", {"Name": "write me", "WorkAmount": 1.5})
    key = created["TaskItemId"]
    assert client.get("Task", key)["Name"] == "write me"
    client.update("Task", key, {"IsDone": True})
    assert client.get("Task", key, select=["IsDone"])["IsDone"] is True
    assert client.count("Task", filter=eq("TaskItemId", key)) == 1
    client.delete("Task", key)
    assert sandbox.count("Task") == 0


def test_me_names_the_calling_user(client):
    me = client.me()
    uuid.UUID(me["ContactId"])


def test_rate_limit_carries_retry_after(sandbox, client):
    sandbox.fault(kind="status", status=429, retry_after=7, count=1, path="^Task")
    with pytest.raises(RateLimited) as caught:
        list(client.query("Task"))
    assert caught.value.retry_after == 7 and caught.value.retryable and caught.value.status == 429
    assert list(client.query("Task")) == []  # the fault fired once


def test_service_unavailable_is_a_retryable_server_error(sandbox, client):
    sandbox.fault(kind="status", status=503, count=1, methods=["POST"])
    with pytest.raises(ServerError) as caught:
        client.create("Task", {"Name": "x"})
    assert caught.value.status == 503 and caught.value.retryable and caught.value.unavailable


def test_internal_server_error_on_a_write_is_not_retried_blindly(sandbox, client):
    sandbox.fault(kind="status", status=500, count=1, methods=["POST"])
    with pytest.raises(ServerError) as caught:
        client.create("Task", {"Name": "x"})
    assert caught.value.status == 500 and not caught.value.retryable and not caught.value.unavailable


def test_bad_input_is_an_invalid_request_with_the_odata_error(client):
    with pytest.raises(InvalidRequest) as caught:
        client.create("Task", {"NoSuchField": 1})
    err = caught.value
    assert err.status == 400 and err.odata_code and "NoSuchField" in err.message and not err.retryable


def test_a_missing_entity_is_not_found(client):
    with pytest.raises(NotFound) as caught:
        client.get("Task", uuid.uuid4())
    assert caught.value.status == 404 and not caught.value.retryable


def test_a_wrong_token_is_an_auth_error_that_never_shows_the_token(sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    with Client(sandbox.base_url, SENTINEL) as client:
        with pytest.raises(AuthError) as caught:
            client.me()
        shown = [str(caught.value), repr(caught.value), repr(vars(caught.value)), repr(client),
                 repr(pickle.dumps(caught.value)), *traceback.format_exception(caught.value)]
    assert caught.value.status == 401 and not caught.value.retryable
    assert SENTINEL not in "\n".join(shown)
    assert all(SENTINEL not in r.getMessage() for r in caplog.records)


def test_a_write_committed_without_an_answer_is_an_unknown_outcome(sandbox):
    sandbox.fault(kind="commit_then_hang", hang_s=3, count=1, methods=["POST"], path="^Task")
    with Client(sandbox.base_url, sandbox.token, timeout=(2, 0.5)) as client:
        with pytest.raises(OutcomeUnknown) as caught:
            client.create("Task", {"Name": "landed"})
    assert not caught.value.retryable and caught.value.method == "POST"
    # The caller must look before resending: the write did land.
    wait_until(lambda: sandbox.count("Task", filter="Name eq 'landed'") == 1, timeout=10,
               message="the hung POST's task to exist")


def test_a_dropped_read_is_a_retryable_transport_error(sandbox, client):
    sandbox.fault(kind="drop", count=1, methods=["GET"])
    with pytest.raises(TransportError) as caught:
        list(client.query("Task"))
    assert type(caught.value) is TransportError and caught.value.retryable


def test_a_dropped_write_is_an_unknown_outcome(sandbox, client):
    sandbox.fault(kind="drop", count=1, methods=["POST"])
    with pytest.raises(OutcomeUnknown):
        client.create("Task", {"Name": "maybe"})


def test_a_closed_port_is_a_retryable_transport_error():
    with Client(f"http://127.0.0.1:{free_port()}/api/odata/", SENTINEL) as client:
        with pytest.raises(TransportError) as caught:
            client.create("Task", {"Name": "x"})
    assert type(caught.value) is TransportError and caught.value.retryable


def test_latency_beyond_the_read_timeout_on_a_read_is_retryable(sandbox):
    sandbox.fault(kind="latency", latency_ms=1500, count=1, methods=["GET"])
    with Client(sandbox.base_url, sandbox.token, timeout=(2, 0.3)) as client:
        with pytest.raises(TransportError) as caught:
            list(client.query("Task"))
    assert type(caught.value) is TransportError and caught.value.retryable


def test_bound_actions_and_functions(sandbox, client):
    sandbox.reset(seed="demo")
    key = next(client.query("Task", filter=ne("ProjectId", None), top=1))["TaskItemId"]
    assert client.action("Task", key, "AddNote", {"htmlText": "<p>it's done</p>", "notificationContactIds": []}) is None
    assert [note["HtmlText"] for note in sandbox.notes(key)] == ["<p>it's done</p>"]
    client.action("Task", key, "StartStopwatch")
    assert client.function("Task", key, "GetStopwatch")["TaskItemId"] == key


def test_a_composite_key_reads_and_writes_one_custom_field(sandbox, client):
    sandbox.reset(seed="demo")
    field = next(client.query("CustomField", top=1))
    key = {"Name": field["Name"], "ObjectId": field["ObjectId"]}
    client.update("CustomField", key, {"Value": "it's 50/50"})
    assert client.get("CustomField", key)["Value"] == "it's 50/50"
    assert client.count("CustomField", filter=eq("Value", "it's 50/50")) == 1


def test_a_guid_filter_is_typed_by_the_schema(sandbox, client):
    sandbox.reset(seed="demo")
    project_id = next(client.query("Project", select=["ProjectId"], top=1))["ProjectId"]
    tasks = list(client.query("Task", filter=eq("ProjectId", project_id), select=["ProjectId"]))
    assert tasks and {t["ProjectId"] for t in tasks} == {project_id}
    assert client.count("Task", filter=in_("ProjectId", [project_id, uuid.uuid4()])) == len(tasks)
