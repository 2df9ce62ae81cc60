"""What a process builds once per workspace and reuses for every job: clients, rules, settings.

Built lazily on the first job of a workspace (we run the in-process SimpleWorker, nothing is
forked), so importing this module opens no connection.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import redis

from engine import Ruleset
from engine.bodies import parse_json
from engine.last_good import FileState, LoadedFiles, load_keeping_last_good
from engine.rules import load_texts, rule_files
from inloox import Client
from workers import bundles, heap, metrics
from workers import rule_files as rule_files_state
from workers.outbound import OutboundPolicy
from workers.registry import Served
from workers.secrets import Keyring, SecretsKeyError
from workers.settings import load_config, redis_client, threads
from workers.throttle import Throttle
from workers.workspaces import DEFAULT, Workspace, using

T = TypeVar("T")
RULES_RECHECK_SECONDS = 2.0  # how stale a process's view of the rule files may get
LOCK_LOOK_SECONDS = 0.05  # how often `current(wait=False)` looks whether the thread it waits for compiles

log = logging.getLogger(__name__)


class Compiling(Exception):
    """The workspace's rules are to be compiled, at a cost the thread that asked (`RuleSource.current(wait=False)`)
    does not pay: ask again on a thread of its own, nothing was done."""


@dataclass
class RuleSource:
    """A workspace's active rule set: its rules folder (git), or its active uploaded bundle.

    `version` names what is active: "v<n>" for a bundle, "files:<digest of the files' contents>"
    for a folder (the same on every machine with the same checkout). Every run records it. A file
    of the folder that was good and breaks keeps running at its last good text (engine/last_good.py);
    the version then names the texts that run.
    """

    connection: redis.Redis
    workspace: Workspace
    _ruleset: Ruleset | None = None
    _version: str = ""
    # What we last loaded from: the folder's files' mtimes and sizes, or the bundle's "<number>:<sha256>".
    _stamp: str = ""
    _checked: float = 0.0
    _checked_wall: float = 0.0  # time.time() when the last check began
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _compiling: bool = False  # a thread holding `_lock` loads the rules now
    _files: LoadedFiles | None = field(default=None, repr=False)  # what `_ruleset` came from, when a folder: keeps it shared (see shared)
    trouble: tuple[FileState, ...] = ()  # the folder's files that did not load at the last look (see engine.last_good)
    # A bundle's (name, text) pairs → its rules: the web's parses large ones in a child (web/bundle_check.py).
    compile_bundle: Callable[[list[tuple[str, str]]], Ruleset] = load_texts

    @property
    def loaded_from(self) -> str:
        """What the rules in use were loaded from: the folder's file stamps (see `folder_stamp`) or the bundle number."""
        return self._stamp if self.workspace.rules_path is not None else self._stamp.partition(":")[0]

    def ruleset(self) -> Ruleset:
        """The current rules, re-read when the folder's files or the active bundle changed."""
        return self.current()[0]

    def current(self, *, not_before: float | None = None, wait: bool = True) -> tuple[Ruleset, str]:
        """(rules, version) as they are now: at most RULES_RECHECK_SECONDS stale, and looked at no
        earlier than `not_before` (time.time() of an event's acceptance) when it is given.

        An event must meet the rules that were active when it was accepted: a rule added (or a
        bundle activated) a moment before would otherwise miss the event it was written for.

        `wait=False` (the thread that runs every workspace's events in turns, workers/consumer/): raises Compiling
        rather than compile more than bundles.COMPILE_HERE_BYTES of rule text, or wait while another thread compiles.
        """
        while wait or not self._compiling:  # without `wait`, no waiting out another thread's compile either
            if self._lock.acquire(timeout=-1 if wait else LOCK_LOOK_SECONDS):
                break
        else:
            raise Compiling(self.workspace.name)
        try:
            stale = time.monotonic() - self._checked > RULES_RECHECK_SECONDS
            if self._ruleset is None or stale or (not_before is not None and not_before >= self._checked_wall):
                wall, stamp = self._stamp_now(not_before)
                if self._ruleset is None or stamp != self._stamp:
                    if not wait and self._pending(stamp) > bundles.COMPILE_HERE_BYTES:
                        raise Compiling(self.workspace.name)
                    self._compiling = True
                    try:
                        self._ruleset, self._version, self._stamp = self._load(stamp)
                    finally:
                        self._compiling = False
                # Only once the rules of `stamp` are held: events accepted before `wall` take them without a look.
                self._checked_wall, self._checked = wall, time.monotonic()
            return self._ruleset, self._version
        finally:
            self._lock.release()

    def version(self) -> str:
        """The version `current()` names, without compiling a bundle's rules: a readiness probe or a page that
        shows only the version must not pay the compile (~5 s of CPU for a 1 MB bundle, in the web's one GIL).

        A folder's version names the texts that run (a broken file's last good one), found only by loading them.
        """
        if self.workspace.rules_path is not None:
            return self.current()[1]
        number = bundles.active_number(self.connection, self.workspace.prefix)
        return "none" if number is None else f"v{number}"

    def pending_bytes(self) -> int:
        """Bytes of rule text `current()` would compile now: 0 when it would answer from the rules held here."""
        return self._pending(self._stamp_now(None)[1])

    def _pending(self, stamp: str) -> int:
        if self._ruleset is not None and stamp == self._stamp:
            return 0
        if self.workspace.rules_path is not None:  # the stamp's lines: file, mtime, size
            return sum(int(line.rpartition("\t")[2]) for line in stamp.splitlines())
        if stamp == "None" or _kept_rules(self.workspace, stamp) is not None:  # none, or compiled for an earlier context
            return 0
        return bundles.size(self.connection, self.workspace.prefix, int(stamp.partition(":")[0]))

    def _stamp_now(self, not_before: float | None) -> tuple[float, str]:
        """(time.time() the look began, what is active: the folder's file stamps, or the bundle's number and digest).

        A bundle's number alone would not do: a workspace deleted and created again under its name numbers its
        bundles from v1 again, and a context of the deleted one still in use here (until this process sees the
        registry change) would keep running the old v1's rules for the new one's events.
        """
        path = self.workspace.rules_path
        if path is not None:
            return folder_stamp(path, not_before=not_before)
        began = time.time()
        return began, _bundle_stamp(bundles.active_digest(self.connection, self.workspace.prefix))

    def _load(self, stamp: str) -> tuple[Ruleset, str, str]:
        """(rules, version, the stamp they are the rules of: "" when a folder's state was not recorded in Redis, so
        that the next look loads it again). `stamp`: what `_stamp_now` found just before."""
        path = self.workspace.rules_path
        if path is not None:
            files = rule_files(path) if Path(path).exists() else []
            texts = [(str(f), f.read_text(encoding="utf-8", errors="replace")) for f in files]
            ruleset, version, recorded = self._load_folder(texts)
            return ruleset, version, stamp if recorded else ""
        kept = _kept_rules(self.workspace, stamp)
        if kept is not None:  # `stamp` was read in one round trip: these are the rules of the version it names
            return kept, f"v{stamp.partition(':')[0]}", stamp
        # The stamp of what is read, not `stamp`: a switch in between, and one back, must not leave other rules
        # running under the stamp now active.
        active = bundles.active_version(self.connection, self.workspace.prefix)
        if active is None:
            return load_texts([]), "none", _bundle_stamp(None)
        number, digest, files = active
        texts = sorted(files.items())
        ruleset = shared(("bundle", texts), lambda: self.compile_bundle(texts))
        _keep(self.workspace, _bundle_stamp((number, digest)), ruleset)
        return ruleset, f"v{number}", _bundle_stamp((number, digest))

    def _load_folder(self, texts: list[tuple[str, str]]) -> tuple[Ruleset, str, bool]:
        prefix = self.workspace.prefix
        try:
            last_good = rule_files_state.last_good(self.connection, prefix)
            loaded = shared(("folder", texts, _deciding(texts, last_good)), lambda: load_keeping_last_good(texts, last_good))
            rule_files_state.record(self.connection, prefix, {Path(p).name: t for p, t in texts}, loaded)
            recorded = True
        except redis.RedisError:
            # Without Redis a good folder loads the same (a `flask rules run --dry-run` needs no Redis);
            # a broken file would lose its last good version, so then the error stands.
            loaded, recorded = load_keeping_last_good(texts, {}), False
            if loaded.trouble:
                raise
        self.trouble, self._files = loaded.trouble, loaded
        return loaded.ruleset, loaded.version, recorded


