"""Snapshot diffs: what changed between two reads of an entity."""
from engine import diff_snapshots


def test_changed_fields_only():
    old = {"Name": "a", "IsDone": False, "WorkAmount": 2}
    new = {"Name": "a", "IsDone": True, "WorkAmount": 2.0}
    assert diff_snapshots(old, new) == {"IsDone": (False, True)}


def test_fields_limit_the_comparison():
    assert diff_snapshots({"a": 1, "b": 1}, {"a": 2, "b": 2}, fields=["b"]) == {"b": (1, 2)}


def test_created_and_deleted():
    assert diff_snapshots(None, {"a": 1}) == {"a": (None, 1)}
    assert diff_snapshots({"a": 1}, None) == {"a": (1, None)}


def test_same_instant_in_two_notations_is_no_change():
    assert diff_snapshots({"d": "2025-04-01T09:00:00Z"}, {"d": "2025-04-01T11:00:00+02:00"}) == {}
    assert diff_snapshots({"d": "2025-04-01T09:00:00Z"}, {"d": "2025-04-01T09:00:01Z"}) != {}


def test_true_is_not_one():
    # Python's True == 1: a field read as 1 and then as true (a custom field's type changed) did change,
    # and a rule watching it must see that change.
    assert diff_snapshots({"f": 1}, {"f": True}) == {"f": (1, True)}
    assert diff_snapshots({"f": False}, {"f": 0}) == {"f": (False, 0)}
    assert diff_snapshots({"f": [1, 0]}, {"f": [True, False]}) == {"f": ([1, 0], [True, False])}
    assert diff_snapshots({"f": {"a": 1}}, {"f": {"a": True}}) == {"f": ({"a": 1}, {"a": True})}
    assert diff_snapshots({"f": [1, {"a": True}]}, {"f": [1.0, {"a": True}]}) == {}
