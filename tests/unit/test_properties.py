"""Property tests: operators agree with Python, diffs are exact, the index never loses a match."""
import itertools
import json
from datetime import datetime, timezone

from hypothesis import given, settings, strategies as st

from engine import Event, diff_snapshots, load_texts
from engine.match import match_rule
from tests.unit.test_conditions import reason

NOW = datetime(2025, 4, 1, tzinfo=timezone.utc)
numbers = st.integers(-5, 5)
words = st.text(alphabet="aAbB", max_size=4)
settings.register_profile("unit", max_examples=60, deadline=None)
settings.load_profile("unit")

PYTHON = {"eq": lambda v, o: v == o, "ne": lambda v, o: v != o, "lt": lambda v, o: v < o,
          "le": lambda v, o: v <= o, "gt": lambda v, o: v > o, "ge": lambda v, o: v >= o}


def holds(test, value):
    """Whether {path: webhook.body.v, op, value, …} holds; `test` is {op: operand, [ignore_case]}."""
    options = dict(test)
    ignore_case = options.pop("ignore_case", False)
    ((op, operand),) = options.items()
    clause = {"path": "webhook.body.v", "op": op, "value": operand, "ignore_case": ignore_case}
    return reason(clause, {"v": value}) is None


@given(st.sampled_from(sorted(PYTHON)), numbers, numbers)
def test_comparisons_agree_with_python(op, value, operand):
    assert holds({op: operand}, value) == PYTHON[op](value, operand)


@given(numbers, numbers, numbers)
def test_between_is_inclusive_range(value, low, high):
    assert holds({"between": [low, high]}, value) == (low <= value <= high)


@given(words, st.lists(words, max_size=3))
def test_in_and_not_in_are_complements(value, options):
    assert holds({"in": options}, value) != holds({"not_in": options}, value)


@given(words, words)
def test_ignore_case_folds_both_sides(value, operand):
    assert holds({"prefix": operand, "ignore_case": True}, value) == value.casefold().startswith(operand.casefold())
    assert holds({"suffix": operand, "ignore_case": True}, value) == value.casefold().endswith(operand.casefold())


snapshots = st.dictionaries(st.sampled_from(["Name", "IsDone", "WorkAmount", "ProjectId"]),
                            st.one_of(st.none(), st.booleans(), numbers, words), max_size=4)


@given(snapshots)
def test_diff_of_equal_snapshots_is_empty(snapshot):
    assert diff_snapshots(snapshot, dict(snapshot)) == {}


@given(snapshots, snapshots)
def test_diff_applied_to_old_gives_new(old, new):
    changes = diff_snapshots(old, new)
    patched = {**old, **{f: to for f, (_, to) in changes.items()}}
    assert all(patched.get(f) == new.get(f) for f in set(old) | set(new))
    assert all(old.get(f) == frm for f, (frm, _) in changes.items())


KINDS = ["created", "updated", "deleted"]
FIELDS_OF = {"Task": ["Name", "IsDone"], "Project": ["Name", "Priority"]}
SETS, FIELDS = list(FIELDS_OF), ["Name", "IsDone", "Priority", "WorkAmount"]


def _all_trigger_shapes():
    """One rule per trigger shape over a small universe, so every index path is exercised."""
    shapes = []
    for entity_set, kinds in itertools.product(SETS, [["created"], ["updated"], KINDS]):
        shapes.append({"inloox": entity_set, "on": kinds})
        for fields in itertools.chain(itertools.combinations(FIELDS_OF[entity_set], 1), [FIELDS_OF[entity_set]]):
            shapes.append({"inloox": entity_set, "on": kinds, "changes": {f: {} for f in fields}})
        shapes.append({"inloox": entity_set, "on": kinds, "changes": {"Name": {"changed": False}}})
        shapes.append({"inloox": entity_set, "on": kinds, "changes": {"changed": FIELDS_OF[entity_set]}})
    shapes.append([{"inloox": "Task", "on": "created"}, {"inloox": "Project", "changes": {"Name": {}}}])
    shapes += [{"webhook": "a"}, {"chat": "b"}, {"manual": True}]
    return shapes


RULESET = load_texts([("r.yaml", "\n---\n".join(
    json.dumps({"id": f"r{i}", "when": t, "then": [{"notify": "u", "body": "t"}]})
    for i, t in enumerate(_all_trigger_shapes())))])

events = st.builds(
    lambda source, entity_set, kind, fields: Event(
        source, kind if source == "inloox" else {"webhook": "a", "chat": "b", "manual": "r0"}[source], NOW,
        entity_set=entity_set, key="k", changes={f: (0, 1) for f in fields}),
    st.sampled_from(["inloox", "inloox", "webhook", "chat", "manual"]), st.sampled_from(SETS),
    st.sampled_from(KINDS), st.sets(st.sampled_from(FIELDS)))


@given(events)
def test_index_never_drops_a_matching_rule(event):
    assert not RULESET.errors
    candidates = {r.id for r in RULESET.index.candidates(event)}
    matching = {r.id for r in RULESET.rules.values() if match_rule(event, r, now=NOW, env={}).matched}
    assert matching <= candidates
