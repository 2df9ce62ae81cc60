"""The outbound guard against real listeners: a rule's URL never reaches a private address.

A private listener counts every connection it accepts on 127.0.0.2, and on 127.0.0.1 and ::1 at
the same port (where 127.1, 2130706433, 0.0.0.0 and localhost. lead). An allowed redirector on
127.0.0.1 answers every request with a 302 to the private listener. OUTBOUND_ALLOW is 127.0.0.1,
as in the other tests and `make run`, so only the host written "127.0.0.1" may be private.

This process is fenced in by an audit hook: while a test here runs, a connection to anything
outside the loopback range fails and is counted, so a broken guard sends nothing to
169.254.169.254 or the internet, and the test says so.

Apprise schemes tested, each aimed at every destination below (the host is the rule author's):
    transport   schemes
    HTTP        json jsons xml xmls form forms apprise bark betterstack emby enigma2 evolution
                flowtriq fluxer goalert gorush gotify hassio humhub infobip jellyfin kodi xbmc
                lametric mastodon matrix misskey mmost ncloud nctalk notica notifico ntfy onebot
                parsep pinglet pjet pushdeer rocket signal smseagle synology trigv workflows xmatters
    SMTP        mailto mailtos deltachat   (the smtp= server; redirects and the \\@ form do not apply)
    refused     irc ircs rsyslog amqp amqps nostr   (neither HTTP nor SMTP: refused by scheme)
Destinations: 127.0.0.2, 127.1, 0x7f000002, 2130706433 (= 127.0.0.1), [::1], [::ffff:127.0.0.2],
0.0.0.0, 169.254.169.254, localhost., `127.0.0.2:P\\@127.0.0.1:R` and a 302 from 127.0.0.1 to
127.0.0.2. The http step is aimed at the same destinations.
"""
from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from app import create_app
from tests.support.processes import wait_until
from tests.support.stack import all_runs, write_rule
from web.signatures import SignatureError, verify_teams
from workers.outbound import OutboundPolicy, OutboundRefused, http, notify

POLICY = OutboundPolicy.from_setting("127.0.0.1", timeout=2)
TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEF"
GUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
HTTP_SCHEMES = {
    "json": "json://{host}/hook", "jsons": "jsons://{host}/hook", "xml": "xml://{host}/hook",
    "xmls": "xmls://{host}/hook", "form": "form://{host}/hook", "forms": "forms://{host}/hook",
    "apprise": f"apprise://{{host}}/{TOKEN}", "bark": f"bark://{{host}}/{TOKEN}",
    "betterstack": f"betterstack://{TOKEN}@{{host}}", "emby": "emby://user:pass@{host}", "enigma2": "enigma2://{host}",
    "evolution": f"evolution://{TOKEN}@{{host}}/inst/15551234567", "flowtriq": f"flowtriq://{TOKEN}@{{host}}/path/",
    "fluxer": f"fluxer://{{host}}/1234567890/{TOKEN}", "goalert": f"goalert://{{host}}/{GUID}",
    "gorush": f"gorush://{{host}}/{TOKEN}", "gotify": f"gotify://{{host}}/{TOKEN}", "hassio": f"hassio://{{host}}/{TOKEN}",
    "humhub": "humhub://user:pass@{host}/1", "infobip": f"infobip://{TOKEN}@{{host}}/15551234567",
    "jellyfin": "jellyfin://user:pass@{host}", "kodi": "kodi://{host}", "xbmc": "xbmc://{host}",
    "lametric": f"lametric://{TOKEN}@{{host}}", "mastodon": f"mastodon://{TOKEN}@{{host}}",
    "matrix": "matrix://user:pass@{host}/#room", "misskey": f"misskey://{TOKEN}@{{host}}",
    "mmost": f"mmost://{{host}}/{TOKEN}", "ncloud": "ncloud://user:pass@{host}/admin",
    "nctalk": "nctalk://user:pass@{host}/roomid", "notica": "notica://{host}/abcdef",
    "notifico": f"notifico://{{host}}/1234/{TOKEN}", "ntfy": "ntfy://{host}/topic", "onebot": "onebot://{host}/12345",
    "parsep": f"parsep://app:{TOKEN}@{{host}}", "pinglet": f"pinglet://{TOKEN}@{{host}}/ns/topic",
    "pjet": f"pjet://{{host}}/{TOKEN}", "pushdeer": f"pushdeer://{{host}}/{TOKEN}", "rocket": "rocket://user:pass@{host}/#general",
    "signal": "signal://{host}/15551234567", "smseagle": f"smseagle://{TOKEN}@{{host}}/15551234567",
    "synology": f"synology://{{host}}/{TOKEN}", "trigv": f"trigv://trgv_abcdefgh_{TOKEN}@{{host}}/target",
    "workflows": f"workflows://{{host}}/{TOKEN}/{TOKEN}", "xmatters": f"xmatters://{TOKEN}@{{host}}/{TOKEN}",
}
SMTP_SCHEMES = {scheme: f"{scheme}://user:pass@example.com?smtp={{server}}&port={{port}}&to=a@b.example"
                for scheme in ("mailto", "mailtos", "deltachat")}
