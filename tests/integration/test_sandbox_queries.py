"""Sandbox reads: paging with nextLink, every $filter operator and literal, $select/$orderby/$top/$skip/$count."""
from __future__ import annotations

import uuid

import pytest
import requests

TRICKY = "O'Brien) or (1 eq 1"
ROWS = [
    # Name, IsDone, WorkAmount, Recurrence, EndDateTime
    ("alpha", False, 1.0, 1, "2025-04-01T09:00:00Z"),
    ("beta", True, 2.5, 2, "2025-04-02T09:00:00Z"),
    ("gamma", False, 4.0, 3, None),
    ("O'Brien", True, 8.0, 4, "2025-04-03T12:30:00.250Z"),
    (TRICKY, False, 0.0, 5, "2025-04-04T00:00:00Z"),
]


@pytest.fixture
def tasks(sandbox):
    """Five tasks with known values; returns name → TaskItemId."""
    ids = {}
    for name, done, work, recurrence, end in ROWS:
        body = {"Name": name, "IsDone": done, "WorkAmount": work, "Recurrence": recurrence, "EndDateTime": end}
        ids[name] = sandbox.post("Task", body).json()["TaskItemId"]
    return ids


def names(sandbox, **params) -> list[str]:
    response = sandbox.get("Task", **params)
    assert response.status_code == 200, response.text
    return sorted(row["Name"] for row in response.json()["value"])


@pytest.mark.parametrize("filter_text, expected", [
    ("Name eq 'beta'", ["beta"]),
    ("Name ne 'beta'", ["O'Brien", TRICKY, "alpha", "gamma"]),
    ("WorkAmount gt 2.5", ["O'Brien", "gamma"]),
    ("WorkAmount ge 2.5", ["O'Brien", "beta", "gamma"]),
    ("Recurrence lt 2", ["alpha"]),
    ("Recurrence le 2", ["alpha", "beta"]),
    ("IsDone eq true", ["O'Brien", "beta"]),
    ("IsDone eq false and Recurrence gt 1", [TRICKY, "gamma"]),
    ("IsDone or Recurrence eq 1", ["O'Brien", "alpha", "beta"]),
    ("not (IsDone eq true)", [TRICKY, "alpha", "gamma"]),
    ("(Recurrence eq 1 or Recurrence eq 2) and not IsDone", ["alpha"]),
    ("EndDateTime eq null", ["gamma"]),
    ("EndDateTime ne null and EndDateTime lt 2025-04-02T09:00:00Z", ["alpha"]),
    ("EndDateTime gt 2025-04-03T12:30:00.249Z", ["O'Brien", TRICKY]),
    ("EndDateTime ge 2025-04-03T14:30:00.250+02:00", ["O'Brien", TRICKY]),
    ("EndDateTime lt 2025-04-02", ["alpha"]),
    ("Name eq 'O''Brien'", ["O'Brien"]),
    ("Name eq 'O''Brien) or (1 eq 1'", [TRICKY]),
    ("contains(Name, 'amm')", ["gamma"]),
    ("contains(Name, '''')", ["O'Brien", TRICKY]),
    ("startswith(Name, 'al')", ["alpha"]),
    ("endswith(Name, 'ta')", ["beta"]),
    # OData 4.01 lets a boolean function be compared with a boolean; SAP's client always writes it so.
    ("contains(Name, 'amm') eq true", ["gamma"]),
    ("contains(Name, 'a') eq false", ["O'Brien", TRICKY]),
    ("startswith(Name, 'al') ne true", ["O'Brien", TRICKY, "beta", "gamma"]),
    ("endswith(Name, 'ta') ne false", ["beta"]),
    ("true eq startswith(Name, 'be')", ["beta"]),
    ("contains(Name, 'a') eq true and IsDone eq (Recurrence gt 1)", ["alpha", "beta"]),
    ("tolower(Name) eq 'o''brien'", ["O'Brien"]),
    ("Recurrence in (1, 3)", ["alpha", "gamma"]),
    ("WorkAmount eq 0", [TRICKY]),
])
def test_filter_operators_and_literals(sandbox, tasks, filter_text, expected):
    assert names(sandbox, **{"$filter": filter_text}) == sorted(expected)
    assert sandbox.count("Task", filter_text) == len(expected)


def test_guid_literals_are_unquoted_and_case_insensitive(sandbox, tasks):
    key = tasks["beta"]
    assert names(sandbox, **{"$filter": f"TaskItemId eq {key.upper()}"}) == ["beta"]
    assert names(sandbox, **{"$filter": f"TaskItemId ne {key} and ProjectId eq null"}) == sorted(set(tasks) - {"beta"})


