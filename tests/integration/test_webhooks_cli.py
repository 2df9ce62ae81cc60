"""`flask webhooks send`: a user's first signed delivery, from the CLI to a running web process."""
from __future__ import annotations

from tests.support.processes import free_port

BODY = '{"status": "paid", "amount": 42, "order_id": "A-1002"}'


def _add_shop(runner) -> None:
    added = runner.invoke(args=["webhooks", "add", "shop"])
    assert added.exit_code == 0, added.output


def test_send_signs_with_the_sources_secret_and_the_web_accepts_it_once(app, runner, stack):
    # The source exists before the web starts: the web reads it from the registry it starts with.
    _add_shop(runner)
    web = stack.web()

    first = runner.invoke(args=["webhooks", "send", "shop", BODY, "--url", web, "--id", "msg_order_1"])
    assert first.exit_code == 0, first.output
    assert f"POST {web}/hooks/shop  webhook-id: msg_order_1" in first.output
    assert "202 accepted  event webhook:shop:msg_order_1" in first.output

    again = runner.invoke(args=["webhooks", "send", "shop", BODY, "--url", web, "--id", "msg_order_1"])
    assert again.exit_code == 0, again.output
    assert "200 duplicate: this webhook-id was accepted before; not run again" in again.output

    shown = runner.invoke(args=["events", "show", "webhook:shop:msg_order_1", "--json"])
    assert shown.exit_code == 0 and '"order_id": "A-1002"' in shown.output, shown.output

    # A refusal prints the web's own message and fails the command.
    refused = runner.invoke(args=["webhooks", "send", "shop", "--url", web, "--id", "x" * 300])
    assert refused.exit_code == 1, refused.output
    assert "400 the webhook-id header is 300 characters long; at most 256 are accepted" in refused.output
    assert "Error: the web refused the delivery (400)" in refused.output


def test_send_says_when_nothing_listens_at_the_default_port(runner, monkeypatch):
    _add_shop(runner)
    port = free_port()
    monkeypatch.setenv("PORT", str(port))  # what `make run` and var/stack.env give a `flask` command

    result = runner.invoke(args=["webhooks", "send", "shop", BODY])

    assert result.exit_code == 1, result.output
    assert (f"Error: nothing answers at http://127.0.0.1:{port}/hooks/shop: is the web running? `make run` "
            "starts it (or give its address with --url)") in result.output
    assert "Traceback" not in result.output


def test_send_names_the_command_that_adds_an_unknown_source_and_refuses_a_body_that_is_not_json(runner):
    unknown = runner.invoke(args=["webhooks", "send", "shop", BODY, "--url", f"http://127.0.0.1:{free_port()}"])
    assert unknown.exit_code == 1
    assert "Error: workspace 'default' has no webhook source 'shop'; add it with: flask webhooks add shop" \
        in unknown.output

    _add_shop(runner)
    typo = runner.invoke(args=["webhooks", "send", "shops", BODY, "--url", f"http://127.0.0.1:{free_port()}"])
    assert typo.exit_code == 1
    assert "no webhook source 'shops'; did you mean 'shop'? Or add it with: flask webhooks add shops" in typo.output

    broken = runner.invoke(args=["webhooks", "send", "shop", "{status: paid}"])
    assert broken.exit_code == 2
    assert "Invalid value for BODY: not JSON" in broken.output
