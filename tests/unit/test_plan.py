"""Planning: operations, idempotency keys, deferred step templates and the run policy."""
import dataclasses
import json
import time
from datetime import datetime, timezone

import pytest

from engine import Event, Plan, TemplateError, evaluate, load_texts, plan_rule, render_deferred
from engine.errors import StepSkipped

NOW = datetime(2025, 4, 1, 10, 0, tzinfo=timezone.utc)
TASK_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
PROJECT_ID = "11111111-2222-3333-4444-555555555555"


def ruleset(*rules):
    ruleset = load_texts([("r.yaml", "\n---\n".join(json.dumps(r) for r in rules))])
    assert not ruleset.errors, ruleset.errors[0].format()
    return ruleset


def done_event(**kw):
    entity = {"TaskItemId": TASK_ID, "ProjectId": PROJECT_ID, "WorkAmount": 2, "Name": "Spec"}
    return Event("inloox", "updated", NOW, id="ev1", entity_set="Task", key=TASK_ID,
                 changes={"IsDone": (False, True)}, entity=entity, **kw)


DONE = {"id": "done", "when": [{"inloox": "Task", "changes": {"IsDone": {"to": True}}}],
        "then": [{"id": "book", "inloox.create": "TimeEntry",
                  "values": {"ProjectId": "{{ task.ProjectId }}", "StartDateTime": "{{ now - hours(2) }}",
                             "EndDateTime": "{{ now }}"}},
                 {"inloox.update": "Task", "values": {"Name": "{{ task.Name }} (booked)"}}]}


def test_steps_become_primitive_operations():
    (plan,) = evaluate(done_event(), ruleset(DONE), now=NOW, env={})
    book, rename = plan.operations
    assert (book.verb, book.params) == ("create", {"entity_set": "TimeEntry", "values": {
        "ProjectId": PROJECT_ID, "StartDateTime": "2025-04-01T08:00:00Z", "EndDateTime": "2025-04-01T10:00:00Z"}})
    assert (rename.verb, rename.params) == ("update", {"entity_set": "Task", "key": TASK_ID,
                                                        "values": {"Name": "Spec (booked)"}})


@pytest.fixture
def host_zone(monkeypatch):
    """Sets the process's local time zone (TZ) for one test; the zone in force before is back after it."""
    def set_zone(zone):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
    yield set_zone
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("zone", ["UTC0", "IST-5:30"])
@pytest.mark.parametrize("start", [
    "{{ webhook.body.start | isoformat }}", "{{ webhook.body.start | datetime }}", "{{ now.replace(tzinfo=None) }}",
])
def test_a_date_time_without_an_offset_is_written_on_no_hosts_clock(start, zone, host_zone):
    """The host's time zone is no input of a rule: "2025-03-01T09:00:00" was written as 09:00Z on a
    host in UTC and as 03:30Z on one in India. The rule fails with the reason instead of writing."""
    host_zone(zone)
    rule = {"id": "h", "when": [{"webhook": "h"}],
            "then": [{"inloox.create": "TimeEntry", "values": {"StartDateTime": start}}]}
    event = Event("webhook", "h", NOW, payload={"body": {"start": "2025-03-01T09:00:00"}})
    (plan,) = evaluate(event, ruleset(rule), now=NOW, env={})
    assert "is not a date-time with an offset" in (plan.error or ""), plan.operations[0].params


def test_idempotency_keys_are_deterministic_per_event_rule_version_and_step():
    keys = lambda rs, ev: [op.idempotency_key for p in evaluate(ev, rs, now=NOW, env={}) for op in p.operations]  # noqa: E731
    first = keys(ruleset(DONE), done_event())
    assert first == keys(ruleset(DONE), done_event()) and len(set(first)) == 2
    edited = {**DONE, "description": "edited"}
    assert keys(ruleset(edited), done_event()) != first
    assert keys(ruleset(DONE), Event.from_dict({**done_event().to_dict(), "id": "ev2"})) != first


def test_plan_round_trips_through_json():
    (plan,) = evaluate(done_event(), ruleset(DONE), now=NOW, env={})
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    # to_dict names its fields one by one: one left out would come back as its default.
    assert list(plan.to_dict()) == [f.name for f in dataclasses.fields(Plan) if f.name != "operations"] + ["operations"]


