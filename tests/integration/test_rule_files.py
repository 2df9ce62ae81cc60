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


def _source(connection, name: str, folder: Path):
    from workers import workspaces
    from workers.worker_context import RuleSource

    workspace = workspaces.Workspace(name, "https://inloox.example/odata", "token", rules_path=str(folder))
    return RuleSource(connection, workspace)


def test_workspaces_on_one_folder_share_its_rules_until_it_changes(connection, tmp_path):
    (tmp_path / "done.yaml").write_text(GOOD)
    first, second = _source(connection, "share-a", tmp_path), _source(connection, "share-b", tmp_path)

    assert first.ruleset() is second.ruleset()  # compiled once in the process, not once per workspace
    assert list(first.ruleset().rules) == ["tell-the-team"]

    (tmp_path / "done.yaml").write_text(GOOD.replace("tell-the-team", "tell-everyone"))
    changed = _source(connection, "share-c", tmp_path)
    assert list(changed.ruleset().rules) == ["tell-everyone"]


def test_a_workspaces_poller_and_scheduler_share_its_rules(connection, tmp_path):
    (tmp_path / "done.yaml").write_text(GOOD + "# acme's own\n")
    polling = _source(connection, "own-a", tmp_path)
    rules = polling.ruleset()  # its first load records the texts as last good

    scheduling = _source(connection, "own-a", tmp_path)  # the same workspace's, loading after that

    assert scheduling.ruleset() is rules


def test_a_broken_file_runs_each_workspaces_own_last_good_text(connection, tmp_path):
    (tmp_path / "done.yaml").write_text(GOOD)
    seen_good = _source(connection, "kept-a", tmp_path)
    assert list(seen_good.ruleset().rules) == ["tell-the-team"]  # recorded as its last good text
    (tmp_path / "done.yaml").write_text(BROKEN + "\n")  # another size: seen whatever the clock's grain
    seen_good.current(not_before=float("inf"))  # looks at the folder now

    never_good = _source(connection, "kept-b", tmp_path)  # a workspace that never saw the file good

    assert list(seen_good.ruleset().rules) == ["tell-the-team"]
    assert [f.status for f in seen_good.trouble] == [KEPT]
    assert list(never_good.ruleset().rules) == []
    assert [f.status for f in never_good.trouble] == ["broken"]
