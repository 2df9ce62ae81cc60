"""Sandbox resource paths and EDM value checks."""
from __future__ import annotations

import pytest

from inloox.metadata import load_metadata
from sandbox import edm
from sandbox.errors import BadRequest, NotFound
from sandbox.paths import parse_path

METADATA = load_metadata()
GUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


@pytest.mark.parametrize("path, key, operation", [
    ("Task", None, None),
    (f"Task({GUID})", {"TaskItemId": GUID}, None),
    (f"Task(TaskItemId={GUID.upper()})", {"TaskItemId": GUID}, None),
    (f"Task({GUID})/Default.AddNote", {"TaskItemId": GUID}, "AddNote"),
    (f"Task({GUID})/StopStopwatch", {"TaskItemId": GUID}, "StopStopwatch"),
    ("UserInfo/Me()", None, "Me"),
    (f"CustomField(Name='cf_2283e9e4_It''s, odd)',ObjectId={GUID})",
     {"Name": "cf_2283e9e4_It's, odd)", "ObjectId": GUID}, None),
    ("FeatureFlagInfo('beta')", {"Key": "beta"}, None),
])
def test_paths_name_set_key_and_operation(path, key, operation):
    resource = parse_path(METADATA, path)
    assert resource.key == key and resource.operation == operation


def test_count_segment():
    assert parse_path(METADATA, "Task/$count").count


@pytest.mark.parametrize("path, error", [
    ("Nope", NotFound), ("Task(nope)", BadRequest), (f"CustomField({GUID})", BadRequest),
    (f"Task({GUID}", BadRequest), ("Task(Other=1)", BadRequest),
])
def test_bad_paths(path, error):
    with pytest.raises(error):
        parse_path(METADATA, path)


@pytest.mark.parametrize("edm_type, value, stored", [
    ("Edm.Guid", GUID.upper(), GUID),
    ("Edm.DateTimeOffset", "2025-04-01T11:00:00.1234+02:00", "2025-04-01T09:00:00.123Z"),
    ("Edm.Boolean", True, 1),
    ("Edm.Int32", 5, 5),
    ("Edm.Double", 2, 2.0),
    ("Collection(Edm.Guid)", [GUID], f'["{GUID}"]'),
])
def test_values_are_stored_in_canonical_form(edm_type, value, stored):
    prop = type("P", (), {"name": "X", "type": edm_type, "nullable": True})()
    assert edm.to_sql(prop, value) == stored


@pytest.mark.parametrize("edm_type, value", [
    ("Edm.Guid", "nope"), ("Edm.Boolean", "yes"), ("Edm.Boolean", 1), ("Edm.Int32", True),
    ("Edm.Int32", 2**40), ("Edm.Int32", "3"), ("Edm.String", 3), ("Edm.DateTimeOffset", "soon"),
    ("Edm.Binary", "!!"),
])
def test_wrong_types_are_rejected_naming_the_property(edm_type, value):
    prop = type("P", (), {"name": "Field", "type": edm_type, "nullable": True})()
    with pytest.raises(BadRequest) as caught:
        edm.to_sql(prop, value)
    assert "Field" in caught.value.message
