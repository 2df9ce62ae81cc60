"""Hostile input to the sandbox: every body, query and admin call a fuzzer found is a 4xx naming the
problem in the OData error shape, never a 500, and leaves the sandbox answering."""
from __future__ import annotations

import socket

import pytest
import requests

LONE_SURROGATE = '{"Name": "\\ud800"}'  # legal JSON text; no UTF-8 can carry the string it means


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.fixture
def task(sandbox):
    project = sandbox.post("Project", {"Name": "Apollo"}).json()
    return sandbox.post("Task", {"Name": "kept", "ProjectId": project["ProjectId"]}).json()


def send(sandbox, method: str, path: str, body: str | bytes) -> requests.Response:
    return sandbox.session.request(method, sandbox.base_url + path, data=body, timeout=30,
                                   headers={"Content-Type": "application/json"})


def assert_refused(response: requests.Response, *mentions: str, status: int = 400) -> dict:
    """The response is an OData error with `status` whose message names each of `mentions`."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == "BadRequest"
    for mention in mentions:
        assert mention in error["message"], error["message"]
    return error


def test_a_patch_holding_a_lone_surrogate_is_refused_and_changes_nothing(sandbox, task):
    path = f"Task({task['TaskItemId']})"
    error = assert_refused(send(sandbox, "PATCH", path, LONE_SURROGATE), "lone surrogate", "\\ud800")
    assert error["target"] == "Name"
    assert sandbox.get(path).json()["Name"] == "kept"


@pytest.mark.parametrize("method, path, body", [
    ("POST", "Task", LONE_SURROGATE),
    ("POST", "Task", '{"Name": "ok", "\\udc00": 1}'),  # in a property name
    ("PUT", "Task({task})", '{"Name": "a\\ud83d"}'),  # an emoji cut in half
    ("POST", "Task({task})/AddNote", '{"htmlText": "\\udfff"}'),
    ("POST", "Task({task})/AddNote", '{"htmlText": "x", "notificationContactIds": ["\\ud800"]}'),
])
def test_a_lone_surrogate_in_any_body_is_refused(sandbox, task, method, path, body):
    response = send(sandbox, method, path.format(task=task["TaskItemId"]), body)
    assert_refused(response, "lone surrogate")
    assert sandbox.count("Task") == 1 and sandbox.notes() == []


def test_a_surrogate_written_as_raw_bytes_is_not_utf8(sandbox, task):
    response = send(sandbox, "PATCH", f"Task({task['TaskItemId']})", b'{"Name": "\xed\xa0\x80"}')
    assert_refused(response, "not UTF-8", "0xed", "offset 10")


@pytest.mark.parametrize("levels", [1_000, 30_000])
@pytest.mark.parametrize("method, path, wrap", [
    ("PATCH", "Task({task})", '{{"Name": {}}}'),
    ("POST", "Task", "{}"),
    ("POST", "Task({task})/AddNote", '{{"htmlText": "x", "notificationContactIds": {}}}'),
])
def test_deeply_nested_bodies_are_refused(sandbox, task, levels, method, path, wrap):
    response = send(sandbox, method, path.format(task=task["TaskItemId"]), wrap.format(deep(levels)))
    assert_refused(response, "nests deeper than")
    assert sandbox.requests()[-1]["status"] == 400  # and the request log still prints
    assert sandbox.get(f"Task({task['TaskItemId']})").json()["Name"] == "kept"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(sandbox, task, constant):
    response = send(sandbox, "PATCH", f"Task({task['TaskItemId']})", f'{{"WorkAmount": {constant}}}')
    assert_refused(response, constant, "not valid JSON")


def test_a_number_too_large_for_a_double_is_refused(sandbox, task):
    # JSON has no limit on numbers; 1e400 would be stored as infinity and answered as `Infinity`.
    response = send(sandbox, "PATCH", f"Task({task['TaskItemId']})", '{"WorkAmount": 1e400}')
    assert_refused(response, "WorkAmount")
    assert sandbox.get(f"Task({task['TaskItemId']})").json()["WorkAmount"] == 0


@pytest.mark.parametrize("path, body", [
    ("users", '{"token": "\\ud800", "first": "Ann", "last": "Other"}'),
    ("users", '{"token": "t", "first": "\\ud800", "last": "Other"}'),
    ("faults", '{"kind": "status", "status": 503, "path": "\\ud800"}'),
    ("faults", '{"kind": "commit_then_hang", "hang_s": Infinity}'),
    ("faults", deep(30_000)),
    ("reset", '{"seed": "\\ud800"}'),
])
def test_hostile_admin_bodies_are_refused_and_the_sandbox_keeps_answering(sandbox, task, path, body):
    response = requests.post(sandbox.admin_url + path, data=body, timeout=30)
    assert_refused(response)
    assert sandbox.get("Task").status_code == 200
    assert sandbox.faults() == []


def test_an_unknown_seed_is_refused_before_anything_is_cleared(sandbox, task):
    response = requests.post(sandbox.admin_url + "reset", json={"seed": "bogus"}, timeout=10)
    assert_refused(response, "bogus")
    assert sandbox.count("Task") == 1 and sandbox.get("UserInfo/Me()").status_code == 200


@pytest.mark.parametrize("params, mentions", [
    ({"$skiptoken": deep(30_000)}, "$skiptoken"),
    ({"$skiptoken": "[{}]"}, "$skiptoken"),
    ({"$skiptoken": '["\\ud800"]'}, "$skiptoken"),
    ({"$top": "²"}, "$top"),
    ({"$skip": "9" * 30}, "$skip"),
    ({"$top": "9" * 5000}, "$top"),
    ({"$filter": "Recurrence eq " + "9" * 30}, "Recurrence"),
    ({"$filter": "not " * 3000 + "IsDone"}, "$filter"),
    ({"$filter": " and ".join(["IsDone"] * 3000)}, "$filter"),
])
def test_hostile_query_options_are_refused(sandbox, task, params, mentions):
    assert_refused(sandbox.get("Task", **params), mentions)


def raw_get(sandbox, target: bytes) -> tuple[int, bytes]:
    """GET `target` sent byte for byte (clients percent-encode what this must send raw)."""
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=10) as conn:
        conn.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"x-api-key: " + sandbox.token.encode() + b"\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("target", [b"/api/odata/Task?$filter=Name%20eq%20'\xff'", b"/api/odata/Task(\xc3\xa9)"])
def test_raw_non_ascii_in_the_uri_is_refused_before_the_app(sandbox, target):
    # Waitress answers these itself, so the app only ever sees ASCII paths and query strings.
    status, body = raw_get(sandbox, target)
    assert status == 400 and b"Bad URI" in body