def _bundle_stamp(active: tuple[int, str] | None) -> str:
    """A bundle's stamp: "<number>:<sha256>" of the active version, "None" before the first upload."""
    return "None" if active is None else f"{active[0]}:{active[1]}"


# Each workspace's compiled bundle, kept while this process serves the workspace. A change of its record (paused,
# resumed, new limits, a webhook source) builds its context anew in every process, and the bundle compiled again
# there cost seconds of CPU for a large one, on a worker's event thread (other customers' events waited behind it):
# the copy `shared` holds goes with the context it was compiled for. Kept under what decides the rules: the
# workspace's incarnation (made when it is created: a workspace deleted and made again under its name numbers its
# bundles from v1 again), the version's number and its content's sha256. One entry a workspace, the latest compile.
_kept: dict[str, tuple[tuple[str, str], Ruleset]] = {}


def _kept_rules(workspace: Workspace, stamp: str) -> Ruleset | None:
    """The rules compiled here for `workspace`'s incarnation at bundle `stamp`, if they were."""
    with _shared_lock:
        found = _kept.get(workspace.name)
    if found is None or not _keepable(workspace, stamp) or found[0] != (workspace.incarnation, stamp):
        return None
    return found[1]


def _keep(workspace: Workspace, stamp: str, ruleset: Ruleset) -> None:
    if _keepable(workspace, stamp):
        with _shared_lock:
            _kept[workspace.name] = ((workspace.incarnation, stamp), ruleset)