@pytest.mark.parametrize("filter_text, mentions", [
    ("TaskItemId eq '{beta}'", "GUID unquoted"),
    ("ProjectId in ('{beta}', '{beta}')", "GUID unquoted"),
    ("EndDateTime lt '2025-04-02T09:00:00Z'", "date-time unquoted"),
    ("EndDateTime lt 2025-04-02T09:00:00", "with its offset"),
])
def test_quoted_guids_and_date_times_without_offset_are_400(sandbox, tasks, filter_text, mentions):
    # InLoox (ASP.NET Core OData) refuses a GUID or date-time compared as a string, and a date-time
    # that names no offset: a filter the sandbox took would pass tests and fail against InLoox.
    text = filter_text.format(beta=tasks["beta"])
    for response in (sandbox.get("Task", **{"$filter": text}), sandbox.get("Task/$count", **{"$filter": text})):
        assert response.status_code == 400, response.text
        assert mentions in response.json()["error"]["message"]


def test_a_value_that_looks_like_filter_syntax_injects_nothing(sandbox, tasks):
    for attempt in ["x') or 1=1 --", "'; DROP TABLE Task; --", TRICKY]:
        escaped = attempt.replace("'", "''")
        rows = sandbox.get("Task", **{"$filter": f"Name eq '{escaped}'"}).json()["value"]
        assert [row["Name"] for row in rows] == ([TRICKY] if attempt == TRICKY else [])
    assert sandbox.count("Task") == 5


def test_paging_250_rows_follows_next_links_100_100_50(sandbox):
    for i in range(250):
        sandbox.post("Task", {"Name": f"task {i:03}", "Recurrence": i % 2})
    first = sandbox.get("Task").json()
    assert len(first["value"]) == 100
    second = sandbox.session.get(first["@odata.nextLink"]).json()
    assert len(second["value"]) == 100
    third = sandbox.session.get(second["@odata.nextLink"]).json()
    assert len(third["value"]) == 50 and "@odata.nextLink" not in third
    assert first["@odata.nextLink"].startswith(sandbox.base_url + "Task?")
    seen = [r["TaskItemId"] for page in (first, second, third) for r in page["value"]]
    assert len(set(seen)) == 250


def test_next_links_keep_the_filter_and_order(sandbox):
    for i in range(230):
        sandbox.post("Task", {"Name": f"task {i:03}", "Recurrence": i % 2})
    params = {"$filter": "Recurrence eq 1", "$orderby": "Name desc"}
    page = sandbox.get("Task", **params).json()
    names_seen = [r["Name"] for r in page["value"]]
    assert len(names_seen) == 100 and "filter" in page["@odata.nextLink"]
    page = sandbox.session.get(page["@odata.nextLink"]).json()
    names_seen += [r["Name"] for r in page["value"]]
    assert len(names_seen) == 115 and "@odata.nextLink" not in page
    assert names_seen == sorted((f"task {i:03}" for i in range(230) if i % 2), reverse=True)


def test_top_beyond_a_page_is_honoured_across_next_links(sandbox):
    for i in range(150):
        sandbox.post("Task", {"Name": f"t{i:03}"})
    page = sandbox.get("Task", **{"$top": "120"}).json()
    rest = sandbox.session.get(page["@odata.nextLink"]).json()
    assert len(page["value"]) == 100 and len(rest["value"]) == 20 and "@odata.nextLink" not in rest


def test_select_orderby_two_keys_top_skip(sandbox, tasks):
    rows = sandbox.get("Task", **{"$select": "Name,IsDone", "$orderby": "IsDone desc,Name asc",
                                  "$top": "3", "$skip": "1"}).json()["value"]
    assert rows == [{"Name": "beta", "IsDone": True}, {"Name": TRICKY, "IsDone": False},
                    {"Name": "alpha", "IsDone": False}]


def test_count_segment_is_plain_text_and_honours_the_filter(sandbox, tasks):
    response = sandbox.get("Task/$count", **{"$filter": "IsDone eq true"})
    assert response.status_code == 200 and response.text == "2"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert sandbox.get("Task", **{"$count": "true", "$top": "1"}).json()["@odata.count"] == 5


def test_a_single_entity_is_the_bare_object_with_its_context(sandbox, tasks):
    body = sandbox.get(f"Task({tasks['beta']})").json()
    assert body["Name"] == "beta" and body["@odata.context"] == f"{sandbox.base_url}$metadata#Task/$entity"
    listing = sandbox.get("Task").json()
    assert listing["@odata.context"] == f"{sandbox.base_url}$metadata#Task"