REFUSED_SCHEMES = {"irc": "irc://{host}/#chan", "ircs": "ircs://{host}/#chan", "rsyslog": "rsyslog://{host}",
                   "amqp": "amqp://{host}/queue", "amqps": "amqps://{host}/queue", "nostr": f"nostr://{TOKEN}/{{host}}"}
# Destinations: (the URL's host part, the SMTP server, its port) from the private port P and redirector port R.
DESTINATIONS = {
    "127.0.0.2": lambda p, r: (f"127.0.0.2:{p}", "127.0.0.2", p),
    "127.1": lambda p, r: (f"127.1:{p}", "127.1", p),
    "0x7f000002": lambda p, r: (f"0x7f000002:{p}", "0x7f000002", p),
    "2130706433": lambda p, r: (f"2130706433:{p}", "2130706433", p),
    "[::1]": lambda p, r: (f"[::1]:{p}", "::1", p),
    "[::ffff:127.0.0.2]": lambda p, r: (f"[::ffff:127.0.0.2]:{p}", "::ffff:127.0.0.2", p),
    "0.0.0.0": lambda p, r: (f"0.0.0.0:{p}", "0.0.0.0", p),
    "169.254.169.254": lambda p, r: ("169.254.169.254", "169.254.169.254", 25),
    "localhost.": lambda p, r: (f"localhost.:{p}", "localhost.", p),
    "backslash-at": lambda p, r: (f"127.0.0.2:{p}\\@127.0.0.1:{r}", None, None),
    "302 to private": lambda p, r: (f"127.0.0.1:{r}", None, None),
}


class Fence:
    """Refuses and counts, while on, every connection this process makes outside the loopback range."""

    def __init__(self):
        self.on = False
        self.blocked: list = []
        sys.addaudithook(self._audit)  # hooks stay for the process: this one is inert when off

    def _audit(self, event, args):
        if not self.on or event not in ("socket.connect", "socket.sendto") or not isinstance(args[1], tuple):
            return
        if not _local(args[1][0]):
            self.blocked.append(args[1][:2])
            raise PermissionError(f"test fence: {args[1][0]} is outside this machine")


def _local(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    ip = ip.ipv4_mapped or ip if ip.version == 6 else ip
    return ip.is_loopback or ip.is_unspecified


_FENCE = Fence()


class Listener:
    """Counts every connection accepted on any of `hosts` at one port; answers HTTP requests with 200."""

    def __init__(self, hosts=("127.0.0.2", "127.0.0.1", "::1")):
        self.connections: list = []
        listener = self

        class Counting(ThreadingHTTPServer):
            def verify_request(self, request, client_address):
                listener.connections.append(client_address)
                return True

        class V6(Counting):
            address_family = socket.AF_INET6

        self.servers = []
        for host in hosts:
            server_class = V6 if ":" in host else Counting
            self.servers.append(server_class((host, self.servers[0].server_address[1] if self.servers else 0), _Ok))
        self.port = self.servers[0].server_address[1]
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self):
        for server in self.servers:
            server.shutdown()
            server.server_close()


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_GET

    def log_message(self, *args):
        pass


def redirector(to: str) -> ThreadingHTTPServer:
    """An allowed host (127.0.0.1) that answers every request with a 302 to `to`."""
    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", to)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def private():
    """The private listener, bound to a port free on all three addresses."""
    for _ in range(10):
        try:
            listener = Listener()
            break
        except OSError:  # the port was taken on one of the other addresses: try another
            continue
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def redirect_port(private):
    server = redirector(f"http://127.0.0.2:{private.port}/landed")
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def fenced(private, monkeypatch):
    """The fence on, the listener's count cleared; `localhost.` resolves as systemd-resolved answers it."""
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, *a, **k: real("localhost" if host == "localhost." else host, *a, **k))
    private.connections.clear()
    _FENCE.blocked.clear()
    _FENCE.on = True
    yield private
    _FENCE.on = False