def _keepable(workspace: Workspace, stamp: str) -> bool:
    """Only a registry's workspace has an incarnation ("" otherwise: a declared one no registry holds, whose context
    is never rebuilt), and only a version with a digest has rules known by it."""
    number, _, digest = stamp.partition(":")
    return bool(workspace.incarnation and number.isdigit() and digest)


def forget(name: str) -> None:
    """Let go of what is kept for workspace `name` (this process serves it no longer)."""
    with _shared_lock:
        _kept.pop(name, None)


# Rules compiled from the same texts are the same rules, so workspaces whose rules are the same texts
# (a thousand of one checkout, or one bundle uploaded to many) share one copy: each cost ~45 ms to
# compile and ~500 objects to keep (the example rules; bench/RESULTS.md section 33). Rules are
# immutable once loaded; a copy lives while a workspace of the process uses it.
_shared: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()
# Rule sets this process compiled (folders and bundles): a compile of a large bundle is seconds of CPU on the thread
# that needed the rules, so tests and benchmarks count them rather than time them.
compiles = 0


def _deciding(texts: list[tuple[str, str]], last_good: dict[str, str]) -> list[tuple[str, str]]:
    """The last good texts that can change what `texts` load to: those of the folder's files that differ
    from the file. A workspace's first load records its texts as last good, and its next (a poller's
    scheduler, say) would otherwise not share the copy of the first."""
    now = {Path(path).name: text for path, text in texts}
    return sorted((name, text) for name, text in last_good.items() if name in now and now[name] != text)


def shared(source: tuple, load: Callable[[], T]) -> T:
    """What `load()` gives for `source` (the texts it reads, and what else decides it), loaded once while in use."""
    key = hashlib.sha256(repr(source).encode()).digest()
    with _shared_lock:
        found = _shared.get(key)
    if found is not None:
        return found
    global compiles
    with _shared_lock:
        compiles += 1
    loaded = load()  # outside the lock: two first loads of one source at once both compile, one is kept
    # What the compile parsed and checked on its way (~0.4 MB in a web process) is garbage now: its pages go back
    # to the kernel rather than stay in the process's RSS (~0.1 ms against the compile's tens; issue 22).
    heap.release()
    with _shared_lock:
        return _shared.setdefault(key, loaded)


