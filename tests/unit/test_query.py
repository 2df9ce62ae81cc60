"""inloox.query: literals, `$filter` expressions, keys and options, none of which rule data can break out of."""
from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from inloox.metadata import load_metadata
from inloox.query import (
    and_, contains, endswith, eq, function_arguments, ge, gt, identifier, in_, key_predicate, le, literal,
    lt, ne, not_, or_, orderby_option, raw, render_filter, select_option, startswith, top_option,
)

GUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
SCHEMA = load_metadata()
TASK = SCHEMA.entity_set("Task")


@pytest.mark.parametrize("value, text", [
    (None, "null"), (True, "true"), (False, "false"), (0, "0"), (-42, "-42"), (1.5, "1.5"),
    (1e20, "1e+20"), (Decimal("12.50"), "12.50"), (Decimal("1E+2"), "100"),
    (uuid.UUID(GUID), GUID), ("plain", "'plain'"), ("O'Brien", "'O''Brien'"), ("", "''"),
    (datetime(2025, 4, 1, 9, 0, tzinfo=timezone.utc), "2025-04-01T09:00:00Z"),
    (datetime(2025, 4, 1, 11, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2))), "2025-04-01T09:00:00.250000Z"),
    (date(2025, 4, 1), "2025-04-01"),
])
def test_literal_by_python_type(value, text):
    assert literal(value) == text


@pytest.mark.parametrize("value", [float("nan"), float("inf"), Decimal("NaN"), datetime(2025, 4, 1)])
def test_values_without_a_literal_are_refused(value):
    with pytest.raises(ValueError):
        literal(value)


def test_unknown_types_are_refused():
    with pytest.raises(TypeError):
        literal(object())


@pytest.mark.parametrize("value", [GUID, GUID.upper(), uuid.UUID(GUID)])
def test_guid_typed_literal_is_unquoted_and_lowercase(value):
    assert literal(value, "Edm.Guid") == GUID


@pytest.mark.parametrize("value", [
    "not-a-guid", GUID + " or 1 eq 1", "{" + GUID + "}", GUID.replace("-", ""), "urn:uuid:" + GUID,
    "3fa85f6457174562b3fc2c963f66afa6----", 42,
])
def test_guid_typed_literal_refuses_anything_else(value):
    with pytest.raises(ValueError):
        literal(value, "Edm.Guid")


@pytest.mark.parametrize("value", ["2025-04-01T11:00:00+02:00", "2025-04-01T09:00:00Z",
                                   datetime(2025, 4, 1, 9, tzinfo=timezone.utc)])
def test_datetimeoffset_typed_literal_is_utc_and_unquoted(value):
    assert literal(value, "Edm.DateTimeOffset") == "2025-04-01T09:00:00Z"


@pytest.mark.parametrize("value, expected", [
    ("2025-04-01T11:00:00.1234567+02:00", "2025-04-01T09:00:00.1234567Z"),
    ("2025-04-01T09:00:00.9999999Z", "2025-04-01T09:00:00.9999999Z"),
    ("2025-04-01T09:00:00.0000001Z", "2025-04-01T09:00:00.0000001Z"),
    ("2025-04-01T09:00:00.123Z", "2025-04-01T09:00:00.123000Z"),
])
def test_a_datetimeoffset_string_keeps_its_digits_past_the_microsecond(value, expected):
    """A .NET server's change time in 100 ns ticks, compared `eq` in a poll's keyset, must name that instant."""
    assert literal(value, "Edm.DateTimeOffset") == expected


@pytest.mark.parametrize("value", ["2025-04-01T09:00:00", "yesterday", "2025-04-01T09:00:00Z) or (1 eq 1",
                                   "2025-04-01T09:00:00.1234567", "2025-04-01T09:00:00.1234567Z) or (1 eq 1"])
def test_datetimeoffset_typed_literal_needs_an_aware_iso_time(value):
    with pytest.raises(ValueError):
        literal(value, "Edm.DateTimeOffset")


def test_injection_attempt_stays_inside_one_string_literal():
    assert render_filter(eq("Name", "O'Brien) or (1 eq 1")) == "Name eq 'O''Brien) or (1 eq 1'"


@given(st.text())
def test_any_string_round_trips_through_its_literal(text):
    quoted = literal(text)
    assert quoted[0] == quoted[-1] == "'"
    inner = quoted[1:-1]
    # Every quote inside is doubled, so the literal cannot end early.
    assert inner.replace("''", "") .count("'") == 0
    assert inner.replace("''", "'") == text


