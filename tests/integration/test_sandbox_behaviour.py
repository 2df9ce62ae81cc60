"""InLoox behaviours of the sandbox: change stamps on Dynamic views, cascades, stopwatch, notes,
custom fields, UserInfo/Me() and the demo seed."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from sandbox.seed import ME_ID, seed_id


@pytest.fixture
def project(sandbox):
    return sandbox.post("Project", {"Name": "Apollo"}).json()


def test_me_returns_the_token_s_user(sandbox):
    response = sandbox.get("UserInfo/Me()")
    assert response.status_code == 200
    [me] = response.json()["value"]
    assert me["ContactId"] == ME_ID and me["DisplayName"] == "Alex Meyer"
    assert sandbox.get("UserInfo/Default.Me()").json()["value"] == [me]


def test_a_new_project_gets_a_number_and_stamps(sandbox, project):
    assert project["Number"].endswith("_0001") and project["CreatedByContactId"] == ME_ID
    assert project["LastChangedDateTime"] == project["CreatedDateTime"] and project["ChangedByContactId"] == ME_ID
    later = sandbox.patch(f"Project({project['ProjectId']})", {"Name": "Apollo 2"}).json()
    assert later["LastChangedDateTime"] > project["LastChangedDateTime"]
    assert later["CreatedDateTime"] == project["CreatedDateTime"]


def test_a_task_defaults_to_the_caller_and_derives_done_date(sandbox, project):
    task = sandbox.post("Task", {"Name": "t", "ProjectId": project["ProjectId"]}).json()
    assert task["GroupId"] == ME_ID and task["CreatedByContactId"] == ME_ID and task["IsDone"] is False
    uuid.UUID(task["TaskItemId"])
    done = sandbox.patch(f"Task({task['TaskItemId']})", {"IsDone": True}).json()
    assert done["DoneDate"] is not None


def test_patching_a_task_moves_its_dynamic_row_stamps(sandbox, project):
    task = sandbox.post("Task", {"Name": "watch me", "ProjectId": project["ProjectId"]}).json()
    path = f"DynamicTaskItem({task['TaskItemId']})"
    before = sandbox.get(path).json()
    assert before["TaskItem_Name"] == "watch me" and before["Project_Name"] == "Apollo"
    assert before["TaskItem_ChangedByContactId"] == ME_ID and before["TaskItem_UpdatedAt"].endswith("Z")
    sandbox.patch(f"Task({task['TaskItemId']})", {"Name": "watched"})
    after = sandbox.get(path).json()
    assert after["TaskItem_Name"] == "watched"
    assert after["TaskItem_UpdatedAt"] > before["TaskItem_UpdatedAt"]
    assert after["TaskItem_ChangedDate"] > before["TaskItem_ChangedDate"]
    assert after["TaskItem_CreatedAt"] == before["TaskItem_CreatedAt"]
    changed = sandbox.get("DynamicTaskItem", **{"$filter": f"TaskItem_UpdatedAt gt {before['TaskItem_UpdatedAt']}"})
    assert [r["TaskItem_TaskItemId"] for r in changed.json()["value"]] == [task["TaskItemId"]]


def test_writes_in_quick_succession_get_strictly_increasing_stamps(sandbox):
    stamps = []
    for i in range(30):
        task = sandbox.post("Task", {"Name": f"t{i}"}).json()
        stamps.append(sandbox.get(f"DynamicTaskItem({task['TaskItemId']})").json()["TaskItem_UpdatedAt"])
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_dynamic_task_item_shows_status_name(sandbox, project):
    status = sandbox.post("TaskStatus", {"Name": "Review", "ProjectId": project["ProjectId"]}).json()
    task = sandbox.post("Task", {"Name": "t", "ProjectId": project["ProjectId"],
                                 "TaskItemStatusId": status["TaskItemStatusId"]}).json()
    row = sandbox.get("DynamicTaskItem", **{"$filter": "TaskItem_TaskItemStatusName eq 'Review'"}).json()["value"]
    assert [r["TaskItem_TaskItemId"] for r in row] == [task["TaskItemId"]]


def test_time_entry_duration_and_project_are_derived(sandbox, project):
    task = sandbox.post("Task", {"Name": "t", "ProjectId": project["ProjectId"]}).json()
    entry = sandbox.post("TimeEntry", {"TaskItemId": task["TaskItemId"], "StartDateTime": "2025-04-01T09:00:00Z",
                                       "EndDateTime": "2025-04-01T10:30:00Z"}).json()
    assert entry["DurationMinutes"] == 90 and entry["ProjectId"] == project["ProjectId"]
    assert entry["PerformedByContactId"] == ME_ID
    entry = sandbox.patch(f"TimeEntry({entry['TimeEntryId']})", {"EndDateTime": "2025-04-01T09:15:00Z"}).json()
    assert entry["DurationMinutes"] == 15
    dynamic = sandbox.get(f"DynamicTimeEntry({entry['TimeEntryId']})").json()
    assert dynamic["TimeEntry_DurationHours"] == 0.25 and dynamic["TaskItem_Name"] == "t"


def test_deleting_a_project_deletes_its_children(sandbox, project):
    pid = project["ProjectId"]
    other = sandbox.post("Project", {"Name": "Other"}).json()["ProjectId"]
    task = sandbox.post("Task", {"Name": "t", "ProjectId": pid}).json()
    sandbox.post("Task", {"Name": "keep", "ProjectId": other})
    sandbox.post("TaskStatus", {"Name": "Done", "ProjectId": pid})
    sandbox.post("TimeEntry", {"ProjectId": pid, "TaskItemId": task["TaskItemId"]})
    budget = sandbox.post("Budget", {"ProjectId": pid}).json()
    sandbox.post("LineItem", {"BudgetId": budget["BudgetId"]})
    sandbox.post(f"Task({task['TaskItemId']})/AddNote", {"htmlText": "<p>n</p>"})
    assert sandbox.delete(f"Project({pid})").status_code == 204
    for set_name in ("Task", "TaskStatus", "TimeEntry", "Budget", "LineItem"):
        assert sandbox.count(set_name, f"ProjectId eq {pid}") == 0, set_name
    assert sandbox.count("Task") == 1 and sandbox.notes() == []


def test_stopwatch_start_stop_books_a_time_entry(sandbox, project):
    task = sandbox.post("Task", {"Name": "timed", "ProjectId": project["ProjectId"]}).json()
    started = sandbox.post(f"Task({task['TaskItemId']})/Default.StartStopwatch")
    assert started.status_code == 200 and started.json()["TaskItemId"] == task["TaskItemId"]
    watch = sandbox.get("UserStopwatch").json()["value"][0]
    # Pretend it has run for 25 minutes, without sleeping.
    sandbox.patch(f"UserStopwatch({watch['UserStopwatchId']})",
                  {"StartedAt": "2025-04-01T09:00:00Z", "InitiallyStartedAt": "2025-04-01T09:00:00Z",
                   "ElapsedSeconds": 0})
    sandbox.patch(f"UserStopwatch({watch['UserStopwatchId']})", {"PausedAt": "2025-04-01T09:25:00Z",
                                                                 "ElapsedSeconds": 1500})
    stopped = sandbox.post(f"Task({task['TaskItemId']})/StopStopwatch")
    assert stopped.status_code == 200 and stopped.json()["ElapsedSeconds"] == 1500
    [entry] = sandbox.get("TimeEntry").json()["value"]
    assert entry["TaskItemId"] == task["TaskItemId"] and entry["ProjectId"] == project["ProjectId"]
    assert entry["DurationMinutes"] == 25 and entry["DisplayName"] == "timed"
    assert sandbox.count("UserStopwatch") == 0


@pytest.mark.parametrize("operation, method", [
    ("StartStopwatch", "POST"), ("Default.GetStopwatch()", "GET"), ("PauseStopwatch", "POST"), ("StopStopwatch", "POST"),
])
def test_stopwatch_operations_answer_with_a_user_stopwatch_context(sandbox, project, operation, method):
    task = sandbox.post("Task", {"Name": "timed", "ProjectId": project["ProjectId"]}).json()
    if operation != "StartStopwatch":
        sandbox.post(f"Task({task['TaskItemId']})/StartStopwatch")
    response = sandbox.session.request(method, f"{sandbox.base_url}Task({task['TaskItemId']})/{operation}", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["@odata.context"] == f"{sandbox.base_url}$metadata#UserStopwatch/$entity"
    assert response.json()["TaskItemId"] == task["TaskItemId"]


def test_starting_a_second_stopwatch_pauses_the_first(sandbox, project):
    first, second = (sandbox.post("Task", {"Name": n, "ProjectId": project["ProjectId"]}).json() for n in "ab")
    sandbox.post(f"Task({first['TaskItemId']})/StartStopwatch")
    sandbox.post(f"Task({second['TaskItemId']})/StartStopwatch")
    running = sandbox.get("UserStopwatch", **{"$filter": "PausedAt eq null"}).json()["value"]
    assert [w["TaskItemId"] for w in running] == [second["TaskItemId"]]


def test_stopwatches_are_per_user(sandbox, project):
    # "Only one stopwatch runs per user": a colleague starting theirs pauses nothing of ours, and
    # each of two people timing one task has a watch of their own, booked as their own time entry.
    sandbox.add_user("ann-token", "Ann", "Other")
    as_ann = sandbox.as_user("ann-token")
    mine, hers = (sandbox.post("Task", {"Name": n, "ProjectId": project["ProjectId"]}).json() for n in "ab")
    assert sandbox.post(f"Task({mine['TaskItemId']})/StartStopwatch").status_code == 200
    assert as_ann.post(f"{sandbox.base_url}Task({hers['TaskItemId']})/StartStopwatch", timeout=10).status_code == 200
    assert sandbox.get(f"Task({mine['TaskItemId']})/GetStopwatch()").json()["PausedAt"] is None
    ann_on_mine = as_ann.post(f"{sandbox.base_url}Task({mine['TaskItemId']})/StartStopwatch", timeout=10).json()
    ours = sandbox.get(f"Task({mine['TaskItemId']})/GetStopwatch()").json()
    assert ours["PausedAt"] is None and ann_on_mine["UserStopwatchId"] != ours["UserStopwatchId"]
    assert as_ann.get(f"{sandbox.base_url}Task({hers['TaskItemId']})/GetStopwatch()", timeout=10).json()["PausedAt"]
    assert sandbox.post(f"Task({hers['TaskItemId']})/StopStopwatch").status_code == 400  # not ours to stop
    assert sandbox.post(f"Task({mine['TaskItemId']})/StopStopwatch").status_code == 200
    [entry] = sandbox.get("TimeEntry").json()["value"]
    assert entry["PerformedByContactId"] == ME_ID
    assert as_ann.get(f"{sandbox.base_url}Task({mine['TaskItemId']})/GetStopwatch()", timeout=10).json()["PausedAt"] is None


def test_add_note_is_stored_for_task_project_and_time_entry(sandbox, project):
    task = sandbox.post("Task", {"Name": "t", "ProjectId": project["ProjectId"]}).json()
    entry = sandbox.post("TimeEntry", {"ProjectId": project["ProjectId"]}).json()
    body = {"htmlText": "<p>Hello</p>", "notificationContactIds": [ME_ID]}
    for path in (f"Task({task['TaskItemId']})/Default.AddNote", f"Task({task['TaskItemId']})/AddNote",
                 f"Project({project['ProjectId']})/AddNote", f"TimeEntry({entry['TimeEntryId']})/Default.AddNote"):
        assert sandbox.post(path, body).status_code == 204, path
    notes = sandbox.notes(task["TaskItemId"])
    assert len(notes) == 2 and notes[0]["HtmlText"] == "<p>Hello</p>" and notes[0]["EntitySet"] == "Task"
    assert notes[0]["NotificationContactIds"] == [ME_ID] and len(sandbox.notes()) == 4
    assert sandbox.get(f"DynamicTaskItem({task['TaskItemId']})").json()["TaskItem_NotesCount"] == 2
    assert sandbox.post(f"Task({task['TaskItemId']})/AddNote", {"htmlText": 3}).status_code == 400
    assert sandbox.post(f"Task({uuid.uuid4()})/AddNote", body).status_code == 404


def test_custom_field_composite_key_round_trip_and_dynamic_column(sandbox, project):
    pid = project["ProjectId"]
    created = sandbox.post("CustomField", {"Name": "cf_2283e9e4_Label", "ObjectId": pid, "Value": "first"})
    assert created.status_code == 201
    path = f"CustomField(Name='cf_2283e9e4_Label',ObjectId={pid})"
    assert sandbox.get(path).json()["Value"] == "first"
    before = sandbox.get(f"DynamicProject({pid})").json()
    assert before["Project_cf_2283e9e4_Label"] == "first"
    assert sandbox.patch(path, {"Value": "second"}).status_code == 200
    after = sandbox.get(f"DynamicProject({pid})").json()
    assert after["Project_cf_2283e9e4_Label"] == "second" and after["Project_UpdatedAt"] > before["Project_UpdatedAt"]
    hits = sandbox.get("DynamicProject", **{"$filter": "Project_cf_2283e9e4_Label eq 'second'"}).json()["value"]
    assert [h["Project_ProjectId"] for h in hits] == [pid]
    assert sandbox.delete(path).status_code == 204
    assert sandbox.get(path).status_code == 404
    assert "Project_cf_2283e9e4_Label" not in sandbox.get(f"DynamicProject({pid})").json()


def test_demo_seed_is_a_believable_account(sandbox):
    sandbox.reset(seed="demo")
    assert sandbox.count("UserInfo") == 5 and sandbox.count("Project") == 3
    assert sandbox.count("Task") == 30 and sandbox.count("TaskStatus") == 12
    assert sandbox.count("Task", "IsDone eq true") > 0 and sandbox.count("TimeEntry") > 0
    assert sandbox.count("DynamicTaskItem", "TaskItem_IsOverdue eq true") > 0
    relaunch = sandbox.get(f"DynamicProject({seed_id('project', 'Website Relaunch')})").json()
    assert relaunch["Project_Number"] == "2026_0001" and relaunch["Project_cf_2283e9e4_Budget"] == "25000"
    mockups = sandbox.get(f"Task({seed_id('task', 'Website Relaunch', 'Design mockups')})").json()
    assert mockups["Name"] == "Design mockups" and mockups["WorkAmount"] > 0 and mockups["ContactDisplayName"]
    assert sandbox.get("UserInfo/Me()").json()["value"][0]["ContactId"] == ME_ID


def test_a_created_entity_s_location_is_its_url(sandbox):
    response = sandbox.post("CustomField", {"Name": "cf_2283e9e4_It's", "ObjectId": ME_ID, "Value": "v"})
    assert response.status_code == 201 and response.headers["OData-Version"] == "4.0"
    assert sandbox.session.get(response.headers["Location"]).json()["Value"] == "v"


def test_concurrent_writes_get_distinct_ordered_stamps(sandbox):
    def write(n):
        session = requests.Session()
        session.headers["x-api-key"] = sandbox.token
        return [session.post(sandbox.base_url + "Task", json={"Name": f"{n}-{i}"}).status_code for i in range(25)]
    with ThreadPoolExecutor(8) as pool:
        statuses = [s for batch in pool.map(write, range(8)) for s in batch]
    assert statuses == [201] * 200
    stamps = [r["TaskItem_UpdatedAt"] for r in walk_all(sandbox, "DynamicTaskItem?$select=TaskItem_UpdatedAt")]
    assert len(stamps) == 200 and len(set(stamps)) == 200


def walk_all(sandbox, path: str) -> list[dict]:
    page = sandbox.session.get(sandbox.base_url + path).json()
    rows = page["value"]
    while "@odata.nextLink" in page:
        page = sandbox.session.get(page["@odata.nextLink"]).json()
        rows += page["value"]
    return rows


def test_another_person_s_token_writes_as_that_person(sandbox, project):
    ann = sandbox.add_user("ann-token", "Ann", "Other")
    task = sandbox.post("Task", {"Name": "shared", "ProjectId": project["ProjectId"]}).json()
    as_ann = sandbox.as_user("ann-token")
    [me] = as_ann.get(sandbox.base_url + "UserInfo/Me()", timeout=5).json()["value"]
    assert me["ContactId"] == ann and me["DisplayName"] == "Ann Other"
    assert as_ann.patch(sandbox.base_url + f"Task({task['TaskItemId']})", json={"IsDone": True}, timeout=5).ok
    row = sandbox.get(f"DynamicTaskItem({task['TaskItemId']})").json()
    assert row["TaskItem_ChangedByContactId"] == ann and row["TaskItem_CreatedByContactId"] == ME_ID
    sandbox.reset()
    assert as_ann.get(sandbox.base_url + "Task", timeout=5).status_code == 401
