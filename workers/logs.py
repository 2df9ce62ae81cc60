"""JSON logs for the web, worker and poller processes: one line per record, run id included, secrets redacted.

    {"time": "...", "level": "INFO", "logger": "workers.jobs", "message": "...", "run_id": "run_…"}

The run id is the one the record's message names, or that of the RQ job being worked on (run jobs
are named after their run). Every secret in the configuration (the InLoox token, the admin token,
webhook and chat secrets) is replaced by `***` in messages and tracebacks, whoever logged them; so
is every secret of the workspaces the process's registry view has read (`follow_registry`), including
those created or rotated after the process started. A secret rotated out or deleted stays redacted
until the process restarts: redacting too much costs nothing, missing one leaks it.

All secrets are found in one pass over a line (an Aho-Corasick automaton), so a line costs the same
with four secrets or four thousand (a thousand workspaces).

Lines reach stderr through one writer thread per process (`LineWriter`): a thread that logs formats
its line and goes on, never waiting for the stream or for another thread's write.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import re
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import ahocorasick
from rq import get_current_job

if TYPE_CHECKING:
    from workers.registry import View

REDACTED = "***"
SECRET_SETTINGS = ("INLOOX_API_KEY", "ADMIN_TOKEN", "SLACK_SIGNING_SECRET", "TEAMS_SECURITY_TOKEN", "OPERATOR_TOKEN")
MIN_SECRET_CHARS = 6  # shorter values ("1", "") would redact ordinary text
_RUN_ID = re.compile(r"\brun_[0-9a-f]{24}\b")
# A registry workspace's admin token is kept only as its hash, so no process knows it to list it:
# anything shaped like one (workers/registry/_records.py: `wsa_` and 32 random bytes) is redacted.
_ADMIN_TOKEN_SHAPE = re.compile(r"wsa_[A-Za-z0-9_-]{43,}")
# Loggers that libraries give handlers of their own; theirs would print plain text beside ours.
_LIBRARY_LOGGERS = ("rq", "rq.worker", "rq.job", "rq.scheduler")


class Secrets:
    """The secret values to redact, and the automaton that finds every occurrence of all of them at once."""

    def __init__(self, values: Iterable[str] = ()):
        self.values = _usable(values)
        self._automaton = _automaton(self.values) if self.values else None

    def with_more(self, values: Iterable[str]) -> Secrets:
        """These secrets and `values` (itself when it has them all already: no automaton is built)."""
        more = _usable(values) - self.values
        return Secrets(self.values | more) if more else self

    def mask(self, text: str) -> str:
        """`text` with every character of every secret occurrence under a `***`.

        Occurrences that overlap or touch share one `***`: replacing one secret after another would
        leave the part of a secret that another, replaced first, overlapped.
        """
        if self._automaton is None:
            return text
        spans = sorted((end + 1 - length, end + 1) for end, length in self._automaton.iter(text))
        if not spans:
            return text
        pieces, masked_to = [], -1
        for start, end in spans:
            if start > masked_to:  # apart from the mask before: the text between, then a new mask
                pieces += (text[max(masked_to, 0):start], REDACTED)
            masked_to = max(masked_to, end)
        pieces.append(text[masked_to:])
        return "".join(pieces)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line, with `run_id` when there is one and secrets redacted."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = Secrets(secrets)
        self._followed: list[tuple[View, dict | None]] = []  # each registry view followed, and the set last taken from it

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

    def follow(self, view: View) -> None:
        """Redact, from now on, the secrets of every workspace `view` holds, as it re-reads them."""
        self._followed.append((view, None))

    def redact(self, text: str) -> str:
        """`text` with every configured secret, every followed workspace's, and anything shaped like an
        admin token replaced by `***`."""
        if self._followed:
            self._take_in_workspaces()
        return _ADMIN_TOKEN_SHAPE.sub(REDACTED, self.secrets.mask(text))

    def _take_in_workspaces(self) -> None:
        # `held` is what the view has already read, never a Redis call: a log line must not wait on
        # Redis, nor call back into a view that is logging while it re-reads. The view keeps one dict
        # until it re-reads, so an unchanged registry costs one identity test per line.
        for place, (view, seen) in enumerate(self._followed):
            held = view.held()
            if held is not seen:
                self.secrets = self.secrets.with_more(s for ws in held.values() for s in ws.secrets())
                self._followed[place] = (view, held)


def secrets_of(config: dict) -> list[str]:
    """The secret values in a configuration mapping (as `workers.settings.load_config()` returns it)."""
    found = [str(config.get(name) or "") for name in SECRET_SETTINGS]
    found += [s for pair in (config.get("WEBHOOK_SOURCES") or {}).values() for s in pair]
    # Each key of SECRETS_KEY on its own (comma-separated, maybe with spaces): one opens every stored secret.
    found += [k.strip() for k in str(config.get("SECRETS_KEY") or "").split(",")]
    # Every workspace's own: its InLoox token, admin token, webhook and chat secrets.
    return found + [s for workspace in (config.get("WORKSPACES") or {}).values() for s in workspace.secrets()]


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure_logging(config: dict) -> None:
    """Send every log record of this process at LOG_LEVEL or above to stderr as JSON lines (replacing earlier set-up).

    A LOG_LEVEL that is not a level's name stops the process with the names there are (SystemExit).
    """
    level = str(config.get("LOG_LEVEL") or "INFO").upper()
    if level not in LEVELS:
        raise SystemExit(f"Error: LOG_LEVEL {level!r} is not one of {', '.join(LEVELS)}")
    handler = LineWriter(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets_of(config)))
    root = logging.getLogger()
    replaced, root.handlers[:] = root.handlers[:], [handler]
    for earlier in replaced:
        if isinstance(earlier, LineWriter):
            earlier.close()  # its thread would otherwise keep it, and wait for lines, for ever
    root.setLevel(level)
    for name in _LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True


class LineWriter(logging.Handler):
    """Writes records to a stream from a thread of its own: every line gathered since its last write in one call.

    A StreamHandler writes each line under the handler's lock, and the write gives up the GIL: the
    thread then waits for the GIL again while holding the lock, and every other thread that logs waits
    for the lock. A worker with 400 threads awaiting a slow InLoox had 23 % of its threads' time in
    that queue, time its events were not in flight (bench/RESULTS.md section 21). Here the thread
    that logs formats its record (the RQ job and the exception are that thread's) and puts the line on
    a queue, taking no lock of the handler's; one write of many lines gives up the GIL once.

    A log reader that stalls (a full pipe) no longer stalls the process: past MAX_QUEUED lines waiting,
    new ones are dropped and counted, and a warning says how many once the stream takes lines again.
    A crash loses the lines not written yet (milliseconds of them); `flush()`, which logging calls at
    exit, writes them. A forked child starts a writer of its own at its first line.
    """

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self._reset()
        _writers.add(self)

    def _reset(self) -> None:
        # Also in a forked child: the parent's queue, writer thread and locks (maybe taken by a thread the
        # child does not have) are the parent's.
        self._start_lock = threading.Lock()
        self._lines: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._dropped = 0
        self._writing = threading.Lock()  # held while writing; a fork waits for it (_before_fork)

    def handle(self, record: logging.LogRecord) -> bool:
        """As logging.Handler.handle, without the handler's lock: the queue is the only thing shared."""
        passed = self.filter(record)
        if passed:
            self.emit(record)
        return bool(passed)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if self._lines.qsize() >= MAX_QUEUED:
            self._dropped += 1  # under the GIL; a lost increment only makes the warning's count low
            return
        self._lines.put(line)
        if self._thread is None:
            self._start()

    def flush(self) -> None:
        """Return once every line handed over so far is written (or after FLUSH_SECONDS)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._write(_taken(self._lines))  # no writer (yet, or any more): this thread writes
        elif thread is not threading.current_thread():
            written = threading.Event()
            self._lines.put(written)
            written.wait(FLUSH_SECONDS)

    def close(self) -> None:
        """Write what waits, then end the writer thread and wait for it to end."""
        self.flush()
        self._lines.put(_CLOSED)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # Else the thread may still be on its way out when close returns (seen in CI: a replaced
            # writer's thread counted as alive).
            thread.join(FLUSH_SECONDS)
        super().close()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._follow, args=(self._lines,), name="log-writer", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no new threads at interpreter shutdown: this thread writes
                self._write(_taken(self._lines))
                return
            self._thread = thread

    def _follow(self, lines: queue.SimpleQueue) -> None:
        while True:
            batch = [lines.get(), *_taken(lines, MAX_LINES_A_WRITE - 1)]
            try:
                self._write(batch)
            except Exception:  # noqa: BLE001 - whatever one batch met, the process's later lines still go out
                pass  # the stream is where it would be said
            if _CLOSED in batch:
                return
            # Lines gather meanwhile: woken at every line, this thread would take the GIL as often as
            # the threads that log (a worker's 500 run-end lines a second), one line per write.
            time.sleep(GATHER_SECONDS)

    def _write(self, batch: list) -> None:
        text = [line for line in batch if isinstance(line, str)]
        dropped, self._dropped = self._dropped, 0
        if dropped:
            text.append(self.format(logging.makeLogRecord({
                "name": __name__, "levelno": logging.WARNING, "levelname": "WARNING",
                "msg": f"{dropped} log lines dropped: the log's reader did not keep up"})))
        try:
            if text:
                with self._writing:
                    self.stream.write("\n".join(text) + "\n")
                    self.stream.flush()
        except (OSError, ValueError):
            pass  # the stream is gone (a closed pipe): nowhere to say so either
        finally:
            for marker in batch:
                if isinstance(marker, threading.Event):
                    marker.set()


# Lines waiting for the writer at most (~7 MB); then new ones are dropped rather than the process stalled.
MAX_QUEUED = 20_000
MAX_LINES_A_WRITE = 1_000
GATHER_SECONDS = 0.05
FLUSH_SECONDS = 2.0
_writers: weakref.WeakSet[LineWriter] = weakref.WeakSet()
_CLOSED = object()  # put on a writer's queue by `close`: its thread ends


def _taken(lines: queue.SimpleQueue, most: int = MAX_QUEUED) -> list:
    """What waits on `lines` now, up to `most` items, without waiting."""
    taken = []
    while len(taken) < most:
        try:
            taken.append(lines.get_nowait())
        except queue.Empty:
            break
    return taken


_held_for_fork: list[threading.Lock] = []


def _before_fork() -> None:
    # A fork in the middle of a write would leave the child's copy of the stream's own lock taken: its
    # first line would wait for ever (the web forks its servers after logging its start).
    for writer in list(_writers):
        if writer._writing.acquire(timeout=FLUSH_SECONDS):
            _held_for_fork.append(writer._writing)


def _after_fork_in_parent() -> None:
    while _held_for_fork:
        _held_for_fork.pop().release()


def _after_fork_in_child() -> None:
    _held_for_fork.clear()
    for writer in list(_writers):
        writer._reset()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def follow_registry(view: View | None) -> None:
    """Redact in this process's log lines the secrets of every workspace `view` reads, live.

    Called with the process's own view (the one it serves from), after `configure_logging`; a no-op
    without a view (no SECRETS_KEY: only the configuration's workspaces, already redacted) or where
    logging was not configured (tests keep pytest's own capture).
    """
    if view is None:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.follow(view)


def _run_id(message: str) -> str | None:
    found = _RUN_ID.search(message)
    if found:
        return found.group()
    job = get_current_job()
    if job is not None and job.id.startswith("run_"):
        return job.id.split("-")[0]  # retries are queued as <run id>-<tag>
    return None


def _usable(values: Iterable[str]) -> frozenset[str]:
    return frozenset(s for s in values if s and len(s) >= MIN_SECRET_CHARS)


def _automaton(values: frozenset[str]) -> ahocorasick.Automaton:
    automaton = ahocorasick.Automaton()
    for value in values:
        automaton.add_word(value, len(value))
    automaton.make_automaton()
    return automaton