def test_filter_typed_by_the_schema():
    expr = and_(eq("ProjectId", GUID), ge("StartDateTime", "2025-04-01T11:00:00+02:00"), eq("IsDone", False),
                eq("Name", GUID))
    assert render_filter(expr, TASK) == (
        f"(ProjectId eq {GUID}) and (StartDateTime ge 2025-04-01T09:00:00Z) and (IsDone eq false) "
        f"and (Name eq '{GUID}')")


def test_guid_field_refuses_injection_when_typed():
    with pytest.raises(ValueError):
        render_filter(eq("ProjectId", f"{GUID} or true"), TASK)


def test_untyped_strings_stay_strings():
    assert render_filter(eq("ProjectId", GUID)) == f"ProjectId eq '{GUID}'"


def test_every_operator_and_combinator():
    expr = or_(ne("A", 1), gt("B", 2), lt("C", 3), le("D", None), not_(contains("E", "x'y")),
               startswith("F", "a"), endswith("G", "z"), in_("H", [1, 2]))
    assert render_filter(expr) == (
        "(A ne 1) or (B gt 2) or (C lt 3) or (D le null) or (not (contains(E,'x''y'))) "
        "or (startswith(F,'a')) or (endswith(G,'z')) or (H in (1,2))")


def test_a_single_part_is_not_wrapped():
    assert render_filter(and_(eq("A", 1))) == "A eq 1"


def test_raw_is_verbatim_and_only_by_name():
    assert render_filter(and_(raw("year(StartDateTime) eq 2025"), eq("IsDone", True))) == \
        "(year(StartDateTime) eq 2025) and (IsDone eq true)"


@pytest.mark.parametrize("name", ["Name eq 1 or Name", "Name)", "1Name", "", "Na me", "Name/x", None, "Ä"])
def test_field_names_must_be_identifiers(name):
    with pytest.raises(ValueError):
        eq(name, 1)


def test_combinators_take_only_filters():
    with pytest.raises(TypeError):
        and_(eq("A", 1), "B eq 2")
    with pytest.raises(TypeError):
        render_filter("Name eq 'x'")
    with pytest.raises(ValueError):
        or_()
    with pytest.raises(ValueError):
        in_("A", [])
    with pytest.raises(TypeError):
        contains("A", 5)


def test_keys():
    assert key_predicate(GUID, TASK) == GUID
    assert key_predicate(uuid.UUID(GUID), None) == GUID
    custom_field = SCHEMA.entity_set("CustomField")
    key = {"ObjectId": GUID, "Name": "cf_2283e9e4_Label"}
    assert key_predicate(key, custom_field) == f"Name='cf_2283e9e4_Label',ObjectId={GUID}"


def test_string_keys_are_escaped_for_the_path():
    key = {"Name": "a'b /c?d#e", "ObjectId": GUID}
    assert key_predicate(key, SCHEMA.entity_set("CustomField")) == f"Name='a''b%20%2Fc%3Fd%23e',ObjectId={GUID}"


@pytest.mark.parametrize("key, entity_set", [
    ("12", TASK), (None, TASK), (f"{GUID})/Delete(", TASK), (GUID, SCHEMA.entity_set("CustomField")),
    ({"Name": "x"}, SCHEMA.entity_set("CustomField")),
    ({"Name": "x", "ObjectId": "nope"}, SCHEMA.entity_set("CustomField")),
    ("not-a-guid", None), ({"bad name": 1}, None),
])
def test_bad_keys_are_refused(key, entity_set):
    with pytest.raises(ValueError):
        key_predicate(key, entity_set)


def test_options():
    assert select_option(["Name", "IsDone"]) == "Name,IsDone"
    assert select_option("Name") == "Name"
    assert orderby_option(["Name desc", "StartDateTime"]) == "Name desc,StartDateTime"
    assert top_option(0) == "0" and top_option(None) is None
    for bad in (lambda: select_option(["Name,Secret"]), lambda: orderby_option("Name; drop"),
                lambda: top_option(-1), lambda: top_option(True), lambda: top_option("5"),
                lambda: identifier("$filter")):
        with pytest.raises(ValueError):
            bad()


def test_function_arguments_are_typed_by_the_operation():
    operation = SCHEMA.operation("Contact", "ContactSingle", collection=True)
    assert function_arguments({"contactId": GUID}, operation.parameters) == f"contactId={GUID}"
    assert function_arguments({"email": "a'b@x"}) == "email='a''b%40x'"
    with pytest.raises(ValueError):
        function_arguments({"contactId": "nope"}, operation.parameters)