@pytest.mark.parametrize("path", ["Task", "Task({beta})", "Task/$count", "$metadata", "", "UserInfo/Me()"])
def test_head_answers_like_get_without_a_body(sandbox, tasks, path):
    url = sandbox.base_url + path.format(beta=tasks["beta"])
    got, head = sandbox.session.get(url, timeout=10), sandbox.session.head(url, timeout=10)
    assert got.status_code == 200 and head.status_code == 200, head.headers
    assert head.content == b"" and head.headers["Content-Type"] == got.headers["Content-Type"]
    assert head.headers["Content-Length"] == got.headers["Content-Length"]


def test_head_is_refused_where_get_is(sandbox):
    assert sandbox.session.head(sandbox.base_url + "NoSuchSet", timeout=10).status_code == 404
    assert requests.head(sandbox.base_url + "Task", timeout=10).status_code == 401


def test_metadata_is_inloox_s_own_edmx(sandbox):
    response = sandbox.get("$metadata")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/xml")
    assert b"InLoox.PM.Domain.Model.Aggregates.Api" in response.content


def test_patch_with_return_minimal_answers_204(sandbox, tasks):
    response = sandbox.patch(f"Task({tasks['alpha']})", {"IsDone": True}, headers={"Prefer": "return=minimal"})
    assert response.status_code == 204
    assert sandbox.get(f"Task({tasks['alpha']})").json()["IsDone"] is True


BAD_INPUT = [
    ("POST", "Task", {"NoSuchField": 1}, 400, "NoSuchField"),
    ("POST", "Task", {"IsDone": "yes"}, 400, "IsDone"),
    ("POST", "Task", {"ProjectId": "not-a-guid"}, 400, "ProjectId"),
    ("POST", "Task", {"WorkAmount": "3"}, 400, "WorkAmount"),
    ("POST", "Task", {"StartDateTime": "tomorrow"}, 400, "StartDateTime"),
    # InLoox's OData reader wants the offset ("the time zone information is missing"); no guessing UTC.
    ("POST", "Task", {"StartDateTime": "2025-04-01T09:00:00"}, 400, "with its offset"),
    ("POST", "Task", {"IsDone": None}, 400, "IsDone"),
    ("POST", "Task", "not json", 400, "JSON"),
    ("POST", "Task", ["a list"], 400, "JSON object"),
    ("GET", "Task?$filter=Name eq", None, 400, "$filter"),
    ("GET", "Task?$filter=NoSuchField eq 1", None, 400, "NoSuchField"),
    ("GET", "Task?$filter=IsDone eq 'yes'", None, 400, "IsDone"),
    ("GET", "Task?$filter=TaskItemId eq 'x'", None, 400, "TaskItemId"),
    ("GET", "Task?$select=Nope", None, 400, "Nope"),
    ("GET", "Task?$orderby=Name sideways", None, 400, "$orderby"),
    ("GET", "Task?$top=-1", None, 400, "$top"),
    ("GET", "Task?$expand=Project", None, 400, "$expand"),
    ("GET", "Task(not-a-guid)", None, 400, "TaskItemId"),
    ("GET", "Task(1)", None, 400, "TaskItemId"),
    ("GET", "NoSuchSet", None, 404, "NoSuchSet"),
    ("POST", "DynamicTaskItem", {"TaskItem_Name": "x"}, 405, "DynamicTaskItem"),
    ("GET", "Project(00000000-0000-0000-0000-000000000001)/Default.CopyProject()", None, 501, "CopyProject"),
    ("POST", "Project(00000000-0000-0000-0000-000000000001)/ApproveRequest", None, 501, "ApproveRequest"),
    ("POST", "Project(00000000-0000-0000-0000-000000000001)/Default.CopyProject", None, 405, "GET"),
    ("POST", "UserInfo/Me()", None, 405, "GET"),
    ("POST", "Task(00000000-0000-0000-0000-000000000001)/Default.NoSuchAction", None, 404, "NoSuchAction"),
]


