"""A rule's template may not take a process's CPU or memory (engine/template_limits.py).

Rule files come from the people a workspace belongs to, and one web or worker process serves many
workspaces: each template here stopped, or would have stopped, the process that loaded or rendered
it, for every workspace. Now each is that one step's TemplateError, at once, naming the limit.
"""
from __future__ import annotations

import time

import pytest

from engine import TemplateError
from engine.rules import load_texts
from engine.template_limits import MAX_SIZE, MAX_STEPS
from engine.templates import compile_template, render

HOSTILE = {
    "a power folded while the rule loads": ("{{ 7 ** (10 ** 8) }}", "larger than a template may make"),
    "text repeated": ('{{ "x" * 10 ** 10 }}', "repeating 1 characters or items 10,000,000,000 times"),
    "nested loops": ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
                     f"more than {MAX_STEPS:,} steps"),
    "a macro calling itself twice": ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}"
                                     "{% endmacro %}{{ f(40) }}", f"more than {MAX_STEPS:,} steps"),
    "a long separator": ('{{ range(100000) | join("x" * 100000) }}', "this join"),
    "a separator over a generator": ('{{ range(100000) | map("string") | join("x" * 1000) }}', "this join"),
    "a filter's width": ('{{ "a" | center(10 ** 9) }}', "a width of 1,000,000,000"),
    "a method's width": ('{{ "a".ljust(10 ** 9) }}', "str.ljust"),
    "a format's width": ('{{ "{:>999999999}".format(1) }}', "the format"),
    "a printf width": ('{{ "%0999999999d" % 1 }}', "the format"),
    "a printf width in a filter": ('{{ "%0999999999d" | format(1) }}', "the format"),
    "text doubled in a loop": ('{% set ns = namespace(s="xx") %}{% for i in range(40) %}'
                               '{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}', "made a value of"),
    "a long text out of a loop": ('{% for i in range(100000) %}{{ "y" * 100 }}{% endfor %}',
                                  f"text grew past {MAX_SIZE:,} characters"),
    "slices by the million": ("{{ [1] | slice(10 ** 8) | list | length }}", "a width of 100,000,000"),
    "lorem ipsum": ("{{ lipsum(10 ** 6) }}", "lipsum is undefined"),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("source, complaint", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_template_past_a_limit_is_its_steps_error_at_once(source, complaint):
    started = time.monotonic()
    with pytest.raises(TemplateError, match=complaint) as caught:
        render(compile_template(source), {}, rule_id="hostile", step="then[0].body")
    assert time.monotonic() - started < 5  # bounded work, not a performance figure: these ran for hours
    assert caught.value.rule_id == "hostile" and caught.value.step == "then[0].body"


@pytest.mark.timeout(20)
def test_a_rule_file_whose_template_holds_a_huge_power_loads_at_once():
    """Jinja folded `7 ** (10 ** 8)` into a constant while compiling, in C, holding the GIL: the web
    checking an uploaded bundle stopped answering every workspace's requests."""
    rule = ('id: power\nwhen:\n  - manual: true\nthen:\n  - notify: "json://example.com/x"\n'
            '    body: "{{ 7 ** (10 ** 8) }}"\n')
    ruleset = load_texts([("power.yaml", rule)])
    assert "power" in ruleset.rules


@pytest.mark.parametrize("source, expected", [
    ("{{ 2 ** 10 }}", 1024),
    ("{{ task.WorkAmount * 60 }}", 120),
    ('{{ "a" + "b" }}', "ab"),
    ('{{ "%.2f" % 1.5 }}', "1.50"),
    ('{{ "{:>5}".format(1) }}', "    1"),
    ('{{ [1, 2] | join(", ") }}', "1, 2"),
    ('{{ "x" | center(5) }}', "  x  "),
    ('{{ "ab".replace("", "-") }}', "-a-b-"),
    ("{% for i in range(3) %}{{ i }}{% endfor %}", "012"),
    ('{{ ("x" * 100000) | length }}', 100000),
])
def test_what_rules_write_still_renders(source, expected):
    assert render(compile_template(source), {"task": {"WorkAmount": 2}}) == expected


def test_each_render_has_a_budget_of_its_own():
    """A template that spends most of the budget can run again and again: the steps are per render."""
    template = compile_template("{% for i in range(90000) %}{% endfor %}done")
    assert [render(template, {}) for _ in range(3)] == ["done"] * 3
