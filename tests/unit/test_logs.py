"""JSON log lines: one per record, the run id when the message names one, secrets redacted."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading

import pytest
import redis

from workers import logs
from workers.logs import JsonFormatter, configure_logging, secrets_of

TOKEN = "ilx_SENTINELtokenSENTINEL"


def record(message, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("workers.jobs", logging.INFO, __file__, 1, message, args, exc_info)


@pytest.fixture
def root():
    """The root logger for a test that configures logging: its handlers and level put back afterwards,
    the writers configured meanwhile closed (their threads ended)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:], root.level = handlers, level


def test_a_record_is_one_json_line_with_its_run_id():
    line = JsonFormatter().format(record("run %s (%s): %s", "run_0123456789abcdef01234567", "r", "succeeded"))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["run_id"] == "run_0123456789abcdef01234567"
    assert parsed["level"] == "INFO" and parsed["logger"] == "workers.jobs"
    assert parsed["message"].endswith("succeeded")


def test_configured_secrets_never_appear_in_messages_or_tracebacks():
    config = {"INLOOX_API_KEY": TOKEN, "ADMIN_TOKEN": "admin-secret",
              "WEBHOOK_SOURCES": {"forms": ["whsec_abcdefgh"]}, "DEV_INBOX": "1"}
    try:
        raise ValueError(f"refused {TOKEN}")
    except ValueError as exc:
        info = (type(exc), exc, exc.__traceback__)
    line = JsonFormatter(secrets_of(config)).format(
        record("sent %s with %s and %s", TOKEN, "admin-secret", "whsec_abcdefgh", exc_info=info))
    assert TOKEN not in line and "admin-secret" not in line and "whsec_abcdefgh" not in line
    assert json.loads(line)["message"] == "sent *** with *** and ***"
    assert "refused ***" in json.loads(line)["exception"]


def test_short_settings_are_not_treated_as_secrets():
    line = JsonFormatter(secrets_of({"ADMIN_TOKEN": "1"})).format(record("1 run queued"))
    assert json.loads(line)["message"] == "1 run queued"


def test_every_workspaces_secrets_and_the_operator_token_are_redacted_too():
    from workers.workspaces import Workspace

    acme = Workspace("acme", "https://acme/", "ilx_acme_token_123", admin_token="acme-admin-456",
                     webhook_sources={"forms": ["whsec_acme789"]}, slack_signing_secret="slack-acme-0ab")
    config = {"OPERATOR_TOKEN": "operator-token-1", "WORKSPACES": {"acme": acme}}
    line = JsonFormatter(secrets_of(config)).format(
        record("%s %s %s %s %s", "ilx_acme_token_123", "acme-admin-456", "whsec_acme789", "slack-acme-0ab",
               "operator-token-1"))
    assert json.loads(line)["message"] == "*** *** *** *** ***"


def test_every_key_of_secrets_key_is_redacted_too():
    new, old = "f3Vn0Dk9Q2sB7yT1mZ8cX4rW6pL5hJ0aE2uI9oY3tGs=", "q9Wm2Lk7Xc4Vb1Nz8As5Df3Gh6Jk0Lp2Oi9Uy7Tr4Ew="
    line = JsonFormatter(secrets_of({"SECRETS_KEY": f"{new}, {old}"})).format(
        record("keys %s and %s", new, old))
    assert json.loads(line)["message"] == "keys *** and ***"


def test_overlapping_secrets_are_masked_whole_not_one_after_the_other():
    # Replacing the longer first would leave "tok_ab", a piece of the shorter, in the line.
    line = JsonFormatter(["tok_abcdef", "cdef_more_secret"]).format(record("got tok_abcdef_more_secret."))
    assert json.loads(line)["message"] == "got ***."


@pytest.mark.parametrize("text, shown", [
    ("key=ilx_inside_token_77;", "key=***;"),                 # inside a longer word
    ("ilx_inside_token_77ilx_inside_token_77", "***"),        # twice, touching
    ("Schlüssel ü-secret-ß and more", "Schlüssel *** and more"),  # not ASCII
    ("ilx_inside_token_7", "ilx_inside_token_7"),             # one character short of the secret
])
def test_every_occurrence_of_a_secret_is_masked_wherever_it_stands(text, shown):
    formatter = JsonFormatter(["ilx_inside_token_77", "ü-secret-ß"])
    assert json.loads(formatter.format(record("%s", text)))["message"] == shown


def test_each_of_four_thousand_secrets_is_redacted():
    secrets = [f"whsec_{n:06d}_{n * 7919:09d}" for n in range(4000)]
    formatter = JsonFormatter(secrets)
    for secret in secrets[::97] + secrets[-1:]:
        assert json.loads(formatter.format(record("before %s after", secret)))["message"] == "before *** after"


