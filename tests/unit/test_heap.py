"""What a long-running process frees once its heap is settled (workers/heap.py).

Frozen objects are not walked by the collector: what a workspace's rules and context hold must be
freed by reference counts when they are replaced, and a cycle frozen before it became garbage must
still be freed, by the hourly reclaim.
"""
from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import redis

from engine.rules import load_texts, rule_files
from workers import heap
from workers import workspaces
from workers.secrets import generate_key
from workers.settings import settings_from
from workers.worker_context import build_context

RULES = Path(__file__).resolve().parents[2] / "rules"


@pytest.fixture(autouse=True)
def collector(monkeypatch):
    """The process's collector as it was, whatever a test froze or set."""
    threshold = gc.get_threshold()
    monkeypatch.setattr(heap, "_next_settle", 0.0)
    monkeypatch.setattr(heap, "_next_reclaim", 0.0)
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    gc.collect()


class Node:
    """An object that can hold a reference to itself, as a garbage cycle does."""

    other: object = None


def test_rules_and_a_context_built_before_a_settle_are_freed_when_let_go():
    texts = [(str(f), f.read_text(encoding="utf-8")) for f in rule_files(RULES)]
    ruleset = load_texts(texts)
    assert ruleset.rules, "the example rules load"
    workspace = workspaces.Workspace("acme", "https://acme.inloox.example/odata", "token",
                                     limits=workspaces.Limits(inloox_requests_per_second=5))
    # With a key: with none, the warning said once keeps its frames (and the context) in pytest's log capture.
    config = settings_from({"SECRETS_KEY": generate_key()})
    context = build_context(config, workspace, redis.Redis.from_url("redis://127.0.0.1:1/0"))
    heap.settle(now=0.0)
    assert gc.get_freeze_count() > 0
    gone = [weakref.ref(ruleset), weakref.ref(context), weakref.ref(context.client)]
    del ruleset, context
    # No collection runs: reference counts alone free them, frozen or not.
    assert [ref() for ref in gone] == [None, None, None]


def test_a_cycle_frozen_before_it_became_garbage_is_freed_by_the_reclaim():
    cycle = Node()
    cycle.other = cycle
    gone = weakref.ref(cycle)
    heap.keep(now=100.0)  # the first settle
    del cycle
    heap.keep(now=100.0 + heap.SETTLE_SECONDS)  # settles walk only what is not frozen
    assert gone() is not None
    heap.keep(now=100.0 + heap.RECLAIM_SECONDS)
    assert gone() is None


def test_keep_settles_once_a_minute_and_makes_the_young_generation_larger():
    heap.keep(now=10.0)
    frozen = gc.get_freeze_count()
    assert gc.get_threshold()[0] == heap.YOUNG_OBJECTS
    built = [Node() for _ in range(100)]
    heap.keep(now=10.0 + heap.SETTLE_SECONDS - 1)
    assert gc.get_freeze_count() == frozen, "not before a minute"
    heap.keep(now=10.0 + heap.SETTLE_SECONDS)
    assert gc.get_freeze_count() >= frozen + len(built)


def test_each_settle_gives_the_c_heaps_free_pages_back(monkeypatch):
    trims = []
    monkeypatch.setattr(heap, "_trim", trims.append)  # glibc's malloc_trim, as found on first use
    heap.settle(now=0.0)
    heap.keep(now=heap.SETTLE_SECONDS - 1)
    assert trims == [0], "once per settle, not per keep"
    heap.keep(now=heap.SETTLE_SECONDS)
    assert trims == [0, 0]


def test_releasing_without_glibcs_malloc_trim_does_nothing(monkeypatch):
    monkeypatch.setattr(heap, "_trim", False)
    heap.release()
