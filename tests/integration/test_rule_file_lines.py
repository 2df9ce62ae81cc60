"""The stack's output says, once, when a rule file breaks, loads again or is loaded: the person
editing rules sees it in the `make run` terminal (every process's output goes there)."""
from __future__ import annotations

import json

from tests.support.processes import wait_until
from tests.support.stack import FORM_RULE, write_form_rule, write_rule


def rule_lines(stack) -> list[str]:
    """The messages about rule files in every process's output (JSON log lines), in order per process."""
    found = []
    for process in stack.processes:
        for line in process.output().splitlines():
            try:
                record = json.loads(line[line.index("{"):])
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("logger") == "rules":
                found.append(record["message"])
    return found


def test_a_file_that_breaks_and_is_fixed_prints_one_line_each_time(stack, rules_dir):
    write_form_rule(rules_dir)
    stack.poller()
    stack.worker()
    path = rules_dir / "forms.yaml"
    wait_until(lambda: any("loaded" in m for m in rule_lines(stack)), 20, "the file's first load")
    assert rule_lines(stack) == [f"rule file {path} loaded: 1 rule(s)"]

    write_rule(rules_dir, "forms", FORM_RULE.format(extra="").replace("values:", "vaules:"))
    wait_until(lambda: len(rule_lines(stack)) == 2, 20, "the line saying the file broke")
    broken = rule_lines(stack)[1]
    assert broken.startswith(f"rule file broken: {path}:10:5: then[0].vaules: unknown key 'vaules'"), broken
    assert broken.endswith("; its last good version keeps running"), broken

    write_form_rule(rules_dir)
    wait_until(lambda: len(rule_lines(stack)) == 3, 20, "the line saying the file loads again")
    assert rule_lines(stack)[2] == f"rule file {path} loads again: 1 rule(s)"
    assert len(rule_lines(stack)) == 3, "each change is said once, by one of the processes"
