"""What a worker process builds once and reuses for every job: clients, rules, settings.

Built lazily on the first job (RQ imports job modules before forking nothing: we run the
in-process SimpleWorker), so importing this module opens no connection.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from engine import Ruleset, load_rules
from engine.rules import rule_files
from inloox import Client
from workers import metrics
from workers.outbound import OutboundPolicy

RULES_RECHECK_SECONDS = 2.0  # how stale the worker's view of the rule files may get


@dataclass
class WorkerContext:
    """Clients and settings of this worker process; the rule set reloads when its files change."""

    client: Client
    connection: redis.Redis
    outbound: OutboundPolicy
    rule_env: dict
    rules_path: str
    _ruleset: Ruleset | None = None
    _stamp: tuple = ()
    _checked: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ruleset(self) -> Ruleset:
        """The current rules; files are re-read when one was added, removed or changed."""
        with self._lock:
            if self._ruleset is None or time.monotonic() - self._checked > RULES_RECHECK_SECONDS:
                stamp = _files_stamp(self.rules_path)
                if self._ruleset is None or stamp != self._stamp:
                    self._ruleset, self._stamp = load_rules(self.rules_path), stamp
                self._checked = time.monotonic()
            return self._ruleset


def _files_stamp(path: str) -> tuple:
    files = rule_files(path) if Path(path).exists() else []
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)


def rule_env(config: dict, environ=os.environ) -> dict:
    """The environment variables rules may read as `env.NAME`: only those named in RULES_ENV.

    An allow-list, not everything: a rule's http step could otherwise send INLOOX_API_KEY away.
    """
    return {name: environ[name] for name in config["RULES_ENV"].split() if name in environ}


_context: WorkerContext | None = None


def worker_context() -> WorkerContext:
    """This process's context, built from the environment on first use."""
    global _context
    if _context is None:
        from app import load_config  # the one place settings are read from the environment

        config = load_config()
        _context = WorkerContext(
            client=Client(config["INLOOX_URL"], config["INLOOX_API_KEY"], timeout=float(config["INLOOX_TIMEOUT"]),
                          on_response=metrics.note_request),
            connection=redis.Redis.from_url(config["REDIS_URL"]),
            outbound=OutboundPolicy.from_setting(config["OUTBOUND_ALLOW"]),
            rule_env=rule_env(config),
            rules_path=config["RULES_PATH"],
        )
    return _context
