"""Micro-benchmark: µs per non-matching event against 10, 1,000 and 10,000 rules.

    .venv/bin/python bench/bench_match.py

Two events per size: one whose changed field no rule watches (index lookup only), and one whose
field some rules watch but whose conditions fail (index + trigger + condition checks).

One run (when/if/then syntax, 2025): an event on an unwatched field costs 0.9 µs with 10, 1,000 or
10,000 rules; one whose field 605 of 10,000 rules watch costs ~9 ms (their conditions run).
"""
from __future__ import annotations

import json
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import Event, evaluate, load_texts  # noqa: E402

NOW = datetime(2025, 4, 1, tzinfo=timezone.utc)
WATCHED = {"Task": ["Name", "IsDone", "WorkAmount", "ContactId", "EndDateTime", "TaskItemStatusId"],
           "Project": ["Name", "Priority", "IsArchived", "EndDate"],
           "TimeEntry": ["DisplayName", "DurationMinutes", "IsBillable"]}


def make_rules(count: int, seed: int = 1) -> list[tuple[str, str]]:
    """`count` InLoox rules spread over three entity sets, each watching one field."""
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        entity_set = rng.choice(list(WATCHED))
        field = rng.choice(WATCHED[entity_set])
        root, name = {"Task": ("task", "Name"), "Project": ("project", "Name"),
                      "TimeEntry": ("time_entry", "DisplayName")}[entity_set]
        docs.append(json.dumps({
            "id": f"rule-{i}", "when": [{"inloox": entity_set, "on": "updated", "changes": {field: {}}}],
            "if": {"all": [{"expr": f"{{{{ {root}.{name} is not none }}}}"},
                           {"path": f"{root}.{name}", "op": "prefix", "value": "zz-never"}]},
            "then": [{"notify": "https://hooks.example.test", "body": "{{ rule.id }}"}],
        }))
    return [("bench.yaml", "\n---\n".join(docs))]


def per_event_us(ruleset, event: Event, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        if evaluate(event, ruleset, now=NOW, env={}):
            raise AssertionError("the benchmark event must not match")
    return (time.perf_counter() - start) / repeat * 1e6


def main() -> None:
    quiet = Event("inloox", "updated", NOW, id="e1", entity_set="Task", key="k",
                  changes={"CardPositionNumber": (1, 2)}, entity={"Name": "a"})
    busy = Event("inloox", "updated", NOW, id="e2", entity_set="Task", key="k",
                 changes={"IsDone": (False, True)}, entity={"Name": "a"})
    for count in (10, 1_000, 10_000):
        t0 = time.perf_counter()
        ruleset = load_texts(make_rules(count), strict=True)
        load_s = time.perf_counter() - t0
        candidates = len(ruleset.index.candidates(busy))
        print(f"{count:>6} rules (loaded in {load_s:.1f} s): "
              f"unwatched field {per_event_us(ruleset, quiet, 2000):7.1f} µs/event; "
              f"watched field, {candidates} candidates failing conditions "
              f"{per_event_us(ruleset, busy, 20 if count > 1000 else 200):9.1f} µs/event")


if __name__ == "__main__":
    main()
