"""The settings of every process (web, worker, poller, scheduler) and of every `flask` command.

Each setting is found in the first of these that has it:

1. the process's environment;
2. `.flaskenv`, then `.env` (in the current folder);
3. `var/stack.env` (another file if STACK_ENV names one; none if it is empty): what `make run`
   chose, so that a `flask` command in a second shell talks to the stack that is running;
4. DEFAULTS, the same as `make run`'s, so a fresh clone needs no settings at all.

The files are loaded into `os.environ` without overriding it (python-dotenv's rule), so variables
that are not settings, such as those rules read as `env.NAME`, come from them too.

Two development switches of `make run` are not defaults here, because a production process started
without them must stay closed: DEV_INBOX (the /dev/inbox page) and OUTBOUND_ALLOW (private hosts
notifications may reach). `make run` writes both to `var/stack.env`.

workers/ sits below the web, so this module lives here: app.py and web/ import it, and nothing in
workers/ imports app.py or web/ for its configuration.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import redis
from dotenv import load_dotenv
from redis.backoff import NoBackoff
from redis.retry import Retry

from workers.secrets import Keyring, SecretsKeyError
from workers.workspaces import WorkspaceConfigError, load_workspaces

STACK_ENV = "var/stack.env"
# Ports of `make run`'s embedded Valkey and sandbox. Alone, each gives the URL `make run` builds
# from it (REDIS_URL, INLOOX_URL). Not settings of their own: rq-dashboard, mounted in the app,
# would take a REDIS_PORT in the app's config for its own connection.
PORTS = {"REDIS_PORT": "6390", "SANDBOX_PORT": "8090"}
# `make run`'s web port (PORT, also in var/stack.env): where a `flask` command finds the web it talks to over
# HTTP (`flask webhooks send`). Not in PORTS: every process parses those, and honcho or a platform sets PORT.
WEB_PORT = "8000"

# Every setting, its environment variable and its default.
DEFAULTS = {
    "INLOOX_URL": "http://127.0.0.1:8090/api/odata/",
    # The sandbox's token of the automation's own user (Automation Bot), as under `make run`: its
    # writes are not a person's, so they never trigger rules again.
    "INLOOX_API_KEY": "sandbox-engine-token",
    "INLOOX_TIMEOUT": "10",
    "INLOOX_SETTLE_SECONDS": "60",
    # Hours a run waits for an InLoox that cannot be reached (or answers 502/503/504) before it fails;
    # such failures use none of a rule's retry attempts (workers/jobs.py).
    "INLOOX_OUTAGE_HOURS": "24",
    "REDIS_URL": "redis://127.0.0.1:6390/0",
    "RULES_PATH": "rules",
    # Environment variables rules may read as `env.NAME` (an allow-list: never the InLoox token).
    "RULES_ENV": "TEAM_CHANNEL_URL SLACK_WEBHOOK_URL TEAMS_WEBHOOK_URL",
    # Hosts that notifications and http steps may reach although they are private (development).
    "OUTBOUND_ALLOW": "",
    # Bearer token for the runs API (and later the dashboard); empty: open (local development).
    "ADMIN_TOKEN": "",
    # "1": serve /dev/inbox, a local stand-in for Slack/Teams (make run sets it).
    "DEV_INBOX": "",
    # Chat commands: Slack's signing secret, the Teams outgoing webhook's security token (base64),
    # and chat user id → InLoox email or ContactId ("U2CERLKJA=ann@example.com, U0X=…").
    "SLACK_SIGNING_SECRET": "",
    "TEAMS_SECURITY_TOKEN": "",
    "CHAT_USER_MAP": "",
    # Hosts a Slack response_url may point at, comma-separated (workers/chat.py): Slack's is always
    # https://hooks.slack.com/…, and any other would have workers post run results wherever a request said.
    # A bare host is https only; `http://HOST` also allows plain http (a local stand-in, in tests).
    "SLACK_RESPONSE_HOSTS": "hooks.slack.com",
    # InLoox requests per second of the default workspace, shared by all processes (0: no limit).
    "INLOOX_REQUESTS_PER_SECOND": "5",
    # Webhooks the default workspace accepts a second, after a burst of ten seconds' worth (0: no limit).
    "WEBHOOKS_PER_SECOND": "0",
    # Worker processes: at most this many events in flight at once, each on a thread (runs mostly
    # wait on InLoox; how many are in flight adapts to InLoox's answers, workers/consumer/in_flight.py),
    # at most this many of one workspace per read (0: no cap), and the CPU priority they lower
    # themselves to, so that the web keeps answering senders on a small machine.
    "WORKER_THREADS": "400",
    "WORKER_THREADS_PER_WORKSPACE": "0",
    # RQ's jobs (retries, holds, deliveries, chat replies) a worker runs at once, each on a thread, and at
    # most this many of one workspace: one whose InLoox or subscriber hangs holds no other's (workers/worker.py).
    "WORKER_JOBS": "16",
    "WORKER_JOBS_PER_WORKSPACE": "4",
    "WORKER_NICE": "10",
    # 1: a worker also polls InLoox and fires schedules, on threads beside its events (the work of
    # `python -m workers.poller --with-scheduler`, one process fewer; the Procfile's choice); 0: poller
    # processes do it. Workspaces are split between every process that polls, by lease.
    "WORKER_POLLS": "0",
    # The workspaces a worker serves, comma-separated (a shard of a large deployment); empty: all
    # of the registry's, followed live.
    "WORKER_WORKSPACES": "",
    # Hosted: a YAML file listing the workspaces (docs/deploy.md); unset: one workspace, "default",
    # configured by the settings above.
    "WORKSPACES_FILE": "",
    # Keys that encrypt every secret the workspace registry keeps (workers/secrets): Fernet keys,
    # comma-separated, newest first. No default: `make run` generates one into var/secrets.key.
    "SECRETS_KEY": "",
    # Hosted: the operator's bearer token, accepted for every workspace (each also has its own).
    "OPERATOR_TOKEN": "",
    # Change-feed deliveries: seconds before each retry of a failed one (empty: the Standard
    # Webhooks schedule, then a day: about two days; workers/deliveries.py).
    "DELIVERY_RETRY_SECONDS": "",
    # Seconds between two samples of the gauges the dashboard charts (queue depth, poll lag); a
    # chart shows one point per minute, so less than 60 only helps tests.
    "SERIES_SAMPLE_SECONDS": "60",
    # The least level of the log lines every process writes: DEBUG adds, e.g., a worker's changes of
    # how many events it keeps in flight (workers/consumer/in_flight.py).
    "LOG_LEVEL": "INFO",
    # Pollers: seconds between polls of the change feeds, between sweeps for deleted rows, and a
    # poller's lease on a workspace; scans of sets without a change time ("60 Contact=30": per
    # set) and the least interval allowed. Schedulers: seconds between looks for due ticks.
    "POLL_INTERVAL": "2",
    "POLL_SWEEP_SECONDS": "300",
    "POLL_LEASE_SECONDS": "15",
    "POLL_SCAN_SECONDS": "60",
    "POLL_SCAN_FLOOR_SECONDS": "10",
    # Seconds a change feed's poll reads back before its cursor: a row InLoox stamped before it committed (a long
    # transaction, a bulk import) shows up with a change time the cursor has passed.
    "POLL_OVERLAP_SECONDS": "5",
    # Workspaces one poller polls at the same time: an InLoox account that answers slowly (or not
    # until the client's timeout) holds one of these, not every other workspace's polls.
    "POLL_THREADS": "8",
    # Adaptive polling (workers/poller/pace.py): a set quiet this long (no change, nothing accepted
    # into its workspace's log, nobody on its dashboard) is polled half as often, again each such
    # period, up to POLL_MAX_INTERVAL (change feeds) or POLL_SCAN_MAX_SECONDS (scans). 0: never back off.
    "POLL_IDLE_AFTER_SECONDS": "60",
    "POLL_MAX_INTERVAL": "30",
    "POLL_SCAN_MAX_SECONDS": "600",
    "SCHEDULE_INTERVAL": "5",
    # Seconds of CPU time an uploaded rule bundle's validation, or the What-if page's comparison, may take, in a
    # child process of the web (web/bundle_check.py); past it the upload is refused 413 and the page says the
    # comparison is too costly. The largest bundle takes ~5-6 s to validate; a comparison compiles both versions
    # and plans events for up to 5 s more (~15 s for two of the largest).
    "BUNDLE_CHECK_CPU_SECONDS": "30",
    # Bytes of workspace exports one web process keeps on disk at once, from their writing until their downloads
    # end (web/export_disk.py): past it an export is refused 429 until downloads end (409 for one archive larger
    # than this alone; a workspace keeps one archive at a time). 4 GiB: two of the largest archives (EXPORT_MAX_BYTES,
    # workers/workspace_export.py).
    "EXPORT_DISK_BYTES": str(4 * 1024 ** 3),
}


def load_config() -> dict:
    """Every setting (see the module docstring for where each is found), plus the workspaces served.

    A broken WORKSPACES_FILE stops the process with its errors (SystemExit), not a traceback; so does
    a SECRETS_KEY that is set but holds an entry that is not a Fernet key (the message names the entry,
    never the key). An empty SECRETS_KEY is allowed: the process serves its declared workspaces alone.
    """
    read_setting_files()
    config = settings_from(os.environ)
    check_secrets_key(config)
    try:
        config["WORKSPACES"] = load_workspaces(config)
    except WorkspaceConfigError as exc:
        # No process can serve with a broken workspaces file: each stops with its errors (file:line:
        # field), not a traceback.
        raise SystemExit(f"Error: {exc}") from None
    return config


REDIS_SPARE_CONNECTIONS = 32  # beyond the threads a process runs: its loops, sweeps and RQ's own
# How long an answer or a new connection may take. Without a limit (redis-py's default before 8.0),
# a Redis cut off by the network, nothing closed (a failover that moved its address, a NAT that lost
# its state), held each thread waiting on it for good once Redis was reachable again
# (tests/integration/test_recovery.py). Said here, not left to the library's default (5 s since 8.0).
# Longer than any command the processes send takes: their blocking reads wait 2 s at most.
REDIS_SOCKET_TIMEOUT = 5.0


def send_once() -> Retry:
    """redis-py's retry policy for every client of the processes: none. A command, or a pipeline, whose answer was
    lost (a connection reset after the write, an answer slower than the socket timeout) may have been executed:
    sent again by redis-py, an INCR counted twice, a run's end billed twice, a SET NX claim answered nil to the
    process that took it (tests/integration/test_redis_resend.py). The error is raised instead, and the caller's
    recovery, built for an outcome it does not know, handles it (the event handled again, the ledger's "sent" mark,
    the run's `billed` mark). Said here, not left to how a client is built: `redis.Redis(host=…)` retries 10 times
    by default, and REDIS_URL's `?retry_on_timeout=true`, which redis-py honours, gave every client a retry."""
    return Retry(NoBackoff(), 0)


def redis_client(config: Mapping[str, str]) -> redis.Redis:
    """The process's Redis client, with room in its pool for every thread the settings give it.

    redis-py's pool refuses a 101st connection ("Too many connections"): a worker with more than
    about 90 WORKER_THREADS failed events in a burst, and a poller starting many scans at once failed
    them. The pool holds the process's threads and some spare, and a thread beyond that waits for a
    free connection (up to 20 s) instead of failing.
    """
    pool = redis.BlockingConnectionPool.from_url(config["REDIS_URL"], timeout=20,
                                                 max_connections=max(100, threads(config) + REDIS_SPARE_CONNECTIONS),
                                                 socket_timeout=REDIS_SOCKET_TIMEOUT,
                                                 socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
                                                 retry=send_once())
    return redis.Redis(connection_pool=pool)


def threads(config: Mapping[str, str]) -> int:
    """The most threads a process's settings let it run at once (a worker's events and jobs, a poller's polls)."""
    return (int(config.get("WORKER_THREADS") or 0) + int(config.get("WORKER_JOBS") or 0)
            + int(config.get("POLL_THREADS") or 0))


def check_secrets_key(config: Mapping[str, str]) -> None:
    """Stop the process (SystemExit) when SECRETS_KEY is set but an entry is not a Fernet key.

    A typo must not pass for a missing key: the process would serve its declared workspaces alone,
    and every workspace created through the API would answer 404 on it (docs/deploy.md, "Secrets at rest").
    """
    if not any(key.strip() for key in (config.get("SECRETS_KEY") or "").split(",")):
        return  # empty: no registry, said once by each process (workers/registry/_served.py)
    try:
        Keyring.from_config(config)
    except SecretsKeyError as exc:
        raise SystemExit(f"Error: {exc}") from None


def secrets_key(environ: Mapping[str, str] = os.environ) -> dict:
    """{"SECRETS_KEY": …} from the environment, for apps built with a test config (tests set it there)."""
    return {"SECRETS_KEY": environ.get("SECRETS_KEY", "")}


def read_setting_files() -> None:
    """Load `.flaskenv`, `.env` and the stack file into os.environ, never over a value already there."""
    load_dotenv(".flaskenv")
    load_dotenv(".env")
    stack_env = os.environ.get("STACK_ENV", STACK_ENV)
    if stack_env:
        load_dotenv(stack_env)


def settings_from(environ: Mapping[str, str]) -> dict:
    """The settings an environment gives, with DEFAULTS for the rest (no files read)."""
    fallback = {**DEFAULTS, **_urls_from_ports(environ)}
    config = {name: environ.get(name, default) for name, default in fallback.items()}
    config["WEBHOOK_SOURCES"] = webhook_sources(environ)
    return config


def ports(environ: Mapping[str, str]) -> dict[str, int]:
    """REDIS_PORT and SANDBOX_PORT as the environment gives them, or `make run`'s."""
    return {name: int(environ.get(name, default)) for name, default in PORTS.items()}


def web_url(environ: Mapping[str, str] = os.environ) -> str:
    """The running web's base URL as `make run` serves it: http://127.0.0.1:$PORT (8000 when PORT is unset)."""
    return f"http://127.0.0.1:{environ.get('PORT') or WEB_PORT}"


def _urls_from_ports(environ: Mapping[str, str]) -> dict:
    # `REDIS_PORT=6491 flask …` should reach the Valkey that `REDIS_PORT=6491 make run` started,
    # as the Makefile builds REDIS_URL and INLOOX_URL from the ports.
    given = ports(environ)
    return {"REDIS_URL": f"redis://127.0.0.1:{given['REDIS_PORT']}/0",
            "INLOOX_URL": f"http://127.0.0.1:{given['SANDBOX_PORT']}/api/odata/"}


def webhook_sources(environ: Mapping[str, str]) -> dict[str, list[str]]:
    """`WEBHOOK_SECRET_FORMS="whsec_new whsec_old"` → {"forms": [...]}: one or two active secrets."""
    prefix = "WEBHOOK_SECRET_"
    return {
        name[len(prefix):].lower().replace("_", "-"): value.split()
        for name, value in environ.items() if name.startswith(prefix) and value.split()
    }
