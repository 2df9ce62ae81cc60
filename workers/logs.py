"""JSON logs for the web, worker and poller processes: one line per record, run id included, secrets redacted.

    {"time": "...", "level": "INFO", "logger": "workers.jobs", "message": "...", "run_id": "run_…"}

The run id is the one the record's message names, or that of the RQ job being worked on (run jobs
are named after their run). Every secret in the configuration (the InLoox token, the admin token,
webhook and chat secrets) is replaced by `***` in messages and tracebacks, whoever logged them.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import datetime, timezone

from rq import get_current_job

REDACTED = "***"
SECRET_SETTINGS = ("INLOOX_API_KEY", "ADMIN_TOKEN", "SLACK_SIGNING_SECRET", "TEAMS_SECURITY_TOKEN", "OPERATOR_TOKEN")
MIN_SECRET_CHARS = 6  # shorter values ("1", "") would redact ordinary text
_RUN_ID = re.compile(r"\brun_[0-9a-f]{24}\b")
# Loggers that libraries give handlers of their own; theirs would print plain text beside ours.
_LIBRARY_LOGGERS = ("rq", "rq.worker", "rq.job", "rq.scheduler")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line, with `run_id` when there is one and secrets redacted."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        message = self.redact(record.getMessage())
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": message}
        run_id = _run_id(message)
        if run_id:
            line["run_id"] = run_id
        if record.exc_info:
            line["exception"] = self.redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str)

    def redact(self, text: str) -> str:
        """`text` with every configured secret replaced by `***`."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


def secrets_of(config: dict) -> list[str]:
    """The secret values in a configuration mapping (as `workers.settings.load_config()` returns it)."""
    found = [str(config.get(name) or "") for name in SECRET_SETTINGS]
    found += [s for pair in (config.get("WEBHOOK_SOURCES") or {}).values() for s in pair]
    # Every workspace's own: its InLoox token, admin token, webhook and chat secrets.
    return found + [s for workspace in (config.get("WORKSPACES") or {}).values() for s in workspace.secrets()]


def configure_logging(config: dict, *, level: int = logging.INFO) -> None:
    """Send every log record of this process to stderr as JSON lines (replacing earlier set-up)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets_of(config)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True


def _run_id(message: str) -> str | None:
    found = _RUN_ID.search(message)
    if found:
        return found.group()
    job = get_current_job()
    if job is not None and job.id.startswith("run_"):
        return job.id.split("-")[0]  # retries are queued as <run id>-<tag>
    return None
