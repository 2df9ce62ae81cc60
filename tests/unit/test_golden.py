"""Golden files: example rules + a recorded event → the exact plans, checked in and reviewed.

Each `golden/<case>.yaml` (now, env, event) has a `golden/<case>.json` with the plans. After an
intended change, regenerate with `UPDATE_GOLDEN=1 pytest tests/unit/test_golden.py` and review the diff.
"""
import json
import os
from pathlib import Path

import pytest

from engine import Event, evaluate, load_rules
from engine.documents import parse_documents
from engine.edm import parse_datetime

GOLDEN = Path(__file__).parent / "golden"
RULES = Path(__file__).parents[2] / "rules"
CASES = sorted(GOLDEN.glob("*.yaml"))


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_plans_match_golden_file(case):
    (doc,) = parse_documents(case.read_text(), str(case))
    spec = doc.data
    plans = evaluate(Event.from_dict(spec["event"]), load_rules(RULES, strict=True),
                     now=parse_datetime(spec["now"]), env=spec["env"])
    actual = [p.to_dict() for p in plans]
    expected_file = case.with_suffix(".json")
    if os.environ.get("UPDATE_GOLDEN"):
        expected_file.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n")
    assert actual == json.loads(expected_file.read_text())