_folder_looks: dict[str, tuple[float, float, str]] = {}  # rules folder → (monotonic, wall time, stamp) of a look


def folder_stamp(path: str, *, not_before: float | None = None) -> tuple[float, str]:
    """(time.time() the look began, the folder's rule files with their mtimes and sizes).

    One look serves every workspace of the process on the same folder for RULES_RECHECK_SECONDS
    (a hosted poller may follow a thousand workspaces of one checkout: each stat-ing every file every
    few seconds was a tenth of its CPU), unless it began before `not_before`.
    """
    looked = _folder_looks.get(path)
    if looked is not None and time.monotonic() - looked[0] <= RULES_RECHECK_SECONDS \
            and (not_before is None or looked[1] > not_before):
        return looked[1], looked[2]
    clock, began = time.monotonic(), time.time()
    files = rule_files(path) if Path(path).exists() else []
    stamp = "\n".join(f"{f}\t{st.st_mtime_ns}\t{st.st_size}" for f in files for st in (f.stat(),))
    _folder_looks[path] = (clock, began, stamp)
    return began, stamp


@dataclass
class WorkerContext:
    """One workspace's clients and settings in this process."""

    workspace: Workspace
    client: Client
    connection: redis.Redis
    outbound: OutboundPolicy
    rule_env: dict
    rules: RuleSource
    run_lease: float = 45.0  # seconds a run's lock lasts unless renewed (see run_lease)
    settle_seconds: float = 60.0  # a create whose answer was lost is sent again only after this (INLOOX_SETTLE_SECONDS)
    outage_seconds: float = 24 * 3600.0  # a run waits this long for an unreachable InLoox (INLOOX_OUTAGE_HOURS)
    delivery_schedule: tuple[float, ...] | None = None  # change-feed retry delays (None: workers.deliveries.SCHEDULE)
    keyring: Keyring | None = None  # opens sealed secrets (subscriptions'); None: no usable SECRETS_KEY
    slack_response_hosts: str = "hooks.slack.com"  # where chat results may be posted (SLACK_RESPONSE_HOSTS)

    def ruleset(self) -> Ruleset:
        return self.rules.ruleset()


def rule_env(config: dict, environ=os.environ) -> dict:
    """The environment variables rules may read as `env.NAME`: only those named in RULES_ENV.

    An allow-list, not everything: a rule's http step could otherwise send INLOOX_API_KEY away.
    """
    return {name: environ[name] for name in config["RULES_ENV"].split() if name in environ}


def _inloox_answer(text: str):
    """An InLoox answer as data, held to a webhook body's limits: a workspace's InLoox may be its own server."""
    return parse_json(text, "the answer", repair=True)


def inloox_client(config: dict, workspace: Workspace, connection: redis.Redis, *, timeout: float | None = None) -> Client:
    """The workspace's InLoox client: it counts requests and obeys the shared rate limit; answers within `timeout`
    seconds (INLOOX_TIMEOUT unless given)."""
    throttle = Throttle(connection, workspace.prefix + "inloox:rate", workspace.limits.inloox_requests_per_second,
                        on_refused=metrics.refusal_observer(workspace.name))
    # The process's InLoox connections are kept for as many requests as its threads can have out at
    # once: a smaller pool closed every connection beyond it after use ("Connection pool is full,
    # discarding connection", hundreds of times per 3,000 writes), so those writes each opened a new one.
    return Client(workspace.inloox_url, workspace.inloox_api_key,
                  timeout=float(config["INLOOX_TIMEOUT"]) if timeout is None else timeout,
                  on_response=metrics.request_observer(workspace.name), throttle=throttle,
                  pool_size=threads(config), parse=_inloox_answer)