def test_a_followed_registry_that_cannot_be_reached_never_holds_up_a_log_line():
    """Before its first read, a view holds nothing and the line is formatted without looking at Redis."""
    from workers.registry import View
    from workers.secrets import Keyring, generate_key

    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=5)
    formatter = JsonFormatter([TOKEN])
    formatter.follow(View(unreachable, Keyring([generate_key()])))
    assert json.loads(formatter.format(record("sent %s", TOKEN)))["message"] == "sent ***"


def test_log_level_sets_the_least_level_written_and_a_wrong_one_is_named(root):
    configure_logging({"LOG_LEVEL": "debug"})
    assert root.level == logging.DEBUG
    configure_logging({})
    assert root.level == logging.INFO
    with pytest.raises(SystemExit, match="LOG_LEVEL 'VERBOSE' is not one of DEBUG, INFO, WARNING, ERROR"):
        configure_logging({"LOG_LEVEL": "verbose"})


def test_a_log_reader_that_stalls_stalls_no_thread_that_logs_and_what_was_dropped_is_said(monkeypatch, root):
    """A process's stderr is a pipe (honcho, systemd, docker): a reader that stops reading filled it and
    every thread that logged waited for it, the run-end line of every run included. Now logging returns;
    past MAX_QUEUED waiting lines the newest are dropped, and a warning says how many once the reader is back."""
    read_end, write_end = os.pipe()
    stream = io.TextIOWrapper(os.fdopen(write_end, "wb"), encoding="utf-8", line_buffering=True)
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(logs, "MAX_QUEUED", 2_000)
    # More than can wait anywhere: the pipe (64 KiB, ~600 of these lines), the writer's batch in hand
    # (MAX_LINES_A_WRITE) and the queue (MAX_QUEUED). With 3,000 a writer that took a whole batch just
    # as the pipe filled held every line and dropped none (a CI run: "assert 3000 < 3000").
    sent = 2 * (logs.MAX_QUEUED + logs.MAX_LINES_A_WRITE)
    try:
        configure_logging({})
        logger = logging.getLogger("workers.jobs")
        logging_thread = threading.Thread(target=lambda: [logger.info("line %d", n) for n in range(sent)])
        logging_thread.start()
        logging_thread.join(10)
        stalled = logging_thread.is_alive()
    finally:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(os.fdopen(read_end, encoding="utf-8")))
        reader.start()  # the reader is back: whatever waits is written
        logging_thread.join()
        for handler in root.handlers:
            handler.close()  # what waits is written before the stream closes
        stream.close()
        reader.join(10)
    assert not stalled, "logging waited for the stream's reader"
    messages = [json.loads(line)["message"] for line in lines]
    numbers = [int(m.split()[1]) for m in messages if m.startswith("line ")]
    # In order, each once, the oldest kept. Lines are dropped whenever MAX_QUEUED wait, and the writer
    # taking a batch makes room again: a gap can come before later lines (CI, a loaded machine: 0-2000,
    # then 2918 on), so what is kept need not be one run from line 0.
    assert numbers[0] == 0 and numbers == sorted(set(numbers))
    assert len(numbers) < sent
    warnings = [m for m in messages if "dropped" in m]
    assert warnings and all(m.endswith(" log lines dropped: the log's reader did not keep up") for m in warnings)
    assert sum(int(m.split()[0]) for m in warnings) == sent - len(numbers), "every dropped line is counted"


FORKING = """
import logging, os, random, threading, time
from workers.logs import configure_logging

configure_logging({})
log = logging.getLogger("workers.jobs")
stop = False

def spam():
    while not stop:
        log.info("parent line")
        time.sleep(0.0002)

for thread in [threading.Thread(target=spam, daemon=True) for _ in range(3)]:
    thread.start()
for n in range(30):
    configure_logging({})  # a new writer, whose thread the spamming threads start as the fork comes
    time.sleep(random.random() / 5000)
    pid = os.fork()
    if pid == 0:
        log.info("child %d", n)
        logging.shutdown()
        os._exit(0)
    os.waitpid(pid, 0)
stop = True
"""


def test_a_process_forked_while_its_threads_log_writes_its_own_lines():
    """The web forks its servers after it has logged; a fork while another thread was starting the
    writer or writing left the child's copy of a lock taken, and the child's first line hung it."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    process = subprocess.Popen([sys.executable, "-c", FORKING], cwd=root, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its group: a hung forked child is ended with it
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        stderr = "timed out: a forked child hung"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 0, stderr[-2000:]
    children = {json.loads(line)["message"] for line in stderr.splitlines() if '"child ' in line}
    assert children == {f"child {n}" for n in range(30)}


def test_configuring_logging_again_ends_the_writer_it_replaces_after_writing_its_lines(root, capsys):
    before = {t for t in threading.enumerate() if t.name == "log-writer"}
    for n in range(5):
        configure_logging({})
        logging.getLogger("workers.jobs").info("round %d", n)
    root.handlers[0].flush()
    writers = [t for t in threading.enumerate() if t.name == "log-writer" and t not in before]
    assert len(writers) == 1
    written = [json.loads(line)["message"] for line in capsys.readouterr().err.splitlines()]
    assert written == [f"round {n}" for n in range(5)]
