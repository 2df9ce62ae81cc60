"""Where a process finds its settings: its environment, then `.env`, then `var/stack.env`, then the defaults."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.processes import ROOT

SHOW = "import json; from workers.settings import load_config; c = load_config(); " \
       "print(json.dumps({k: c[k] for k in ('REDIS_URL', 'INLOOX_URL', 'INLOOX_API_KEY', 'RULES_PATH')}))"


def settings_of(cwd, **environ) -> dict:
    """The settings a process started in `cwd` with only `environ` (and PATH) reads."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **environ}
    done = subprocess.run([sys.executable, "-c", SHOW], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_environment_then_env_file_then_stack_file_then_defaults(tmp_path):
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "stack.env").write_text("REDIS_URL=redis://127.0.0.1:6491/0\n"
                                                "INLOOX_URL=http://127.0.0.1:9190/api/odata/\n"
                                                "INLOOX_API_KEY=from-stack-file\n")
    (tmp_path / ".env").write_text("INLOOX_API_KEY=from-env-file\n")

    found = settings_of(tmp_path, INLOOX_URL="https://app.inloox.com/api/odata/")

    assert found == {"INLOOX_URL": "https://app.inloox.com/api/odata/", "INLOOX_API_KEY": "from-env-file",
                     "REDIS_URL": "redis://127.0.0.1:6491/0", "RULES_PATH": "rules"}


def test_stack_env_names_another_file_or_none(tmp_path):
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "stack.env").write_text("REDIS_URL=redis://127.0.0.1:6491/0\n")
    (tmp_path / "elsewhere.env").write_text("REDIS_URL=redis://127.0.0.1:6492/0\n")

    assert settings_of(tmp_path, STACK_ENV=str(tmp_path / "elsewhere.env"))["REDIS_URL"] == "redis://127.0.0.1:6492/0"
    assert settings_of(tmp_path, STACK_ENV="")["REDIS_URL"] == "redis://127.0.0.1:6390/0"


def test_a_process_redis_client_has_room_for_every_thread_the_settings_give_it(redis_url):
    """redis-py's own pool refuses a 101st connection: a worker with 150 threads starting runs at
    once failed events with "Too many connections" (and the poller its scans)."""
    import threading

    import redis

    from workers.settings import redis_client

    def hold_at_once(client: redis.Redis, threads: int) -> list[Exception]:
        errors, start = [], threading.Barrier(threads)

        def hold():
            start.wait()
            try:
                client.blpop(["nothing-comes"], timeout=1)  # keeps its connection for a second
            except redis.RedisError as exc:
                errors.append(exc)

        workers = [threading.Thread(target=hold) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return errors

    assert hold_at_once(redis.Redis.from_url(redis_url), 150), "redis-py's default pool should refuse some"
    config = {"REDIS_URL": redis_url, "WORKER_THREADS": "150", "POLL_THREADS": "8"}
    assert hold_at_once(redis_client(config), 150) == []
    poller = {"REDIS_URL": redis_url, "WORKER_THREADS": "48", "POLL_THREADS": "8"}
    assert hold_at_once(redis_client(poller), 150) == []  # beyond its pool, threads wait for a connection