def _assert_nothing_reached(private):
    assert private.connections == [], "the private listener was reached"
    assert _FENCE.blocked == [], f"the guard let a connection leave for {_FENCE.blocked}"


@pytest.mark.parametrize("destination", DESTINATIONS)
@pytest.mark.parametrize("scheme", HTTP_SCHEMES)
def test_an_apprise_service_aimed_at_a_private_address_is_refused(scheme, destination, fenced, redirect_port):
    host, _, _ = DESTINATIONS[destination](fenced.port, redirect_port)
    with pytest.raises(OutboundRefused):
        notify(POLICY, HTTP_SCHEMES[scheme].format(host=host), "hello", "title")
    _assert_nothing_reached(fenced)


@pytest.mark.parametrize("destination", [d for d, make in DESTINATIONS.items() if make(1, 1)[1]])
@pytest.mark.parametrize("scheme", SMTP_SCHEMES)
def test_email_through_a_private_smtp_server_is_refused(scheme, destination, fenced, redirect_port):
    _, server, port = DESTINATIONS[destination](fenced.port, redirect_port)
    with pytest.raises(OutboundRefused, match="refused: .*non-public address"):
        notify(POLICY, SMTP_SCHEMES[scheme].format(server=server, port=port), "hello", "title")
    _assert_nothing_reached(fenced)


@pytest.mark.parametrize("scheme", REFUSED_SCHEMES)
def test_a_service_the_guard_cannot_check_is_refused_by_its_scheme(scheme, fenced):
    with pytest.raises(OutboundRefused, match=f"{scheme}:// notifications are refused"):
        notify(POLICY, REFUSED_SCHEMES[scheme].format(host=f"127.0.0.2:{fenced.port}"), "hello")
    _assert_nothing_reached(fenced)


@pytest.mark.parametrize("destination", DESTINATIONS)
def test_an_http_step_aimed_at_a_private_address_is_refused(destination, fenced, redirect_port):
    host, _, _ = DESTINATIONS[destination](fenced.port, redirect_port)
    with pytest.raises(OutboundRefused):
        http(POLICY, "POST", f"http://{host}/hook", body={"hello": 1})
    _assert_nothing_reached(fenced)


def test_the_guard_names_the_address_it_refused(fenced):
    with pytest.raises(OutboundRefused, match=r"refused: 0x7f000002 resolves to 127\.0\.0\.2, a non-public"):
        notify(POLICY, f"ntfy://0x7f000002:{fenced.port}/topic", "hello")
    with pytest.raises(OutboundRefused, match=r"127\.0\.0\.2 resolves to 127\.0\.0\.2"):
        http(POLICY, "GET", f"http://127.0.0.2:{fenced.port}\\@127.0.0.1:1/")


def test_a_redirect_to_a_private_address_is_refused_at_the_hop(fenced, redirect_port):
    with pytest.raises(OutboundRefused, match=r"refused: 127\.0\.0\.2 resolves to 127\.0\.0\.2"):
        notify(POLICY, f"json://127.0.0.1:{redirect_port}/hook", "hello")
    with pytest.raises(OutboundRefused, match="answered 302"):  # http steps do not follow redirects at all
        http(POLICY, "POST", f"http://127.0.0.1:{redirect_port}/hook")
    _assert_nothing_reached(fenced)


def test_an_allowed_host_is_reached(fenced):
    allowed = Listener(hosts=("127.0.0.1",))
    try:
        notify(POLICY, f"json://127.0.0.1:{allowed.port}/hook", "hello")
        assert http(POLICY, "GET", f"http://127.0.0.1:{allowed.port}/")["status"] == 200
        assert len(allowed.connections) == 2
    finally:
        allowed.close()


def test_a_name_that_turns_private_after_its_first_answer_is_connected_only_where_it_was_checked(fenced, monkeypatch):
    """DNS rebinding: the only connection goes to the answer the guard checked, never to a later one."""
    lookups, real = [], socket.getaddrinfo

    def rebinding(host, port, *args, **kwargs):
        if host != "rebind.example":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        address = "93.184.216.34" if len(lookups) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with pytest.raises(OutboundRefused):
        http(POLICY, "POST", f"http://rebind.example:{fenced.port}/hook")
    with pytest.raises(OutboundRefused):
        notify(POLICY, f"json://rebind.example:{fenced.port}/hook", "hello")
    assert fenced.connections == []
    # The public answer was checked and used (the fence stopped it here); the private one never was.
    assert _FENCE.blocked == [("93.184.216.34", fenced.port)]
    _FENCE.blocked.clear()