def build_context(config: dict, workspace: Workspace, connection: redis.Redis, *,
                  compile_bundle: Callable[[list[tuple[str, str]]], Ruleset] = load_texts) -> WorkerContext:
    """The context of one workspace; its InLoox client counts requests and obeys the shared rate limit."""
    client = inloox_client(config, workspace, connection)
    rules = RuleSource(connection, workspace, compile_bundle=compile_bundle)
    return WorkerContext(workspace=workspace, client=client, connection=connection,
                         outbound=OutboundPolicy.from_setting(config["OUTBOUND_ALLOW"]),
                         rule_env=rule_env(config), rules=rules,
                         run_lease=run_lease(float(config["INLOOX_TIMEOUT"])),
                         settle_seconds=float(config.get("INLOOX_SETTLE_SECONDS", 60)),
                         outage_seconds=float(config.get("INLOOX_OUTAGE_HOURS", 24)) * 3600,
                         delivery_schedule=retry_schedule(config.get("DELIVERY_RETRY_SECONDS", "")),
                         keyring=keyring_of(config),
                         slack_response_hosts=config.get("SLACK_RESPONSE_HOSTS", "hooks.slack.com"))


_keyless_told = False  # said once per process, not once per workspace


def keyring_of(config: dict) -> Keyring | None:
    """The keyring of SECRETS_KEY, or None (said once) when it has none usable: then only secrets
    stored in plain text before sealing began can be used."""
    global _keyless_told
    try:
        return Keyring.from_config(config)
    except SecretsKeyError as exc:
        if not _keyless_told:
            _keyless_told = True
            log.warning("no usable SECRETS_KEY (%s): sealed subscription secrets cannot sign deliveries", exc)
        return None


def retry_schedule(setting: str) -> tuple[float, ...] | None:
    """DELIVERY_RETRY_SECONDS "5 300 1800": the delays before a failed delivery's next attempts."""
    delays = tuple(float(part) for part in setting.replace(",", " ").split())
    return delays or None


def run_lease(inloox_timeout: float) -> float:
    """How long a run's lock lasts unless renewed: longer than any one step can take.

    A step makes at most three InLoox requests (a create's marker look-up and its POST; an update's
    read and PATCH), each bounded by the client's timeout; renewed before every step. 45 s at the
    default 10 s timeout: a killed worker's run is taken up again within about a minute.
    """
    return 3 * inloox_timeout + 15


def workspace_job(body):
    """Make `body(ctx, argument)` an RQ job `job(argument, workspace)` that works for that workspace.

    Jobs name their workspace as their last argument (JSON, never a client or token); the job
    runs with that workspace's context and inside it, so every Redis key it touches is its own.
    """
    @functools.wraps(body)
    def job(argument, workspace: str = DEFAULT):
        ctx = worker_context(workspace)
        with using(ctx.workspace):
            return body(ctx, argument)

    return job


class UnknownWorkspace(LookupError):
    """A job or request names a workspace this deployment does not serve."""


_config: dict | None = None
_connection: redis.Redis | None = None
_served: Served | None = None  # made with the first context
_contexts: dict[str, WorkerContext] = {}
_build_lock = threading.Lock()


def served() -> Served:
    """What this process serves: its declared workspaces and the registry's others, live."""
    _settings()
    return _served


def worker_context(workspace: str) -> WorkerContext:
    """This process's context of `workspace`, built on first use and again when the workspace changed.

    A workspace created, changed or paused through the operator API is followed within a second
    or so (workers/registry); one it no longer serves raises UnknownWorkspace.
    """
    _settings()
    current = _served.workspaces().get(workspace)
    with _build_lock:
        if current is None:
            _contexts.pop(workspace, None)
            forget(workspace)
            raise UnknownWorkspace(f"this deployment serves no workspace {workspace!r}")
        ctx = _contexts.get(workspace)
        if ctx is None or (ctx.workspace is not current and ctx.workspace != current):
            ctx = _contexts[workspace] = build_context(_config, current, _connection)
        return ctx


def _settings() -> None:
    global _config, _connection, _served
    with _build_lock:
        if _config is None:
            _config = load_config()
            _connection = redis_client(_config)
            _served = Served(_connection, _config)
