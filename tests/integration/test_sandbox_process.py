"""`python -m sandbox` itself: the demo seed from the command line and a --data file that survives a restart."""
from __future__ import annotations

from tests.support.processes import free_port
from tests.support.sandbox import SandboxServer


def _start(tmp_path, seed: str) -> SandboxServer:
    server = SandboxServer.start(port=free_port(), token="file-token", seed=seed,
                                 data=str(tmp_path / "inloox.sqlite"))
    return server


def test_a_data_file_keeps_its_rows_across_restarts(tmp_path):
    server = _start(tmp_path, "demo")
    try:
        assert server.count("Task") == 30
        server.post("Task", {"Name": "survivor"})
    finally:
        server.stop()
    server = _start(tmp_path, "demo")  # an existing account is not reseeded
    try:
        assert server.count("Task") == 31 and server.count("Task", "Name eq 'survivor'") == 1
        server.reset(seed="empty")
        assert server.count("Task") == 0
    finally:
        server.stop()


def test_a_data_file_started_as_make_run_does_is_seeded_once_and_then_kept(tmp_path):
    # The Procfile's sandbox: demo seed, a data file, and the automation's own user on the command line.
    def start():
        return SandboxServer.start(port=free_port(), token="alex-token", seed="demo", data=str(tmp_path / "sandbox.sqlite"),
                                   people=("bot-token=Automation Bot",))

    server = start()
    try:
        assert server.count("Task") == 30, "a new data file gets the demo account"
        [task] = server.get("Task", **{"$filter": "IsDone eq false", "$top": 1}).json()["value"]
        assert server.session.patch(f"{server.base_url}Task({task['TaskItemId']})", json={"IsDone": True},
                                    timeout=5).ok
    finally:
        server.stop()
    server = start()
    try:
        assert "the data kept in" in server.process.output()
        assert server.count("Task") == 30 and server.count("Task", f"TaskItemId eq {task['TaskItemId']} and IsDone eq true") == 1
        me = server.as_user("bot-token").get(server.base_url + "UserInfo/Me()", timeout=5).json()["value"][0]
        assert me["DisplayName"] == "Automation Bot"
    finally:
        server.stop()


def test_people_named_on_the_command_line_keep_their_tokens_across_resets():
    server = SandboxServer.start(port=free_port(), token="main-token", people=("bot-token=Automation Bot",))
    try:
        as_bot = server.as_user("bot-token")
        me = as_bot.get(server.base_url + "UserInfo/Me()", timeout=5).json()["value"][0]
        assert me["DisplayName"] == "Automation Bot"
        server.reset(seed="demo")
        again = as_bot.get(server.base_url + "UserInfo/Me()", timeout=5).json()["value"][0]
        assert again["ContactId"] == me["ContactId"]
    finally:
        server.stop()