def test_a_name_with_a_private_answer_among_public_ones_is_refused(fenced, monkeypatch):
    real = socket.getaddrinfo

    def mixed(host, port, *args, **kwargs):
        if host != "mixed.example":
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in ("93.184.216.34", "127.0.0.2")]

    monkeypatch.setattr(socket, "getaddrinfo", mixed)
    with pytest.raises(OutboundRefused, match=r"mixed\.example resolves to 127\.0\.0\.2"):
        http(POLICY, "POST", f"http://mixed.example:{fenced.port}/hook")
    _assert_nothing_reached(fenced)


def test_a_socket_opened_around_the_guard_is_refused_too(fenced):
    """The audit hook: a transport that resolves and connects by itself (IRC's, UDP syslog's) fails closed."""
    from workers import egress

    with egress.guarded(POLICY.allow) as guard:
        with socket.socket() as raw, pytest.raises(egress.DestinationRefused):
            raw.connect(("127.0.0.2", fenced.port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(egress.DestinationRefused):
            udp.sendto(b"<14>hello", ("127.0.0.2", fenced.port))
    assert len(guard.refusals) == 2
    _assert_nothing_reached(fenced)


# Through a real run: rules with a manual trigger, `flask rules run`, a real worker process.
MANUAL_RULE = """
id: {id}
description: Aims at a private address.
when:
  - manual: true
then:
  - {step}
"""
SECRET_PASSWORD, SECRET_TOKEN = "hunter2pass", "tok3nsecretvalue"


@pytest.fixture
def dashboard(redis_url, sandbox, rules_dir):
    """The app in-process (for `flask rules run` and the dashboard), logged in with the admin token."""
    app = create_app({"REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url, "INLOOX_API_KEY": sandbox.token,
                      "RULES_PATH": str(rules_dir), "ADMIN_TOKEN": "admin-token-for-egress"})
    client = app.test_client()
    assert client.post("/ui/login", data={"token": "admin-token-for-egress"}).status_code == 302
    return app, client


def _run_rules(stack, app, rules_dir, redis_url, steps: dict) -> dict:
    """Write one manual rule per step, run each once through a real worker; returns the runs by rule id."""
    for rule_id, step in steps.items():
        write_rule(rules_dir, rule_id, MANUAL_RULE.format(id=rule_id, step=step))
    stack.worker()
    for rule_id in steps:
        result = app.test_cli_runner().invoke(args=["rules", "run", rule_id])
        assert result.exit_code == 0, result.output
    finished = lambda: [r for r in all_runs(redis_url) if r["status"] in ("succeeded", "failed")]  # noqa: E731
    wait_until(lambda: len(finished()) == len(steps), 30, "every run to finish")
    return {r["rule_id"]: r for r in all_runs(redis_url)}


def test_runs_aimed_at_private_addresses_fail_as_refused_and_reach_nothing(stack, dashboard, rules_dir, redis_url,
                                                                         private, redirect_port):
    app, _ = dashboard
    p, r = private.port, redirect_port
    private.connections.clear()
    runs = _run_rules(stack, app, rules_dir, redis_url, {
        "json-private": f'notify: "json://127.0.0.2:{p}/hook"\n    body: hi',
        "ntfy-loopback-v6": f'notify: "ntfy://[::1]:{p}/topic"\n    body: hi',
        "mail-private": f'notify: "mailto://u:p@example.com?smtp=127.0.0.2&port={p}&to=a@b.example"\n    body: hi',
        "json-redirected": f'notify: "json://127.0.0.1:{r}/hook"\n    body: hi',
        "http-backslash-at": f"http: 'http://127.0.0.2:{p}\\@127.0.0.1:{r}/'",
        "http-mapped": f'http: "http://[::ffff:127.0.0.2]:{p}/"',
    })
    for rule_id, run in runs.items():
        [step] = run["steps"]
        assert (run["status"], step["error_type"]) == ("failed", "OutboundRefused"), (rule_id, step)
        assert "refused" in step["error"], (rule_id, step["error"])
    assert private.connections == []


def test_a_rule_check_refuses_a_notification_the_guard_cannot_check(dashboard, rules_dir):
    app, _ = dashboard
    write_rule(rules_dir, "syslog", MANUAL_RULE.format(id="syslog", step='notify: "rsyslog://127.0.0.2"\n    body: hi'))
    result = app.test_cli_runner().invoke(args=["rules", "check", str(rules_dir)])
    assert result.exit_code != 0 and "rsyslog:// notifications are refused" in result.output


def _secret_notification(stack, app, rules_dir, redis_url, receiver) -> dict:
    url = f"json://ann:{SECRET_PASSWORD}@127.0.0.1:{receiver.port}/notify?token={SECRET_TOKEN}"
    runs = _run_rules(stack, app, rules_dir, redis_url, {"secret": f'notify: "{url}"\n    body: hi'})
    assert runs["secret"]["status"] == "succeeded" and receiver.received
    return runs["secret"]


def test_the_dashboard_never_shows_a_notification_url_s_credentials(stack, dashboard, rules_dir, redis_url,
                                                                    receiver):
    app, client = dashboard
    run = _secret_notification(stack, app, rules_dir, redis_url, receiver)
    for path in (f"/ui/runs/{run['id']}", "/ui/runs"):
        page = client.get(path).get_data(as_text=True)
        assert "127.0.0.1" in page or path == "/ui/runs"
        assert SECRET_PASSWORD not in page and SECRET_TOKEN not in page


def test_run_records_never_hold_a_notification_url_s_credentials(stack, dashboard, rules_dir, redis_url, receiver):
    # The way the docs say to keep a channel's token: in the environment, read by the rule as env.*.
    app, client = dashboard
    stack.env["TEAM_CHANNEL_URL"] = f"json://ann:{SECRET_PASSWORD}@127.0.0.1:{receiver.port}/notify?token={SECRET_TOKEN}"
    runs = _run_rules(stack, app, rules_dir, redis_url, {"secret": 'notify: "{{ env.TEAM_CHANNEL_URL }}"\n    body: hi'})
    run = runs["secret"]
    assert run["status"] == "succeeded" and receiver.received
    stored = b"".join(v for k in redis.Redis.from_url(redis_url).keys("*run*")
                      if (v := redis.Redis.from_url(redis_url).dump(k)))
    api = client.get(f"/runs/{run['id']}", headers={"Authorization": "Bearer admin-token-for-egress"})
    for secret in (SECRET_PASSWORD, SECRET_TOKEN):
        assert secret.encode() not in stored and secret not in api.get_data(as_text=True)


# A malformed dashboard credential is a login problem, never a 500.
def _dashboard_paths(app) -> list[tuple[str, str]]:
    values = {"ws": "default", "run_id": "run_x", "instance_number": "0", "per_page": "10", "page": "1"}
    found = []
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith("/ui") or "/ui" in rule.rule) or rule.endpoint.endswith(".static"):
            continue
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<{name}>", values.get(name, "x")).replace(f"<int:{name}>", values.get(name, "0"))
        found += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return found


def test_a_non_ascii_session_cookie_or_bearer_token_is_a_login_problem_on_every_dashboard_page(redis_url, rules_dir):
    app = create_app({"REDIS_URL": redis_url, "RULES_PATH": str(rules_dir), "ADMIN_TOKEN": "admin-token-for-egress"})
    with_cookie, with_bearer = app.test_client(), app.test_client()
    with_cookie.set_cookie("ui_session", "\u00e9t\u00e9")  # sent to every path
    paths = _dashboard_paths(app)
    assert len(paths) >= 20
    for method, path in paths:
        for client, headers in ((with_cookie, {}), (with_bearer, {"Authorization": "Bearer \u00e9t\u00e9"})):
            response = client.open(path, method=method, headers=headers)
            if response.status_code == 308:  # Flask's own redirect to the canonical path comes first
                response = client.open(response.headers["Location"], method=method, headers=headers)
            expected = {200, 401} if path.endswith("/login") else {302, 401}
            assert response.status_code in expected, (method, path, headers, response.status_code)


def test_a_non_ascii_teams_signature_is_a_bad_signature():
    with pytest.raises(SignatureError, match="bad signature"):
        verify_teams(b"{}", "HMAC \u00e9t\u00e9", "dGVhbXMtc2VjdXJpdHktdG9rZW4=")