def test_step_outputs_are_deferred_and_rendered_later():
    rule = {"id": "chain", "when": {"webhook": "h"},
            "then": [{"id": "find", "inloox.query": "Task", "filter": "Name eq {{ webhook.body.name | odata }}"},
                     {"inloox.action": "AddNote", "entity": "Task", "key": "{{ steps.find.value[0].TaskItemId }}",
                      "parameters": {"htmlText": "<p>{{ webhook.body.note }}</p>"}}]}
    (plan,) = evaluate(Event("webhook", "h", NOW, payload={"body": {"name": "A", "note": "hi"}}),
                       ruleset(rule), now=NOW, env={})
    find, note = plan.operations
    assert find.params == {"entity_set": "Task", "filter": "Name eq 'A'"}
    assert note.params is None and note.needs == ("find",)
    assert note.deferred == ((("key",), "{{ steps.find.value[0].TaskItemId }}"),)
    plan = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))  # as the worker receives it
    done = render_deferred(plan, plan.operations[1], {"find": {"value": [{"TaskItemId": TASK_ID}]}}, env={})
    assert done.params["key"] == TASK_ID and done.params["parameters"]["htmlText"] == "<p>hi</p>"


def test_deferred_undefined_step_output_is_a_template_error():
    rule = {"id": "chain", "when": {"manual": True},
            "then": [{"id": "t", "inloox.get": "Task", "key": TASK_ID},
                     {"notify": "u", "body": "{{ steps.t.Name }}"}]}
    (plan,) = evaluate(Event("manual", "chain", NOW), ruleset(rule), now=NOW, env={})
    with pytest.raises(TemplateError, match=r"rule chain step 1 \(step1\): steps.t.Name is undefined"):
        render_deferred(plan, plan.operations[1], {"t": {}}, env={})


def test_undefined_variable_fails_that_rule_only():
    broken = {"id": "broken", "when": {"inloox": "Task"},
              "then": [{"notify": "{{ env.MISSING }}", "body": "x"}]}
    plans = {p.rule_id: p for p in evaluate(done_event(), ruleset(DONE, broken), now=NOW, env={})}
    assert plans["done"].error is None
    assert plans["broken"].error == "rule broken step 0 (step0): env.MISSING is undefined in '{{ env.MISSING }}'"
    with pytest.raises(TemplateError) as info:
        plan_rule(done_event(), ruleset(broken).rules["broken"], now=NOW, env={})
    assert info.value.variable == "env.MISSING"


def test_env_is_passed_in_not_read():
    rule = {"id": "n", "when": {"manual": True}, "then": [{"notify": "{{ env.HOOK }}", "body": "x"}]}
    (plan,) = evaluate(Event("manual", "n", NOW), ruleset(rule), now=NOW, env={"HOOK": "https://hooks.test/1"})
    assert plan.operations[0].params["url"] == "https://hooks.test/1"


def test_policy_is_carried_on_the_plan():
    rule = {**DONE, "mode": "shadow", "allow_chained": True, "retry": {"attempts": 2, "backoff": "1m"},
            "concurrency": {"key": "{{ task.ProjectId }}", "limit": 1}, "rate_limit": {"max": 5, "per": "1h"},
            "when": [{**DONE["when"][0], "for": "15m"}]}
    (plan,) = evaluate(done_event(chained=True), ruleset(rule), now=NOW, env={})
    assert (plan.mode, plan.allow_chained, plan.hold_seconds) == ("shadow", True, 900)
    assert plan.retry == {"attempts": 2, "backoff": 60}
    assert plan.concurrency == {"key": f"done:{PROJECT_ID}", "limit": 1}
    assert plan.rate_limit == {"max": 5, "per_seconds": 3600}
    assert plan.planned_at == "2025-04-01T10:00:00Z"


STEP_IF = {"id": "gated", "when": {"chat": "close <task>"},
           "then": [{"id": "found", "inloox.query": "Task", "filter": "Name eq {{ chat.args.task | odata }}"},
                    {"if": {"path": "steps.found.value.0.Name", "op": "eq", "value": "{{ chat.args.task }}"},
                     "inloox.update": "Task", "key": "{{ steps.found.value[0].TaskItemId }}",
                     "values": {"IsDone": True}}]}


def test_a_step_if_is_checked_when_the_step_is_about_to_run():
    event = Event("chat", "close", NOW, payload={"text": "Spec"})
    (plan,) = evaluate(event, ruleset(STEP_IF), now=NOW, env={})
    plan = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))  # as the worker receives it
    assert plan.bindings == {"chat": {"text": "Spec", "args": {"task": "Spec"}}}
    update = plan.operations[1]
    assert update.params is None and update.condition is not None
    found = {"value": [{"Name": "Spec", "TaskItemId": TASK_ID}]}
    assert render_deferred(plan, update, {"found": found}, env={}).params["key"] == TASK_ID
    with pytest.raises(StepSkipped, match=r"rule gated step 1 \(step1\): skipped: then\[1\]\.if: steps.found.value"):
        render_deferred(plan, update, {"found": {"value": []}}, env={})


def test_a_skipped_step_stops_an_executor_that_only_knows_template_errors():
    assert issubclass(StepSkipped, TemplateError)
