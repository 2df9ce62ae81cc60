"""Rule matching: µs per event with 10 / 1,000 / 10,000 rules, matching and not matching.

    .venv/bin/python bench/match.py [--sizes 10,1000,10000]

Pure engine code in this process, no I/O. The rules are bench_match.py's (each watches one field
of Task, Project or TimeEntry and has two failing conditions), plus one rule that does match. Four
events per size:
  quiet   changes a field no rule watches: the rule index alone answers (non-matching)
  busy    changes a field ~1/17 of the rules watch; their conditions run and fail (non-matching)
  match   changes the one field only the matching rule watches: one plan is rendered
  worker  the busy event through what a worker does per event: explain() (its plans are
          evaluate()'s; workers.jobs.handle keeps the report as the event's trace)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402,F401  (puts the project on sys.path)
from bench_match import NOW, make_rules  # noqa: E402
from engine import Event, evaluate, explain, load_texts  # noqa: E402

MATCHING_RULE = json.dumps({
    "id": "rule-that-matches", "when": [{"inloox": "Task", "on": "updated", "changes": {"IsBillable": {}}}],
    "if": {"all": [{"path": "task.Name", "op": "prefix", "value": "a"}]},
    "then": [{"notify": "https://hooks.example.test", "body": "{{ rule.id }}: {{ task.Name }}"}],
})

EVENTS = {
    "quiet": {"CardPositionNumber": (1, 2)},
    "busy": {"IsDone": (False, True)},
    "match": {"IsBillable": (False, True)},
}


def time_us(call, budget_s: float = 1.0, floor: int = 3) -> float:
    """Mean µs per call, repeating until `budget_s` has passed (at least `floor` times)."""
    call()  # warm caches (compiled templates, index)
    n, start = 0, time.perf_counter()
    while n < floor or time.perf_counter() - start < budget_s:
        call()
        n += 1
    return (time.perf_counter() - start) / n * 1e6


def measure(count: int) -> dict:
    files = make_rules(count)
    ruleset = load_texts([(files[0][0], files[0][1] + "\n---\n" + MATCHING_RULE)], strict=True)
    events = {name: Event("inloox", "updated", NOW, id=f"e-{name}", entity_set="Task", key="k",
                          changes=changes, entity={"Name": "a task"}) for name, changes in EVENTS.items()}
    expected = {"quiet": 0, "busy": 0, "match": 1}
    for name, event in events.items():
        found = len(evaluate(event, ruleset, now=NOW, env={}))
        if found != expected[name]:
            raise AssertionError(f"{name} event matched {found} rules, expected {expected[name]}")
    out = {name: time_us(lambda e=e: evaluate(e, ruleset, now=NOW, env={})) for name, e in events.items()}
    out["worker"] = time_us(lambda: explain(events["busy"], ruleset, now=NOW, env={}))
    out["candidates"] = len(ruleset.index.candidates(events["busy"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,1000,10000")
    args = parser.parse_args()
    print(harness.machine())
    figures = {}
    for count in (int(n) for n in args.sizes.split(",")):
        r = measure(count)
        print(f"  {count:>6} rules: quiet {r['quiet']:.1f} µs, busy ({r['candidates']} candidates fail) "
              f"{r['busy']:.0f} µs, match {r['match']:.0f} µs, worker path (explain, busy) {r['worker']:.0f} µs")
        figures[f"nonmatch_{count}"] = f"{r['quiet']:.1f}us"
        figures[f"busy_{count}"] = f"{r['busy']:.0f}us({r['candidates']}cand)"
        figures[f"match_{count}"] = f"{r['match']:.0f}us"
        figures[f"worker_{count}"] = f"{r['worker']:.0f}us"
    print(harness.summary("match", **figures))


if __name__ == "__main__":
    main()
