"""A condition written with the word a person means (`greater_than`, `equals`) is refused with the
operator that says it (`gt`, `eq`), not with one merely spelt alike (`newer_than`)."""
import textwrap

import pytest

from engine import load_texts
from engine.conditions import OPERATORS

RULE = """\
id: r
when: {{manual: true}}
if:
  - {{path: input.n, op: {op}, value: {value}}}
then:
  - notify: x
    body: y
"""


def hint_for(op: str, value: str = "1") -> str:
    [error] = load_texts([("r.yaml", textwrap.dedent(RULE.format(op=op, value=value)))]).errors
    return error.hint


@pytest.mark.parametrize("written,meant", [
    ("greater_than", "gt"), ("greaterThan", "gt"), ("more_than", "gt"), (">", "gt"),
    ("less_than", "lt"), ("lower_than", "lt"), ("<", "lt"),
    ("greater_than_or_equal", "ge"), ("gte", "ge"), ("at_least", "ge"), (">=", "ge"),
    ("less_than_or_equal", "le"), ("lte", "le"), ("at_most", "le"),
    ("equals", "eq"), ("equal", "eq"), ("==", "eq"), ("is", "eq"),
    ("not_equal", "ne"), ("not_equals", "ne"), ("!=", "ne"), ("neq", "ne"),
    ("in_list", "in"), ("one_of", "in"), ("not_in_list", "not_in"), ("none_of", "not_in"),
    ("starts_with", "prefix"), ("ends_with", "suffix"), ("matches", "regex"), ("includes", "contains"),
    ("is_set", "exists"),
])
def test_an_operator_word_suggests_the_operator_it_means(written, meant):
    assert hint_for(f"'{written}'") == f"did you mean {meant!r}?"


def test_a_misspelt_operator_still_gets_the_one_spelt_alike():
    assert hint_for("exits", "true") == "did you mean 'exists'?"


def test_every_meaning_names_a_registered_operator_and_no_word_means_two():
    meanings = [(word, op.name) for op in OPERATORS.values() for word in op.synonyms]
    assert len({word for word, _ in meanings}) == len(meanings)
    assert not {word for word, _ in meanings} & set(OPERATORS)
