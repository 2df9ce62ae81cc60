"""`$filter` → SQL: literals only ever travel as parameters, and no input can make SQLite fail."""
from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings, strategies as st

from sandbox.errors import BadRequest
from sandbox.filters import compile_filter

COLUMNS = {"Name": "Edm.String", "IsDone": "Edm.Boolean", "TaskItemId": "Edm.Guid",
           "EndDateTime": "Edm.DateTimeOffset", "WorkAmount": "Edm.Double", "Recurrence": "Edm.Int32"}


@pytest.fixture(scope="module")
def db():
    conn = sqlite3.connect(":memory:")
    conn.execute('CREATE TABLE t ("Name" TEXT, "IsDone" INTEGER, "TaskItemId" TEXT, "EndDateTime" TEXT,'
                 ' "WorkAmount" REAL, "Recurrence" INTEGER)')
    conn.execute("INSERT INTO t VALUES ('a''b', 1, '3fa85f64-5717-4562-b3fc-2c963f66afa6',"
                 " '2025-04-01T09:00:00.000Z', 1.5, 2)")
    return conn


def test_string_literals_become_parameters():
    sql, params = compile_filter("Name eq 'O''Brien) or (1 eq 1'", COLUMNS)
    assert sql == 'unlikely(("Name" = ?))' and params == ["O'Brien) or (1 eq 1"]


def test_each_and_term_stays_a_separate_condition():
    sql, params = compile_filter("IsDone eq true and (Recurrence eq 1 or Recurrence eq 2)", COLUMNS)
    assert sql == 'unlikely(("IsDone" = ?)) AND unlikely((("Recurrence" = ?) OR ("Recurrence" = ?)))'
    assert params == [1, 1, 2]


@pytest.mark.parametrize("text, params", [
    ("TaskItemId eq 3FA85F64-5717-4562-B3FC-2C963F66AFA6", ["3fa85f64-5717-4562-b3fc-2c963f66afa6"]),
    ("EndDateTime gt 2025-04-01T11:00:00+02:00", ["2025-04-01T09:00:00.000Z"]),
    ("EndDateTime lt 2025-04-01", ["2025-04-01T00:00:00.000Z"]),
    ("IsDone eq false", [0]),
    ("WorkAmount ge 2", [2]),
])
def test_literals_are_converted_to_the_stored_form(text, params):
    assert compile_filter(text, COLUMNS)[1] == params


@pytest.mark.parametrize("text, mentions", [
    ("Nope eq 1", "Nope"), ("IsDone eq 'yes'", "IsDone"), ("TaskItemId eq 'x'", "TaskItemId"),
    ("Name eq", "$filter"), ("(Name eq 'a'", "$filter"), ("WorkAmount add 1 eq 2", "$filter"),
    ("contains(Name)", "contains"), ("Name eq 1", "Name"),
])
def test_bad_filters_raise_bad_request_naming_the_problem(text, mentions):
    with pytest.raises(BadRequest) as caught:
        compile_filter(text, COLUMNS)
    assert mentions in caught.value.message


@pytest.mark.parametrize("text, matches", [
    ("contains(Name,'b') eq true", 1), ("contains(Name,'b') eq false", 0),
    ("contains(Name,'z') eq false", 1), ("contains(Name,'z') ne true", 1),
    ("startswith(Name,'a') ne false", 1), ("endswith(Name,'b') eq true", 1),
    ("false eq endswith(Name,'b')", 0), ("IsDone eq (Recurrence gt 1)", 1),
    ("(contains(Name,'a') and IsDone) eq true", 1),
])
def test_boolean_functions_compare_with_booleans_as_in_odata_4_01(db, text, matches):
    sql, params = compile_filter(text, COLUMNS)
    assert db.execute(f"SELECT COUNT(*) FROM t WHERE {sql}", params).fetchone()[0] == matches


@pytest.mark.parametrize("text", [
    "not " * 3000 + "IsDone", " or ".join(["IsDone"] * 3000), " and ".join(["IsDone"] * 3000),
    "length(" * 500 + "Name" + ")" * 500 + " eq 1",
])
def test_filters_nested_past_the_limit_are_a_bad_request(text):
    with pytest.raises(BadRequest) as caught:
        compile_filter(text, COLUMNS)
    assert "nests deeper than" in caught.value.message


def test_a_long_in_list_is_not_nesting():
    values = ", ".join(str(i) for i in range(3000))
    assert len(compile_filter(f"Recurrence in ({values})", COLUMNS)[1]) == 3000


_ATOMS = st.sampled_from([
    "Name", "IsDone", "TaskItemId", "EndDateTime", "WorkAmount", "Recurrence", "'x'", "'it''s'", "1", "2.5",
    "true", "null", "2025-04-01T09:00:00Z", "2025-04-01", "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "tolower(Name)", "length(Name)", "contains(Name,'a')", "startswith(Name,'')", "endswith(Name,'b')",
    "contains(Name,'a') eq true", "endswith(Name,'b') ne false",
])
_OPS = st.sampled_from([" eq ", " ne ", " gt ", " ge ", " lt ", " le ", " and ", " or ", " in "])
_FILTERS = st.recursive(
    _ATOMS,
    lambda inner: st.one_of(
        st.tuples(inner, _OPS, inner).map("".join),
        inner.map(lambda s: f"not ({s})"), inner.map(lambda s: f"({s})"),
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_FILTERS, st.text(max_size=40)))
def test_any_text_compiles_to_runnable_sql_or_a_bad_request(db, text):
    try:
        sql, params = compile_filter(text, COLUMNS)
    except BadRequest:
        return
    db.execute(f"SELECT COUNT(*) FROM t WHERE {sql}", params).fetchone()
