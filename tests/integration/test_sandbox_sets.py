"""Every entity set of InLoox's metadata through the sandbox: create, read, filter, patch, delete."""
from __future__ import annotations

import uuid

import pytest

from inloox.metadata import load_metadata

METADATA = load_metadata()
READ_ONLY = {"DynamicTaskItem", "DynamicTimeEntry", "DynamicProject"}
# Properties the sandbox derives or stamps itself, so a read-back differs from what was posted.
DERIVED = {
    "Project": {"CreatedDateTime", "LastChangedDateTime", "ChangedByContactId", "CreatedByName",
                "LastChangedByName", "ProjectStatusName", "StatusLabel", "ProjectStatusProgress",
                "ProjectNumberAndName"},
    "Task": {"ContactDisplayName"},
    "TimeEntry": {"DurationMinutes"},
    "LineItem": {"CreatedDate", "ChangedDate", "ChangedByContactId"},
    "Budget": {"BudgetCreatedDate", "BudgetChangedDate"},
    "Document": {"CreatedAt", "UpdatedAt"},
    "UserStopwatch": {"ProjectName", "ProjectNumber", "TaskItemName"},
}


def sample(prop, salt: str):
    """A valid JSON value for a property of this EDM type."""
    kind = prop.type
    if kind == "Edm.String":
        return f"{prop.name} {salt}"
    if kind == "Edm.Guid":
        return str(uuid.uuid4())
    if kind == "Edm.DateTimeOffset":
        return "2025-04-01T09:00:00Z"
    if kind == "Edm.Boolean":
        return True
    if kind in ("Edm.Int32", "Edm.Int64"):
        return 7
    if kind in ("Edm.Double", "Edm.Single", "Edm.Decimal"):
        return 1.5
    if kind == "Edm.Binary":
        return "AQID"
    if kind == "Collection(Edm.Guid)":
        return [str(uuid.uuid4())]
    if kind == "Collection(Edm.String)":
        return ["a"]
    return "Cloud" if kind.endswith("HostEnvironmentType") else {"Id": 1}


def key_literal(prop, value) -> str:
    if prop.type == "Edm.String":
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def key_path(entity_set, entity) -> str:
    if len(entity_set.key) == 1:
        return f"{entity_set.name}({key_literal(entity_set.properties[entity_set.key[0]], entity[entity_set.key[0]])})"
    parts = ",".join(f"{k}={key_literal(entity_set.properties[k], entity[k])}" for k in entity_set.key)
    return f"{entity_set.name}({parts})"


def patch_target(entity_set):
    """The property to patch: the first plain string, else a number, boolean or GUID."""
    candidates = [p for p in entity_set.properties.values()
                  if p.name not in entity_set.key and p.name not in DERIVED.get(entity_set.name, ())]
    for kind in ("Edm.String", "Edm.Int32", "Edm.Boolean", "Edm.Double", "Edm.Guid"):
        for prop in candidates:
            if prop.type == kind:
                return prop
    raise AssertionError(f"{entity_set.name} has nothing to patch")


def normalised(prop, value):
    if prop.type == "Edm.DateTimeOffset" and value:
        return value.replace(".000Z", "Z")
    return value


@pytest.mark.parametrize("set_name", sorted(METADATA.entity_sets))
def test_every_entity_set_round_trips(sandbox, set_name):
    entity_set = METADATA.entity_sets[set_name]
    body = {name: sample(prop, "it's") for name, prop in entity_set.properties.items()}
    if set_name in READ_ONLY:
        response = sandbox.post(set_name, body)
        assert response.status_code == 405 and set_name in response.json()["error"]["message"]
        assert sandbox.patch(f"{set_name}({uuid.uuid4()})", {}).status_code == 405
        assert sandbox.delete(f"{set_name}({uuid.uuid4()})").status_code == 405
        assert sandbox.get(set_name).status_code == 200
        return

    created = sandbox.post(set_name, body)
    assert created.status_code == 201, created.text
    path = key_path(entity_set, created.json())
    read = sandbox.get(path)
    assert read.status_code == 200, read.text
    assert read.json()["@odata.context"].endswith(f"$metadata#{set_name}/$entity")
    for name, prop in entity_set.properties.items():
        if name not in DERIVED.get(set_name, ()):
            assert normalised(prop, read.json()[name]) == normalised(prop, body[name]), name

    key_filter = " and ".join(f"{k} eq {key_literal(entity_set.properties[k], body[k])}" for k in entity_set.key)
    assert [row[entity_set.key[0]] for row in sandbox.get(set_name, **{"$filter": key_filter}).json()["value"]] \
        == [body[entity_set.key[0]]]

    target = patch_target(entity_set)
    new_value = {"Edm.String": "patched", "Edm.Int32": 42, "Edm.Boolean": False, "Edm.Double": 2.5,
                 "Edm.Guid": str(uuid.uuid4())}[target.type]
    patched = sandbox.patch(path, {target.name: new_value})
    assert patched.status_code == 200, patched.text
    assert sandbox.get(path).json()[target.name] == new_value

    assert sandbox.delete(path).status_code == 204
    missing = sandbox.get(path)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NotFound"
