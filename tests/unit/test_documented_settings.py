"""README.md's Configuration table against workers/settings.py: every setting listed, with its default.

Operators keep their settings in git and read the table, not DEFAULTS: a setting missing from it, or
shown with another default than the code's, is one they get wrong.
"""
from __future__ import annotations

import re
from pathlib import Path

from workers.settings import DEFAULTS, PORTS

ROOT = Path(__file__).resolve().parents[2]
# make run's development switches: on under `make run` (the table's column), off in DEFAULTS, so that a
# production process started without them stays closed (workers/settings.py).
MAKE_RUN_ONLY = {"DEV_INBOX", "OUTBOUND_ALLOW"}


def table() -> dict[str, str]:
    """name → the default column's text, for each variable of the Configuration table."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Configuration\n")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names_cell, default_cell = [cell.strip() for cell in line.strip("|").split("|")][:2]
        names = re.findall(r"`([A-Z][A-Z0-9_<>]*)`", names_cell)
        literals = re.findall(r"`([^`]*)`", default_cell)
        for i, name in enumerate(names):
            if default_cell.startswith("none"):
                rows[name] = ""
            elif default_cell.startswith("`") and len(literals) >= len(names):
                rows[name] = literals[i]
            else:
                rows[name] = default_cell  # said in words (e.g. "embedded Valkey on `REDIS_PORT`")
    return rows


def test_every_setting_has_a_row_in_the_readme():
    missing = sorted(set(DEFAULTS) - set(table()))
    assert not missing, f"settings in workers/settings.py DEFAULTS but not in README.md's Configuration table: {missing}"


def test_each_literal_default_in_the_readme_is_the_codes():
    rows = table()
    wrong = {name: (shown, DEFAULTS[name]) for name, shown in rows.items()
             if name in DEFAULTS and name not in MAKE_RUN_ONLY
             and (shown == "" or not shown.startswith(("the ", "embedded ", "a ")))
             and shown != DEFAULTS[name]}
    assert not wrong, f"README.md default (shown, code): {wrong}"
    assert all(DEFAULTS[name] == "" for name in MAKE_RUN_ONLY)


def test_every_variable_in_the_readme_is_read_somewhere():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    unknown = [name for name in table() if name not in DEFAULTS and name not in PORTS
               and not name.startswith("WEBHOOK_SECRET_") and not re.search(rf"^{name} \?=", makefile, re.M)]
    assert not unknown, f"README.md names variables that neither workers/settings.py nor the Makefile reads: {unknown}"
