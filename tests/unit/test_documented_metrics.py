"""Metric names the docs tell operators to alert on against the names `/metrics` writes (web/metrics.py)."""
from __future__ import annotations

import re
from pathlib import Path

from web.metrics import COUNTER_METRICS, PREFIX

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def exposed() -> set[str]:
    """Every sample name of a scrape: counters end in _total; gauges and the histogram are named in the collector."""
    names = {PREFIX + prom + "_total" for prom, _, _ in COUNTER_METRICS.values()}
    source = (ROOT / "web" / "metrics.py").read_text(encoding="utf-8")
    for family, name in re.findall(r'(\w+)MetricFamily\(PREFIX \+ "([a-z_]+)"', source):
        names.add(PREFIX + name)
        if family == "Histogram":
            names.update(PREFIX + name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_every_metric_the_docs_name_is_exposed():
    names = exposed()
    unknown = sorted({f"{doc.name}: {found}" for doc in DOCS
                      for found in re.findall(r"\binloox_automation_[a-z_]*[a-z]", doc.read_text(encoding="utf-8"))
                      if found not in names})
    assert not unknown, f"metrics named in the docs that /metrics does not write: {unknown}"


def test_the_counters_the_docs_name_without_prefix_are_exposed():
    # docs/deploy.md, "Usage and limits": `runs_started_total`, `billable_runs_total{rule}`
    names = exposed()
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    short = set(re.findall(r"`([a-z_]+_total)(?:\{[^}]*\})?`", text))
    unknown = sorted(name for name in short if PREFIX + name not in names and name not in names)
    assert short and not unknown, f"counters named in docs/deploy.md that /metrics does not write: {unknown}"
