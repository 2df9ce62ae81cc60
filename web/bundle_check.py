"""A rule bundle's validation in a process of its own, held to a CPU time and a memory limit.

    python -m web.bundle_check PARENT_PID CPU_SECONDS MEMORY_BYTES
        # stdin: the files as JSON {name: YAML text}; stdout: {"rule_ids": [...], "errors": [{RuleError's fields}]}

Validating the largest bundle an upload may hold (1 MB of YAML, ~1,400 rules) takes ~5-6 s of CPU. In the web
process it held the process's one GIL in stretches all that time: every workspace's webhooks on that process waited
for it, acknowledged in 14 ms rather than 4 (p50; up to 116 ms: bench/bundle_upload.py). `check_in_child` runs it here
instead, and the web thread waits on a pipe, which needs no GIL. The child lowers its CPU priority and may run on
any core (the web keeps to one: workers/cores.py), so the web's own threads keep the CPU first.

The limits bound what one upload may cost: past CPU_SECONDS of CPU time (RLIMIT_CPU, its own start of ~0.3 s
included) or MEMORY_BYTES of address space (RLIMIT_AS) the check stops and the bundle is TooCostly (413). The
child dies with the web (PR_SET_PDEATHSIG on Linux; elsewhere its CPU limit ends it). Both processes validate
with `workers.bundles.check`, so the answer is the one the web would have found itself, error for error.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from engine.errors import RuleError
from workers.bundles import Checked, check

# The largest valid bundle's check peaks at ~60 MB of address space; 1 MB of one YAML list (240,000 items,
# refused as too many values) at ~200 MB.
MEMORY_BYTES = 512 * 1024 * 1024
NICE = 10  # as the workers' (WORKER_NICE): the web answers its senders first
# Seconds of the wall clock per CPU second allowed, plus a start: a child starved on a busy machine (it runs at
# NICE) is given up on rather than holding the request's thread for good.
WALL_PER_CPU_SECOND = 4
WALL_START_SECONDS = 10
CPU_EXIT, MEMORY_EXIT = 3, 4  # the child's exit codes for a limit it reached
_ROOT = Path(__file__).resolve().parents[1]  # where `-m web.bundle_check` imports from
log = logging.getLogger(__name__)
_FIELDS = ("message", "file", "line", "col", "path", "hint", "rule_id", "detail")  # RuleError's, all of them


class TooCostly(Exception):
    """The bundle needs more CPU time or memory to validate than an upload's check may use (413); nothing stored."""


class Unfinished(Exception):
    """The check ended without an answer, though not at a limit (the machine too busy, the child killed from
    outside): nothing was decided, a retry may succeed (503)."""


def check_in_child(files: dict[str, str], *, cpu_seconds: int, memory_bytes: int = MEMORY_BYTES) -> Checked:
    """`check(files)` in a child process held to the limits; raises TooCostly or Unfinished."""
    args = [sys.executable, "-m", "web.bundle_check", str(os.getpid()), str(cpu_seconds), str(memory_bytes)]
    wall = cpu_seconds * WALL_PER_CPU_SECOND + WALL_START_SECONDS
    # env: the web's environment holds secrets (tokens, SECRETS_KEY); validating reads none of it.
    with subprocess.Popen(args, cwd=_ROOT, env={}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as child:
        try:
            out, err = child.communicate(json.dumps(files).encode(), timeout=wall)
        except subprocess.TimeoutExpired:
            raise Unfinished(f"the rule bundle's check did not finish in {wall} s (the server is busy); "
                             "nothing was stored, try again") from None
        finally:
            if child.returncode is None:  # timed out, or this thread interrupted: no child outlives its request
                child.kill()
    return _answer(child.returncode, out, err, cpu_seconds=cpu_seconds, memory_bytes=memory_bytes)


def _answer(code: int, out: bytes, err: bytes, *, cpu_seconds: int, memory_bytes: int) -> Checked:
    # SIGXCPU: the soft CPU limit met the child in C code, its handler not run; SIGKILL: the hard limit after it.
    if code in (CPU_EXIT, -signal.SIGXCPU, -signal.SIGKILL):
        raise TooCostly(f"the rule bundle is too costly to check: validating it takes more than {cpu_seconds} s of "
                        "CPU time, the most an upload may use; upload fewer or simpler rules")
    if code in (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS):
        # Where C code meets the memory limit it may crash rather than raise MemoryError (seen at the limit's edge);
        # a check that crashes for another reason would crash again, so a retry helps neither way.
        log.warning("the rule bundle's check crashed (signal %s), taken as out of memory: %s",
                    signal.Signals(-code).name, err.decode(errors="replace")[-2000:])
        code = MEMORY_EXIT
    if code == MEMORY_EXIT:
        raise TooCostly(f"the rule bundle is too costly to check: validating it takes more than "
                        f"{memory_bytes // (1024 * 1024)} MiB of memory, the most an upload may use; "
                        "upload fewer or simpler rules")
    if code < 0:
        raise Unfinished(f"the rule bundle's check was stopped by signal {signal.Signals(-code).name}; "
                         "nothing was stored, try again")
    if code != 0:  # a bug in the check: the web's 500, with the child's traceback for its log
        raise RuntimeError(f"the rule bundle's check failed (exit {code}): {err.decode(errors='replace')[-2000:]}")
    found = json.loads(out)
    return Checked(found["rule_ids"], [RuleError(**fields) for fields in found["errors"]])


def main(argv: list[str]) -> int:
    """The child: read the files, validate them within the limits, write what was found."""
    parent, cpu_seconds, memory_bytes = (int(arg) for arg in argv)
    _die_with(parent)
    _limit(cpu_seconds, memory_bytes)
    _yield_cpu()
    try:
        checked = check(json.loads(sys.stdin.buffer.read()))
    except MemoryError:
        return MEMORY_EXIT
    errors = [{name: getattr(error, name) for name in _FIELDS} for error in checked.errors]
    sys.stdout.write(json.dumps({"rule_ids": checked.rule_ids, "errors": errors}))
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
