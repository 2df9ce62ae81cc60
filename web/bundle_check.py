"""A rule bundle's validation, its YAML parsed for the web's compile, and a what-if comparison of two versions, in a
process of its own, held to a CPU time and a memory limit.

    python -m web.bundle_check check PARENT_PID CPU_SECONDS MEMORY_BYTES
        # stdin: the files as JSON {name: YAML text}; stdout: {"rule_ids": [...], "errors": [{RuleError's fields}]}
    python -m web.bundle_check parse PARENT_PID CPU_SECONDS MEMORY_BYTES
        # stdin: [[name, YAML text], ...]; stdout: {"files": [[name, RuleError's fields or [document JSON, ...]]]}
    python -m web.bundle_check whatif PARENT_PID CPU_SECONDS MEMORY_BYTES
        # stdin: JSON lines: {"candidate": files, "active": files, "env": {...}, "seconds": planning time}, then
        #        [event, accepted_at] for each event; stdout: engine.whatif's report as a dict (`compare`)

Validating the largest bundle an upload may hold (1 MB of YAML, ~1,400 rules) takes ~5-6 s of CPU. In the web
process it held the process's one GIL in stretches all that time: every workspace's webhooks on that process waited
for it, acknowledged in 14 ms rather than 4 (p50; up to 116 ms: bench/bundle_upload.py). `check_in_child` runs it here
instead, and the web thread waits on a pipe, which needs no GIL. The child lowers its CPU priority and may run on
any core (the web keeps to one: workers/cores.py), so the web's own threads keep the CPU first.

The what-if page (/ui/whatif) compiles a stored version and the active one (~5.6 s of CPU each for the largest)
and plans the last week's events against both (up to WHATIF_SECONDS): `whatif_in_child` runs that here too, with
the same limits and the same child, so a comparison holds none of the web's GIL either. Its events go to the child
one line each, written as the child reads them and read a line at a time: sent as one message, 10,000 logged events
of up to 64 KiB (over 600 MiB as JSON, more with text's escapes) were held whole by the web, and by the child,
which needs the memory of both the message and the events it parses, past MEMORY_BYTES: the page said the
comparison was too costly although comparing them is cheap. Now the web holds the page of events it reads
(web/ui.py) and a line, the child an event at a time.

The limits bound what one upload or comparison may cost: past CPU_SECONDS of CPU time (RLIMIT_CPU, its own start
of ~0.3 s included) or MEMORY_BYTES of address space (RLIMIT_AS) the child stops and the work is TooCostly (an
upload's 413, the what-if page's notice). The child dies with the web (PR_SET_PDEATHSIG on Linux; elsewhere its CPU
limit ends it). The child validates with `workers.bundles.check` and compares with `engine.whatif`, so the answer is
the one the web would have found itself, error for error.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from engine import Ruleset
from engine.documents import Document
from engine.errors import RuleError
from engine.rules import load_parsed, load_texts, parse_texts
from engine.whatif import whatif
from workers.bundles import COMPILE_HERE_BYTES, Checked, check

# The largest valid bundle's check peaks at ~60 MB of address space; 1 MB of one YAML list (240,000 items,
# refused as too many values) at ~200 MB.
MEMORY_BYTES = 512 * 1024 * 1024
NICE = 10  # as the workers' (WORKER_NICE): the web answers its senders first
# Seconds of the wall clock per CPU second allowed, plus a start: a child starved on a busy machine (it runs at
# NICE) is given up on rather than holding the request's thread for good.
WALL_PER_CPU_SECOND = 4
WALL_START_SECONDS = 10
CPU_EXIT, MEMORY_EXIT = 3, 4  # the child's exit codes for a limit it reached
WRITE_BYTES = 1024 * 1024  # of a line, at most, per write to the child (its pipe takes what it has room for)
READ_BYTES = 64 * 1024
_ROOT = Path(__file__).resolve().parents[1]  # where `-m web.bundle_check` imports from
log = logging.getLogger(__name__)
_FIELDS = ("message", "file", "line", "col", "path", "hint", "rule_id", "detail")  # RuleError's, all of them


class TooCostly(Exception):
    """The work needs more CPU time or memory than the child may use (an upload's 413, the what-if page's notice);
    nothing stored."""


class Unfinished(Exception):
    """The child ended without an answer, though not at a limit (the machine too busy, the child killed from
    outside): nothing was decided, a retry may succeed (503)."""


@dataclass(frozen=True)
class _Work:
    """One kind of work the child does, and how its answers name it to the person who asked."""

    run: Callable[[BinaryIO], dict]  # in the child: its stdin → the JSON written to stdout
    name: str  # "… did not finish", "… was stopped", "… failed"
    costly: str  # "…: <doing it> takes more than N s of CPU time"
    of: str  # "the most <of> may use"
    advice: str
    retry: str  # after Unfinished: what was (not) done, and to try again


def check_in_child(files: dict[str, str], *, cpu_seconds: int, memory_bytes: int = MEMORY_BYTES) -> Checked:
    """`check(files)` in a child process held to the limits; raises TooCostly or Unfinished."""
    found = _in_child("check", [json.dumps(files).encode()], cpu_seconds=cpu_seconds, memory_bytes=memory_bytes)
    return Checked(found["rule_ids"], [RuleError(**fields) for fields in found["errors"]])


def compile_bundle(files: list[tuple[str, str]], *, cpu_seconds: int) -> Ruleset:
    """`load_texts(files)` for the web (a manual run, a chat command, the rules page): the YAML parsed and checked in a
    child, ~90 % of the CPU (in the web, 5-7 s of its GIL for 1 MB: every workspace's acks on it took 14 ms, not 3,
    p99 98 ms, not 5); the web builds the rules from its documents (~0.7 s). Up to COMPILE_HERE_BYTES of text, or
    when the child does not answer or fails, compiled here as before: the same rules."""
    if sum(len(text) for _, text in files) <= COMPILE_HERE_BYTES:
        return load_texts(files)
    try:
        parsed = _in_child("parse", [json.dumps(files).encode()], cpu_seconds=cpu_seconds, memory_bytes=MEMORY_BYTES)
    except (TooCostly, Unfinished, RuntimeError, OSError, ValueError) as exc:
        # A child that failed for any reason (its limits, no process to be had, a bug of its own, logged here) costs
        # the customer nothing but this process's CPU: the same rules, compiled here, not a 500 for their command.
        log.warning("compiling the rule bundle in the web process: %s", exc)
        return load_texts(files)
    # Each document its own JSON text: 1 MB of rules is ~3 MB of documents, and json.loads held the GIL for all of it
    # at once (170 ms); one document's is a fraction of a millisecond, the text around them ~7 ms.
    return load_parsed((file, RuleError(**docs) if isinstance(docs, dict)
                        else [Document.from_json(json.loads(d)) for d in docs]) for file, docs in parsed["files"])


def whatif_in_child(candidate: dict[str, str], active: dict[str, str], events: Iterable[tuple[dict, float]], *,
                    env: dict, seconds: float, cpu_seconds: int, memory_bytes: int = MEMORY_BYTES) -> dict:
    """`compare(...)` in a child process held to the limits; raises TooCostly or Unfinished.

    `events` are taken one at a time as the child reads them, and no more once it stops reading (its planning time
    is up): neither side holds them all."""
    work = {"candidate": candidate, "active": active, "env": env, "seconds": seconds}
    lines = (json.dumps([event, at]).encode() + b"\n" for event, at in events)  # json escapes every line break
    return _in_child("whatif", itertools.chain([json.dumps(work).encode() + b"\n"], lines), cpu_seconds=cpu_seconds,
                     memory_bytes=memory_bytes)


def compare(candidate: dict[str, str], active: dict[str, str], events: Iterable[tuple[dict, float]], *, env: dict,
            seconds: float) -> dict:
    """engine.whatif's report (`to_dict`) of the candidate files against the active ones over (event, acceptance time
    as a Unix timestamp) pairs, oldest first; events are planned for `seconds` at most, the rest left out."""
    timed = ((event, datetime.fromtimestamp(at, timezone.utc)) for event, at in events)
    # The active files compile as the workers compile them (workers.worker_context.RuleSource): sorted by name.
    return whatif(_for_seconds(timed, seconds), candidate=load_texts(sorted(candidate.items())),
                  active=load_texts(sorted(active.items())), env=env).to_dict()


def _for_seconds(items, seconds: float):
    """`items` until `seconds` have passed since the first was asked for (the rest are not yielded)."""
    deadline = time.monotonic() + seconds
    for item in items:
        if time.monotonic() > deadline:
            return
        yield item


def _checked(given: BinaryIO) -> dict:
    checked = check(json.loads(given.read()))
    errors = [{name: getattr(error, name) for name in _FIELDS} for error in checked.errors]
    return {"rule_ids": checked.rule_ids, "errors": errors}


def _parsed(given: BinaryIO) -> dict:
    parsed = parse_texts(json.loads(given.read()), check_schema=True)
    return {"files": [[file, {name: getattr(docs, name) for name in _FIELDS} if isinstance(docs, RuleError)
             else [json.dumps(doc.to_json()) for doc in docs]] for file, docs in parsed]}


def _compared(given: BinaryIO) -> dict:
    work = json.loads(given.readline())
    events = (json.loads(line) for line in given)  # a line at a time, as compare plans them
    return compare(work["candidate"], work["active"], events, env=work["env"], seconds=work["seconds"])


_WORK = {
    "check": _Work(_checked, "the rule bundle's check", "the rule bundle is too costly to check: validating it",
                   "an upload", "upload fewer or simpler rules", "nothing was stored, try again"),
    "parse": _Work(_parsed, "the rule bundle's compile", "the rule bundle is too costly to compile: parsing it",
                   "a compile", "upload fewer or simpler rules", "try again"),
    "whatif": _Work(_compared, "the what-if comparison",
                    "the comparison is too costly: compiling both versions and planning the events with them",
                    "a what-if comparison", "compare them with `flask rules whatif --rules DIR`, off the web",
                    "try again"),
}


def _in_child(kind: str, given: Iterable[bytes], *, cpu_seconds: int, memory_bytes: int) -> dict:
    """The JSON the child writes for `given` (its stdin, a part at a time), doing the `kind` of work within the
    limits."""
    work = _WORK[kind]
    args = [sys.executable, "-m", "web.bundle_check", kind, str(os.getpid()), str(cpu_seconds), str(memory_bytes)]
    wall = cpu_seconds * WALL_PER_CPU_SECOND + WALL_START_SECONDS
    # env: the web's environment holds secrets (tokens, SECRETS_KEY); the work reads none of it (a what-if's rule
    # env, the RULES_ENV variables rules may read, comes in on stdin).
    with subprocess.Popen(args, cwd=_ROOT, env={}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as child:
        try:
            out, err = _exchange(child, iter(given), deadline=time.monotonic() + wall)
        except subprocess.TimeoutExpired:
            raise Unfinished(f"{work.name} did not finish in {wall} s (the server is busy); {work.retry}") from None
        finally:
            if child.returncode is None:  # timed out, or this thread interrupted: no child outlives its request
                child.kill()
    _refuse_failed(work, child.returncode, err, cpu_seconds=cpu_seconds, memory_bytes=memory_bytes)
    return json.loads(out)


def _exchange(child: subprocess.Popen, given: Iterator[bytes], *, deadline: float) -> tuple[bytes, bytes]:
    """Popen.communicate, its input taken a part at a time as the child reads it (communicate takes it whole): the
    child's stdout and stderr once it has ended. Raises subprocess.TimeoutExpired past `deadline`.

    A child that stops reading (done with what it wants, or failed) is given no more: the rest of `given` is left."""
    found: dict[int, list[bytes]] = {child.stdout.fileno(): [], child.stderr.fileno(): []}
    writing, written = memoryview(b""), 0
    os.set_blocking(child.stdin.fileno(), False)  # a write takes what the pipe has room for, never waits
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdin, selectors.EVENT_WRITE)
        for stream in (child.stdout, child.stderr):
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            ready = selector.select(left) if left > 0 else []
            if not ready:
                raise subprocess.TimeoutExpired(child.args, 0)
            for selected, _ in ready:
                if selected.fileobj is not child.stdin:
                    data = os.read(selected.fd, READ_BYTES)
                    if data:
                        found[selected.fd].append(data)
                    else:  # the child closed it (it ended)
                        selector.unregister(selected.fileobj)
                    continue
                if written == len(writing):
                    part = next(given, None)
                    if part is None:
                        selector.unregister(child.stdin)
                        child.stdin.close()  # all given: the child reads to its end
                        continue
                    writing, written = memoryview(part), 0
                try:
                    written += os.write(selected.fd, writing[written:written + WRITE_BYTES])
                except BlockingIOError:
                    pass  # no room after all; the selector says when there is
                except BrokenPipeError:  # the child reads no more
                    selector.unregister(child.stdin)
                    child.stdin.close()
    child.wait(max(deadline - time.monotonic(), 0))  # its pipes closed: it ends, or TimeoutExpired
    return b"".join(found[child.stdout.fileno()]), b"".join(found[child.stderr.fileno()])


def _refuse_failed(work: _Work, code: int, err: bytes, *, cpu_seconds: int, memory_bytes: int) -> None:
    # SIGXCPU: the soft CPU limit met the child in C code, its handler not run; SIGKILL: the hard limit after it.
    if code in (CPU_EXIT, -signal.SIGXCPU, -signal.SIGKILL):
        raise TooCostly(f"{work.costly} takes more than {cpu_seconds} s of CPU time, the most {work.of} may use; "
                        f"{work.advice}")
    if code in (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS):
        # Where C code meets the memory limit it may crash rather than raise MemoryError (seen at the limit's edge);
        # a child that crashes for another reason would crash again, so a retry helps neither way.
        log.warning("%s crashed (signal %s), taken as out of memory: %s", work.name, signal.Signals(-code).name,
                    err.decode(errors="replace")[-2000:])
        code = MEMORY_EXIT
    if code == MEMORY_EXIT:
        raise TooCostly(f"{work.costly} takes more than {memory_bytes // (1024 * 1024)} MiB of memory, the most "
                        f"{work.of} may use; {work.advice}")
    if code < 0:
        raise Unfinished(f"{work.name} was stopped by signal {signal.Signals(-code).name}; {work.retry}")
    if code != 0:  # a bug in the work: the web's 500, with the child's traceback for its log
        raise RuntimeError(f"{work.name} failed (exit {code}): {err.decode(errors='replace')[-2000:]}")


def main(argv: list[str]) -> int:
    """The child: read the work's input, do it within the limits, write what was found."""
    kind = argv[0]
    parent, cpu_seconds, memory_bytes = (int(arg) for arg in argv[1:])
    _die_with(parent)
    _limit(cpu_seconds, memory_bytes)
    _yield_cpu()
    try:
        found = _WORK[kind].run(sys.stdin.buffer)
    except MemoryError:
        return MEMORY_EXIT
    sys.stdout.write(json.dumps(found))
    return 0


def _die_with(parent: int) -> None:
    # A web killed outright (SIGKILL, a crash) leaves no check running on. Linux signals the child when the thread
    # that started it ends: the request's waitress thread, which lives longer than the request.
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the web died before prctl took effect
        os._exit(1)


def _limit(cpu_seconds: int, memory_bytes: int) -> None:
    import resource

    # At the soft limit the kernel sends SIGXCPU, whose default also dumps core: the handler exits at once, and
    # no core is written should it come in C code (the hard limit's SIGKILL follows a second later).
    signal.signal(signal.SIGXCPU, lambda signum, frame: os._exit(CPU_EXIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _yield_cpu() -> None:
    """Run below the web's priority, on any core: the web pinned its threads to one, and this child inherited it."""
    os.nice(NICE)
    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))  # the kernel keeps to the cores we may use
    except (AttributeError, OSError):
        pass  # no affinities here (macOS): the kernel places it as it likes


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