@pytest.mark.parametrize("method, path, body, status, mentions", BAD_INPUT)
def test_bad_input_is_an_odata_error_naming_the_problem(sandbox, method, path, body, status, mentions):
    data = body if isinstance(body, str) else None
    response = sandbox.session.request(method, sandbox.base_url + path, json=None if data else body,
                                       data=data, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and mentions in error["message"]
    assert sandbox.count("Task") == 0  # nothing half-written


def test_a_rejected_patch_changes_nothing(sandbox, tasks):
    response = sandbox.patch(f"Task({tasks['alpha']})", {"Name": "changed", "IsDone": "yes"})
    assert response.status_code == 400
    assert sandbox.get(f"Task({tasks['alpha']})").json()["Name"] == "alpha"


def test_missing_entities_are_404(sandbox):
    missing = uuid.uuid4()
    assert sandbox.get(f"Task({missing})").status_code == 404
    assert sandbox.patch(f"Task({missing})", {"Name": "x"}).status_code == 404
    assert sandbox.delete(f"Task({missing})").status_code == 404


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong-token"}])
def test_a_missing_or_wrong_token_is_401(sandbox, headers):
    response = requests.get(sandbox.base_url + "Task", headers=headers, timeout=5)
    assert response.status_code == 401 and response.json()["error"]["code"] == "Unauthorized"
    assert requests.post(sandbox.base_url + "Task", json={}, headers=headers, timeout=5).status_code == 401
    assert sandbox.count("Task") == 0


def walk(sandbox, set_name: str, **params) -> list[dict]:
    """Every row of a query, following nextLinks."""
    page = sandbox.get(set_name, **params).json()
    rows = page["value"]
    while "@odata.nextLink" in page:
        page = sandbox.session.get(page["@odata.nextLink"]).json()
        rows += page["value"]
    return rows


@pytest.mark.parametrize("orderby", ["EndDateTime", "EndDateTime desc", "EndDateTime desc,Name", "TaskItemId desc"])
def test_paging_through_ties_and_nulls_loses_and_repeats_nothing(sandbox, orderby):
    ends = [None, "2025-04-01T09:00:00Z", "2025-04-02T09:00:00Z", "2025-04-03T09:00:00Z"]
    for i in range(230):
        sandbox.post("Task", {"Name": f"t{i:03}", "EndDateTime": ends[i % 4]})
    rows = walk(sandbox, "Task", **{"$orderby": orderby, "$select": "Name,EndDateTime,TaskItemId"})
    assert len({r["TaskItemId"] for r in rows}) == 230
    column, _, direction = orderby.split(",")[0].partition(" ")
    values = [r[column] or "" for r in rows]
    assert values == sorted(values, reverse=direction == "desc")


def test_a_frozen_clock_stamps_every_write_alike_until_thawed(sandbox):
    """A bulk UPDATE at InLoox stamps its rows alike: frozen, the sandbox's writes share one change time."""
    before = sandbox.post("Task", {"Name": "before"}).json()["TaskItemId"]
    sandbox.freeze_clock()
    bulk = [sandbox.post("Task", {"Name": f"bulk {i}"}).json()["TaskItemId"] for i in range(3)]
    sandbox.freeze_clock(False)
    after = sandbox.post("Task", {"Name": "after"}).json()["TaskItemId"]

    stamps = {row["TaskItem_TaskItemId"]: row["TaskItem_UpdatedAt"]
              for row in walk(sandbox, "DynamicTaskItem", **{"$select": "TaskItem_TaskItemId,TaskItem_UpdatedAt"})}
    assert len({stamps[t] for t in bulk}) == 1
    assert stamps[before] < stamps[bulk[0]] < stamps[after]


def test_a_compound_keyset_pages_through_a_run_of_one_change_time_on_a_skip_paging_sandbox(sandbox):
    """(stamp eq X and key gt K) or stamp gt X, ordered by stamp then key: each next page of a run that shares one
    change time, asked for after the last row read, whatever the server's own paging."""
    sandbox.paging("skip")
    sandbox.freeze_clock()
    for i in range(150):
        sandbox.post("Task", {"Name": f"bulk {i}"})
    sandbox.freeze_clock(False)
    sandbox.post("Task", {"Name": "after"})
    order = {"$orderby": "TaskItem_UpdatedAt,TaskItem_TaskItemId",
             "$select": "TaskItem_TaskItemId,TaskItem_UpdatedAt"}
    first = sandbox.get("DynamicTaskItem", **order).json()["value"]
    stamp, key = first[-1]["TaskItem_UpdatedAt"], first[-1]["TaskItem_TaskItemId"]
    after = f"(TaskItem_UpdatedAt eq {stamp} and TaskItem_TaskItemId gt {key}) or TaskItem_UpdatedAt gt {stamp}"
    rest = walk(sandbox, "DynamicTaskItem", **order, **{"$filter": after})
    assert len(first) == 100 and len(rest) == 51
    assert len({r["TaskItem_TaskItemId"] for r in first + rest}) == 151
    assert [r["TaskItem_TaskItemId"] for r in rest[:50]] == sorted(r["TaskItem_TaskItemId"] for r in rest[:50])
