"""The rule files' last good texts in Redis (workers/rule_files.py): small, and readable across an upgrade."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from engine.last_good import KEPT, digest, load_keeping_last_good
from workers import rule_files

EXAMPLES = Path(__file__).resolve().parents[2] / "rules"
PREFIX = "ws:files:"
GOOD = """\
id: tell-the-team
when:
  - inloox: Task
    changes: {IsDone: {to: true}}
then:
  - notify: "https://hooks.example.com/team"
    title: "Done: {{ task.Name }}"
    body: "{{ task.Name }} is done."
"""
BROKEN = GOOD.replace("changes:", "chnages:")


@pytest.fixture
def connection(redis_url):
    return redis.Redis.from_url(redis_url)


def load(connection, texts: dict[str, str]):
    """Load a folder of `texts` as every process does: keeping the last good texts, and recording them."""
    loaded = load_keeping_last_good(texts.items(), rule_files.last_good(connection, PREFIX))
    rule_files.record(connection, PREFIX, texts, loaded, now=1_700_000_000.0)
    return loaded


def stored_before_compression(connection, name: str, text: str) -> None:
    """A last good entry as the version before compression stored it: plain JSON."""
    entry = {"text": text, "digest": digest(text), "since": 1_600_000_000.0}
    connection.hset(PREFIX + rule_files.LAST_GOOD, name, json.dumps(entry))


def test_the_example_rules_last_good_texts_take_under_70_percent_of_the_files(connection):
    texts = {path.name: path.read_text() for path in sorted(EXAMPLES.glob("*.yaml"))}
    load(connection, texts)

    stored = sum(connection.hstrlen(PREFIX + rule_files.LAST_GOOD, name) for name in texts)
    assert stored < 0.7 * sum(len(text.encode()) for text in texts.values())  # 108 % as JSON
    assert rule_files.last_good(connection, PREFIX) == texts


def test_a_last_good_text_stored_before_compression_still_runs_when_its_file_breaks(connection):
    stored_before_compression(connection, "done.yaml", GOOD)

    loaded = load(connection, {"done.yaml": BROKEN})

    assert [f.status for f in loaded.files] == [KEPT]
    assert list(loaded.ruleset.rules) == ["tell-the-team"]


def test_a_last_good_text_stored_before_compression_is_stored_again_smaller_with_its_date(connection):
    stored_before_compression(connection, "done.yaml", GOOD)
    before = connection.hstrlen(PREFIX + rule_files.LAST_GOOD, "done.yaml")

    load(connection, {"done.yaml": GOOD})

    assert connection.hstrlen(PREFIX + rule_files.LAST_GOOD, "done.yaml") < before
    assert rule_files.last_good(connection, PREFIX) == {"done.yaml": GOOD}
    load(connection, {"done.yaml": BROKEN})
    [entry] = rule_files.broken_files(connection, PREFIX)
    assert entry["good_since"] == 1_600_000_000.0  # still the time it was last good
