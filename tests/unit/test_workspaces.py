"""The workspaces file: what a hosted deployment serves, checked before anything starts."""
import textwrap

import pytest

from workers import workspaces
from workers.workspaces import Workspace, WorkspaceConfigError, load_workspaces, read_workspaces_file

GOOD = """
workspaces:
  acme:
    inloox_url: https://acme.inloox.app/api/odata/
    inloox_api_key: {env: ACME_TOKEN}
    admin_token: acme-admin
    rules: rules/acme
    webhooks:
      forms: [whsec_new, {env: OLD_SECRET}]
      crm: whsec_crm
    limits: {inloox_requests_per_second: 2.5, runs_per_minute: 60}
  globex:
    inloox_url: https://globex.inloox.app/api/odata/
    inloox_api_key: globex-token
"""


def write(tmp_path, text: str) -> str:
    path = tmp_path / "workspaces.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_a_workspaces_file_gives_each_workspace_its_connection_secrets_rules_and_limits(tmp_path):
    served = read_workspaces_file(write(tmp_path, GOOD), {"ACME_TOKEN": "t-acme", "OLD_SECRET": "whsec_old"})
    acme, globex = served["acme"], served["globex"]
    assert (acme.inloox_api_key, acme.admin_token, acme.rules_path) == ("t-acme", "acme-admin", "rules/acme")
    assert acme.webhook_sources == {"forms": ["whsec_new", "whsec_old"], "crm": ["whsec_crm"]}
    assert (acme.limits.inloox_requests_per_second, acme.limits.runs_per_minute) == (2.5, 60)
    assert globex.rules_path is None  # its rules are uploaded bundles
    assert globex.limits.inloox_requests_per_second == 5 and globex.limits.flood_limit == 500  # the defaults
    assert (acme.prefix, acme.queue) == ("ws:acme:", "acme")
    assert "t-acme" not in repr(acme) and "whsec_new" not in repr(acme)


def test_mistakes_name_the_file_line_and_field(tmp_path):
    path = write(tmp_path, """
        workspaces:
          acme:
            inloox_url: ftp://acme
            inloox_api_key: x
            limits: {runs_per_minute: -1}
          Bad_Name:
            inloox_url: https://x
    """)
    with pytest.raises(WorkspaceConfigError) as raised:
        read_workspaces_file(path, {})
    lines = str(raised.value).splitlines()
    assert f"{path}:4: workspaces.acme.inloox_url: 'ftp://acme' does not match '^https?://'" in lines
    assert any(line.startswith(f"{path}:6: workspaces.acme.limits.runs_per_minute:") for line in lines)
    assert any("Bad_Name" in line for line in lines)


def test_a_secret_read_from_a_missing_environment_variable_is_an_error_not_an_empty_token(tmp_path):
    with pytest.raises(WorkspaceConfigError, match=r"workspaces.acme.inloox_api_key: environment variable ACME_TOKEN"):
        read_workspaces_file(write(tmp_path, GOOD), {"OLD_SECRET": "x"})


def test_without_a_file_the_classic_settings_are_the_default_workspace():
    config = {"INLOOX_URL": "http://127.0.0.1:8090/api/odata/", "INLOOX_API_KEY": "tok", "RULES_PATH": "rules",
              "WEBHOOK_SOURCES": {"forms": ["whsec_x"]}, "ADMIN_TOKEN": "adm", "INLOOX_REQUESTS_PER_SECOND": "5"}
    [(name, default)] = load_workspaces(config).items()
    assert name == "default" and default.queue == "default" and default.webhook_sources == {"forms": ["whsec_x"]}
    assert default.limits.inloox_requests_per_second == 5.0


def test_keys_belong_to_the_workspace_being_worked_for_and_none_outside_one():
    with pytest.raises(RuntimeError, match="outside of a workspace"):
        workspaces.key("runs")
    acme, globex = Workspace("acme", "https://a/", "t1"), Workspace("globex", "https://g/", "t2")
    with workspaces.using(acme):
        assert workspaces.key("runs") == "ws:acme:runs"
        with workspaces.using(globex):
            assert workspaces.key("runs") == "ws:globex:runs"
        assert workspaces.key("runs") == "ws:acme:runs"
