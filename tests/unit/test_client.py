"""inloox.Client without a server: settings, the token kept out of sight, keys, argument checks."""
from __future__ import annotations

import copy
import pickle

import pytest

import inloox
from inloox import Client, eq

TOKEN = "ilx_SENTINELsentinelSENTINELsentinel01"
GUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
CLOUD = "https://app.inloox.com/api/odata/"


@pytest.fixture
def client():
    with Client(CLOUD, TOKEN) as client:
        yield client


def test_repr_and_str_hide_the_token(client):
    assert repr(client) == f"<inloox.Client {CLOUD} x-api-key=***>"
    assert TOKEN not in str(client) and TOKEN not in repr(vars(client))


def test_the_client_cannot_be_pickled_or_copied(client):
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy, lambda c: pickle.dumps(c._api_key)):
        with pytest.raises(TypeError) as caught:
            attempt(client)
        assert TOKEN not in str(caught.value)


@pytest.mark.parametrize("token", ["", " ilx_x", "ilx_x\n", "ilx\r\nX-Evil: 1", "ilx_ä", None, 42])
def test_a_malformed_token_is_refused_without_being_echoed(token):
    with pytest.raises(ValueError) as caught:
        Client(CLOUD, token)
    assert str(token) not in str(caught.value) or token in ("", None)


@pytest.mark.parametrize("url, normalized", [
    ("https://app.inloox.com/api/odata", CLOUD),
    ("https://inloox.example.org/api/v1/odata/", "https://inloox.example.org/api/v1/odata/"),
    ("http://127.0.0.1:8090/api/odata/", "http://127.0.0.1:8090/api/odata/"),
])
def test_base_url_gets_its_trailing_slash(url, normalized):
    assert Client(url, TOKEN).base_url == normalized


@pytest.mark.parametrize("url", ["app.inloox.com/api/odata/", "ftp://x/", "https:///api/odata/",
                                 "https://user:pw@host/api/odata/", "https://host/api/odata/?x=1"])
def test_base_url_must_be_a_plain_http_url(url):
    with pytest.raises(ValueError):
        Client(url, TOKEN)


@pytest.mark.parametrize("timeout, pair", [(10, (10.0, 10.0)), (2.5, (2.5, 2.5)), ((3, 60), (3.0, 60.0))])
def test_timeout_is_seconds_or_a_connect_read_pair(timeout, pair):
    assert Client(CLOUD, TOKEN, timeout=timeout).timeout == pair


@pytest.mark.parametrize("timeout", [0, -1, (1,), (1, 2, 3), ("5", 5)])
def test_bad_timeouts_are_refused(timeout):
    with pytest.raises(ValueError):
        Client(CLOUD, TOKEN, timeout=timeout)


def test_default_timeouts_are_bounded(client):
    connect, read = client.timeout
    assert 0 < connect <= 10 and 0 < read <= 60


def test_entity_paths(client):
    assert client.entity_path("Task", GUID) == f"Task({GUID})"
    assert client.entity_path("CustomField", {"Name": "cf_2283e9e4_Label", "ObjectId": GUID}) == \
        f"CustomField(Name='cf_2283e9e4_Label',ObjectId={GUID})"
    assert client.entity_path("NotInTheSchema", GUID) == f"NotInTheSchema({GUID})"


@pytest.mark.parametrize("entity_set, key", [("Task", "1"), ("Task)/x(", GUID), ("CustomField", GUID)])
def test_bad_entity_paths(client, entity_set, key):
    with pytest.raises(ValueError):
        client.entity_path(entity_set, key)


def test_query_checks_its_arguments_before_any_request(client):
    # No server answers at app.inloox.com here: these must fail before sending anything.
    for call in (lambda: client.query("Task", select=["Name, Secret"]),
                 lambda: client.query("Task", orderby="Name; x"),
                 lambda: client.query("Task", top=-1),
                 lambda: client.query("Task", filter=eq("ProjectId", "not-a-guid")),
                 lambda: client.query("Task?x=1"),
                 lambda: client.count("Task", filter=eq("ProjectId", "x"))):
        with pytest.raises(ValueError):
            call()


def test_action_and_function_names_are_checked(client):
    with pytest.raises(ValueError):
        client.action("Task", GUID, "AddNote?x=1")
    with pytest.raises(ValueError):
        client.function("Project", GUID, "CopyProject()")


def test_public_names_are_exported():
    for name in inloox.__all__:
        assert hasattr(inloox, name), name
    assert issubclass(inloox.OutcomeUnknown, inloox.TransportError)


def test_a_closed_client_sends_nothing(client):
    client.close()
    with pytest.raises(inloox.InLooxError, match="closed"):
        client.get("Task", GUID)
