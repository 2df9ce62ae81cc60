"""Templates: native values, helpers, the sandbox, and errors naming the missing variable."""
from datetime import datetime, timedelta, timezone

import pytest
from jinja2 import TemplateSyntaxError

from engine import TemplateError
from engine.templates import FUNCTIONS, compile_template, is_template, render, unescaped_expressions

NOW = datetime(2025, 4, 1, 10, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("source,context,expected", [
    ("{{ task.WorkAmount * 60 }}", {"task": {"WorkAmount": 1.5}}, 90.0),
    ("{{ task.IsDone }}", {"task": {"IsDone": False}}, False),
    ("{{ items | length }}", {"items": [1, 2]}, 2),
    ("{{ task.Name }} done", {"task": {"Name": "A"}}, "A done"),
    ("{{ now | isoformat }}", {"now": NOW}, "2025-04-01T10:00:00Z"),
    ("{{ now - hours(1.5) }}", {"now": NOW}, NOW - timedelta(minutes=90)),
    ("{{ now + minutes(30) + days(1) }}", {"now": NOW}, NOW + timedelta(days=1, minutes=30)),
    ("{{ datetime('2025-04-01T12:00:00+02:00') | isoformat }}", {}, "2025-04-01T10:00:00Z"),
    ("{{ '2025-04-01T09:00:00Z' | datetime < now }}", {"now": NOW}, True),
    ("{{ x | default('none') }}", {}, "none"),
])
def test_render(source, context, expected):
    assert render(compile_template(source), context) == expected


@pytest.mark.parametrize("source", [
    "{{ datetime(webhook.body.start) }}", "{{ webhook.body.start | datetime }}",
    "{{ webhook.body.start | isoformat }}", "{{ (webhook.body.start | datetime) < now }}",
    "{{ now - datetime(webhook.body.start) }}", "{{ now.replace(tzinfo=None) | isoformat }}",
])
def test_a_date_time_without_an_offset_is_refused(source):
    """A webhook's "2025-03-01T09:00:00" is a time on no clock we know: Python reads it in the host's
    local zone (`| isoformat`) or refuses it beside `now` (a TypeError), so it is not a date-time here."""
    with pytest.raises(TemplateError, match=r"'2025-03-01T09:00:00' is not a date-time with an offset"):
        render(compile_template(source), {"webhook": {"body": {"start": "2025-03-01T09:00:00"}},
                                          "now": datetime(2025, 3, 1, 9, tzinfo=timezone.utc)})


def test_chains_and_step_needs_are_found_statically():
    t = compile_template("{{ task.Name }} {{ steps.find.value[0].Name }} {{ steps['other'] }} {{ now }}")
    assert t.chains == (("task", "Name"), ("steps", "find", "value", "0", "Name"), ("steps", "other"), ("now",))
    assert t.steps == ("find", "other")
    assert t.variables == {"task", "steps", "now"}


def test_undefined_variable_names_rule_step_and_variable():
    with pytest.raises(TemplateError) as info:
        render(compile_template("Hi {{ task.Owner.Name }}"), {"task": {}}, rule_id="r1", step="step 2 (note)")
    assert info.value.variable == "task.Owner"
    assert str(info.value) == "rule r1 step 2 (note): task.Owner is undefined in 'Hi {{ task.Owner.Name }}'"


def test_sandbox_refuses_unsafe_attributes_and_mutation():
    with pytest.raises(TemplateError):
        render(compile_template("{{ task.__class__.__mro__ }}"), {"task": {}})
    with pytest.raises(TemplateError):
        render(compile_template("{{ items.append(3) }}"), {"items": [1]})


def test_syntax_errors_raise_at_compile():
    with pytest.raises(TemplateSyntaxError):
        compile_template("{{ task.Name ")


def test_is_template():
    assert is_template("{{ x }}") and is_template("{% if x %}{% endif %}")
    assert not is_template("plain") and not is_template(3)


def test_every_function_is_documented():
    assert all(f.doc and f.kind in ("global", "filter", "test") for f in FUNCTIONS)


def test_names_the_template_defines_are_not_inputs():
    t = compile_template("{% set n = 2 %}{% for row in steps.q.value %}{{ row.Name }}{{ n }}{% endfor %}")
    assert t.chains == (("steps", "q", "value"),)
    assert render(t, {"steps": {"q": {"value": [{"Name": "a"}, {"Name": "b"}]}}}) == "a2b2"


@pytest.mark.parametrize("source,value,expected", [
    ("{{ x | odata }}", "O'Brien", "'O''Brien'"),
    ("{{ x | odata }}", "3FA85F64-5717-4562-B3FC-2C963F66AFA6", "3fa85f64-5717-4562-b3fc-2c963f66afa6"),
    ("{{ x | odata('Edm.String') }}", "3fa85f64-5717-4562-b3fc-2c963f66afa6", "'3fa85f64-5717-4562-b3fc-2c963f66afa6'"),
    ("{{ x | odata }}", "2025-04-01T11:00:00+02:00", "2025-04-01T09:00:00Z"),
    ("{{ x | odata }}", "2025-04-01", "'2025-04-01'"),
    ("{{ x | odata }}", 2.5, "2.5"), ("{{ x | odata }}", True, "true"), ("{{ x | odata }}", None, "null"),
    ("{{ x | odata }}", "x' or 1 eq 1 or Name eq '", "'x'' or 1 eq 1 or Name eq '''"),
    ("{{ x is guid }}", "3fa85f64-5717-4562-b3fc-2c963f66afa6", True), ("{{ x is guid }}", "spec", False),
])
def test_odata_writes_literals(source, value, expected):
    assert render(compile_template(source), {"x": value}) == expected


def test_odata_refuses_what_has_no_literal():
    with pytest.raises(TemplateError):
        render(compile_template("{{ x | odata }}"), {"x": {"a": 1}})


@pytest.mark.parametrize("source,unescaped", [
    ("ProjectId eq {{ task.ProjectId | odata }}", []),
    ("Name eq '{{ name }}'", ["{{ name }}"]),
    ("A eq {{ a | odata }} and B eq {{ b | lower }}", ["{{ b | lower }}"]),
    ("A eq {{ (a | odata) ~ ' or 1 eq 1' }}", ["{{ (a | odata) ~ ' or 1 eq 1' }}"]),
    ("{% filter replace(\"''\", \"'\") %}A eq {{ a | odata }}{% endfilter %}", ["{{ a | odata }}"]),
    ("{% if a is guid %}K eq {{ a | odata }}{% endif %}", []),
    ("IsDone eq false", []),
])
def test_unescaped_expressions_in_a_filter_are_found(source, unescaped):
    assert unescaped_expressions(source) == unescaped


_PATH_CONTEXTS = [
    {"task": {"Name": "Write", "ProjectId": None, "Tags": ["a"], "items": "a key named like a method"}},
    {"task": {"Name": {"nested": [1, 2]}}},
    {"task": {}},  # missing: Jinja's error, naming the chain
    {"task": None},
    {"task": ["not", "a", "dict"]},
    {"webhook": {"body": {"task": {"Name": "deep"}}}},
    {},
]


@pytest.mark.parametrize("source", ["{{ task.Name }}", '{{ task["Name"] }}', "{{ task.ProjectId }}", "{{ task.Tags }}",
                                    "{{ task.items }}", "{{ task }}", "{{ webhook.body.task.Name }}", "{{ now }}",
                                    "{{- task.Name -}}", "{{ task.Name.nested }}"])
@pytest.mark.parametrize("context", _PATH_CONTEXTS, ids=range(len(_PATH_CONTEXTS)))
def test_a_template_that_only_reads_a_path_renders_as_jinja_renders_it(source, context):
    """`{{ task.Name }}` is read straight from the context's dicts when it can be; Jinja decides the rest.
    Both must give the same value, or the same error."""
    from engine.templates import Template, _ENV
    fast = compile_template(source)
    expression = _ENV.compile_expression(source.strip()[2:-2].strip("-"), undefined_to_none=False)
    jinja = Template(source, fast.chains, lambda ctx: expression(**ctx), fast.counted)

    def outcome(template):
        try:
            value = render(template, {"now": datetime(2025, 4, 1, tzinfo=timezone.utc), **context})
            return "value", repr(value)
        except TemplateError as exc:
            return "error", str(exc)
    assert outcome(fast) == outcome(jinja)


def test_an_index_past_a_list_says_how_long_the_list_is():
    # A query that found nothing: "steps.project.value.0 is undefined" alone left the reader to guess why.
    with pytest.raises(TemplateError) as info:
        render(compile_template("{{ steps.project.value[0].ProjectId }}"), {"steps": {"project": {"value": []}}})
    assert str(info.value) == ("steps.project.value.0 is undefined in '{{ steps.project.value[0].ProjectId }}': "
                               "steps.project.value is an empty list (did its query find nothing?)")
    assert info.value.variable == "steps.project.value.0"
    with pytest.raises(TemplateError, match=r"in '\{\{ rows\[2\] \}\}': rows has 2 item\(s\)$"):
        render(compile_template("{{ rows[2] }}"), {"rows": [1, 2]})
