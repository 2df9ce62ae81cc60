"""The dashboard under `/ui`: an overview (charts, recent failures, broken rule files), rules, runs (with retry
buttons), events and the poller; for the operator, every workspace with pause and resume buttons.

Every page is rendered on the server, charts included (server-side SVG, web/charts.py): no script,
nothing fetched from elsewhere. Times show as "3 min ago" with the exact UTC time on hover.

Served for each workspace (`/ui` is the default one's, `/workspaces/<ws>/ui` any one's). With an
admin token set (the workspace's, or OPERATOR_TOKEN), every page needs a login (a form that sets
an HttpOnly, SameSite=Strict cookie, scoped to that dashboard's path, holding an HMAC of the token under SECRETS_KEY,
never the token) or `Authorization: Bearer <token>`. Pages show run records and rule files, which
hold no tokens or webhook secrets.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta, timezone

from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for
from werkzeug.exceptions import ServiceUnavailable, TooManyRequests

from web import bundle_check, charts, heavy, times
from web.resources import get_context, get_keyring, get_redis
from web.resources import get_registry
from web.workspace import admin_token_hashes, bearer_token, is_admin, operator_open, require_workspace
from web.events import replay_summary, selected_entries, since_epoch
from web.workspace_states import workspace_states
from web.usage import usage_page
from workers import (activity, bundles, deliveries, event_history, registry, rule_files, series, subscriptions,
                     workspaces)
from workers.replay import ReplayRefused, replay
from workers.secrets import SecretsKeyError
from workers.workspaces import key
from workers.jobs import RetryRefused, retry_run
from workers.outbound import redacted
from workers.poller.status import WHOLE, poll_status, troubles
from workers.runs import STATUSES, decode_run, list_runs, load_run, load_trace

bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates")
bp.add_url_rule("/usage", "usage", usage_page)  # the view lives with the usage API (web/usage.py)

COOKIE = "ui_session"
RECENT = timedelta(hours=24)
PER_RULE_SCAN = 1000  # runs looked at per rule for the 24-hour figures
FAILURES_SHOWN = 10  # the overview's recent failures
FAILURES_SCAN = 1000  # runs of the last 24 h looked at for them, newest first: the page answers at once
DEFAULT_HOURS = 1  # a new stack's first runs fill the chart, not a sliver of a day
WHATIF_SPAN = timedelta(days=7)  # the logged events a what-if looks at
WHATIF_EVENTS = 10_000  # at most (the oldest of the span first): a page must answer in seconds
# Seconds, at most, the page's comparison spends planning events (in a child process: web/bundle_check.py,
# which a web thread waits for): each is planned against every rule of both versions, and a bundle of 1 MiB
# holds thousands (hours for 10,000 events). The page says how many it compared; `flask rules whatif`, off
# the web, compares them all.
WHATIF_SECONDS = 5
WHATIF_PAGE = 100  # logged events read from Redis and held at once: 100 webhook bodies of 64 KiB are ~6 MiB
OVERVIEW_SERIES = ("runs", "failures", "requests", "throttled", "backlog", "queued")  # workers/series.py


@bp.before_request
def require_login():
    """With an admin token set, send visitors without a valid session or bearer token to the login form."""
    require_workspace()
    if request.endpoint and request.endpoint.endswith(".login"):
        return None
    refused = _login_needed(admin_token_hashes(), login=url_for(".login", next=request.path))
    if refused is None:
        activity.note(get_redis())  # a person is looking: the poller polls this workspace at full speed
    return refused


def require_operator_login():
    """RQ's dashboard shows every workspace's jobs: with several workspaces, only the operator may see it."""
    served = get_registry().workspaces()
    if len(served) == 1 and workspaces.DEFAULT in served:
        require_workspace()  # one account: its admin is the operator
        return _login_needed(admin_token_hashes(), login=url_for("ui.login", next=request.path))
    operator = current_app.config.get("OPERATOR_TOKEN")
    if not operator:
        abort(404, "RQ's dashboard serves the operator of a multi-workspace deployment: set OPERATOR_TOKEN")
    return _login_needed([registry.token_hash(operator)], login=None)


def _login_needed(hashes: list[str], *, login: str | None):
    """None when the session cookie or bearer token is one of the tokens hashed in `hashes` (or there
    are none), else a refusal."""
    if not hashes or _presented(hashes):
        return None
    if request.method != "GET" or login is None:
        abort(401, "log in to the dashboard first")
    return redirect(login)


def _presented(hashes: list[str]) -> bool:
    """True when the session cookie or the bearer token is one of the tokens hashed in `hashes`."""
    cookie, bearer = request.cookies.get(COOKIE, ""), registry.token_hash(bearer_token())
    return any(_same(bearer, h) or any(_same(cookie, s) for s in _sessions(h)) for h in hashes)


def is_operator_session() -> bool:
    """True for the operator's session or bearer token, and for everyone while the operator's powers are open
    (web.workspace.operator_open: no OPERATOR_TOKEN and no admin token anywhere, i.e. local development)."""
    if operator_open():
        return True
    operator = current_app.config.get("OPERATOR_TOKEN")
    return bool(operator) and _presented([registry.token_hash(operator)])


def _same(given: str, expected: str) -> bool:
    """compare_digest of the UTF-8 bytes: on str it raises TypeError for non-ASCII text, which a visitor sends."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


@bp.context_processor
def operator_navigation():
    """The navigation links to the workspaces page for the operator only."""
    return {"operator": is_operator_session()}


@bp.app_template_filter("ago")
def ago_filter(value):
    """A time as "3 min ago", the exact UTC time on hover (web/times.py)."""
    return times.ago(value, now=datetime.now(timezone.utc))


@bp.app_template_filter("redacted")
def redacted_filter(value):
    """Run records shown with notification URLs and secret headers redacted (workers.outbound.redacted)."""
    return redacted(value)


@bp.app_template_filter("pretty_json")
def pretty_json_filter(value):
    """JSON indented for a <pre>, its text as written ("don't", "<p>"): Jinja escapes it for HTML, where
    `tojson` writes \\u0027 and \\u003c, which are for a <script>."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@bp.route("/login", methods=["GET", "POST"])
def login():
    """The login form; a right token sets the session cookie."""
    if request.method == "GET":
        return render_template("ui/login.html")
    given = request.form.get("token", "")
    if not admin_token_hashes() or not is_admin(given):
        return render_template("ui/login.html", error="That is not the admin token."), 401
    home = url_for(".index")  # /ui, or /workspaces/<ws>/ui: each workspace's session is its own
    target = request.args.get("next", "")
    response = redirect(target if target.startswith(home) else url_for(".overview"))
    response.set_cookie(COOKIE, _sessions(registry.token_hash(given))[0], httponly=True, samesite="Strict", secure=request.is_secure,
                        path=home)
    return response


@bp.get("")
@bp.get("/")
def index():
    """The dashboard starts at the overview."""
    return redirect(url_for(".overview"))


@bp.get("/overview")
def overview():
    """Charts of the last hours (runs and failures, InLoox requests and throttling, queue depth, poll lag), the
    recent failed runs and the broken rule files."""
    hours, lag_sets = _hours(), _watched_sets()
    window, found = _history(hours, [*OVERVIEW_SERIES, *(f"poll_lag:{s}" for s in lag_sets)])
    figures = {
        "runs": charts.bars([charts.Series("runs finished", found["runs"]),
                             charts.Series("failed", found["failures"], charts.BAD)], window),
        "requests": charts.bars([charts.Series("InLoox requests", found["requests"]),
                                 charts.Series("throttled", found["throttled"], charts.BAD)], window),
        "queues": charts.lines([charts.Series("events waiting", found["backlog"]),
                                charts.Series("jobs queued", found["queued"])], window),
        "lag": _lag_chart(found, lag_sets, window),
    }
    totals = {name: int(sum(found[name].values())) for name in ("runs", "failures", "requests", "throttled")}
    context, connection = get_context(), get_redis()
    context.rules.version()  # a folder looked at again if it is due, so its broken files are as of now
    return render_template("ui/overview.html", figures=figures, totals=totals, hours=hours, window=window,
                           windows=charts.WINDOWS, lag_sets=lag_sets, failures=_recent_failures(connection),
                           broken=rule_files.broken_files(connection, context.workspace.prefix),
                           recent_hours=int(RECENT.total_seconds() // 3600))


@bp.get("/rules")
def rules():
    """Each rule: state, trigger summary, last run, runs and failures in the last 24 h; broken files."""
    context = get_context()
    try:
        ruleset, version = heavy.compiled_rules()  # a first compile of a large bundle: seconds, one at a time
    except heavy.Unreachable as exc:  # Redis failed as the turn was asked for: as heavy.answered says it, 503
        raise ServiceUnavailable(f"Not listed: {exc}", retry_after=exc.retry_after) from None
    except heavy.Busy as exc:
        raise TooManyRequests(f"Not listed: {exc}", retry_after=exc.retry_after) from None
    connection = get_redis()
    since = datetime.now(timezone.utc) - RECENT
    rows = [_rule_row(connection, rule, since) for rule in sorted(ruleset.rules.values(), key=lambda r: r.id)]
    broken = [{**entry, "running": rule_files.running(entry), "running_digest": entry["running"]}
              for entry in rule_files.broken_files(connection, context.workspace.prefix)]
    return render_template("ui/rules.html", rules=rows, version=version, broken=broken,
                           errors=[str(e) for e in ruleset.errors])


@bp.get("/runs")
def runs():
    """Runs, newest first, filtered by rule, status, source and age (hours)."""
    args = request.args
    since = _created_since(args.get("hours", type=float))
    found = list_runs(get_redis(), rule=args.get("rule") or None, status=args.get("status") or None, limit=500)
    shown = [r for r in found if (not args.get("source") or r.get("source") == args["source"])
             and (since is None or datetime.fromisoformat(r["created_at"]) >= since)][:200]
    return render_template("ui/runs.html", runs=shown, filters=args, statuses=STATUSES)


@bp.get("/runs/<run_id>")
def run(run_id: str):
    """One run: its event, the explain report, each step's request, response, timing and error."""
    record = load_run(get_redis(), run_id)
    if record is None:
        abort(404, f"no run {run_id}")
    return render_template("ui/run.html", run=record, trace=load_trace(get_redis(), record["event_id"]))


@bp.post("/runs/<run_id>/retry")
def retry(run_id: str):
    """The retry buttons: from the failed step, or from the start (`from=start`)."""
    try:
        retry_run(get_redis(), run_id, from_start=request.form.get("from") == "start")
        notice = "Queued again."
    except RetryRefused as exc:
        notice = f"Not retried: {exc}"
    return redirect(url_for(".run", run_id=run_id, notice=notice))


@bp.get("/events")
def events():
    """The event log: newest first, filtered by age, source, kind, or only those no rule ran for."""
    args = request.args
    try:
        since = since_epoch(args.get("since"))
    except ReplayRefused as exc:
        return redirect(url_for(".events", notice=str(exc)))
    before = args.get("before") if event_history.is_entry_id(args.get("before") or "") else None
    # As GET /events: at most SCAN_PER_REQUEST entries of the log per page (web/events.py), and a link to go on.
    page = event_history.listing(get_redis(), since=since, before=before, source=args.get("source") or None,
                                 kind=args.get("kind") or None, unmatched=bool(args.get("unmatched")), limit=200,
                                 scan=event_history.SCAN_PER_REQUEST)
    rows = [{**e.summary(), "accepted": e.entry.accepted_at} for e in page.events]
    older = url_for(".events", **{**args.to_dict(), "before": page.next}) if page.next else None
    return render_template("ui/events.html", events=rows, filters=args, kept_for=event_history.KEPT_FOR,
                           older=older, looked=page.looked if page.cut else None)


@bp.get("/events/<event_id>")
def event(event_id: str):
    """One event's path: source → rules (matched, and why the others did not) → runs → their steps."""
    try:
        found = event_history.find(get_redis(), event_id, scan=event_history.SCAN_PER_REQUEST)
    except event_history.SearchCut:
        try:
            with heavy.turn():  # the rest of the log, as GET /events/<id> reads it (web/events.py)
                found = event_history.find(get_redis(), event_id)
        except heavy.Busy as exc:
            abort(429, f"Not looked up: {exc}")
    if found is None:
        abort(404, f"no event {event_id} in the event log")
    runs = [r for r in (load_run(get_redis(), i) for i in found.runs) if r]
    return render_template("ui/event.html", event=found.event, summary=found.summary(), trace=found.trace,
                           runs=runs, accepted=found.entry.accepted_at)


@bp.post("/events/replay")
def replay_events():
    """The replay buttons: one event (`event`), or every event of the last `since`; `dry_run`, `force`."""
    form = request.form
    event_id, dry_run = form.get("event") or "", bool(form.get("dry_run"))
    try:
        with heavy.turn():  # as POST /events/replay: one at a time per process and workspace (web/heavy.py)
            entries = selected_entries(get_redis(), since=form.get("since") or None,
                                       event_ids=[event_id] if event_id else [])
            done = replay(get_context(), entries, force=bool(form.get("force")), dry_run=dry_run, by="dashboard")
    except (ReplayRefused, heavy.Busy) as exc:
        notice = f"Not replayed: {exc}"
    else:
        summary = replay_summary(done, dry_run=dry_run)
        verb = "would start" if dry_run else "started"
        notice = (f"{summary['events']} event(s): {verb} {summary['started']} run(s), "
                  f"{summary['already']} already ran, {summary['skipped']} left alone.")
    if event_id:
        return redirect(url_for(".event", event_id=event_id, notice=notice))
    return redirect(url_for(".events", since=form.get("since"), notice=notice))


@bp.get("/whatif")
def whatif_page():
    """What an uploaded, not yet active bundle version would do differently with the last week's events."""
    context, connection = get_context(), get_redis()
    if context.workspace.rules_path is not None:
        return render_template("ui/whatif.html", folder=context.workspace.rules_path, versions=[], report=None)
    stored = bundles.versions(connection, context.workspace.prefix)
    number, report = request.args.get("version", type=int), None
    if number is not None:
        texts = bundles.files(connection, context.workspace.prefix, number)
        if texts is None:
            abort(404, f"no rule bundle version {number}")
        try:
            with heavy.turn():  # a web thread waits seconds for the comparison: one at a time (web/heavy.py)
                report = _whatif(connection, context, texts)
        except (heavy.Busy, bundle_check.TooCostly, bundle_check.Unfinished) as exc:
            return redirect(url_for(".whatif_page", notice=f"Not compared: {exc}"))
    return render_template("ui/whatif.html", folder=None, versions=stored, number=number, report=report,
                           span=WHATIF_SPAN)


def _whatif(connection, context, texts: dict[str, str]) -> dict:
    """The candidate `texts` against the active version, compiled and compared in a child process: both compiles
    (~5.6 s of CPU each for the largest bundles) and the planning held the web's one GIL, slowing every workspace's
    acks on this process. Raises bundle_check.TooCostly past BUNDLE_CHECK_CPU_SECONDS, or Unfinished."""
    active = bundles.active(connection, context.workspace.prefix)  # None before the first activation: no rules
    # Read WHATIF_PAGE at a time as the child takes them (web/bundle_check.py), not all 10,000 held at once.
    since = time.time() - WHATIF_SPAN.total_seconds()
    entries = event_history.read_since(connection, since, limit=WHATIF_EVENTS, page=WHATIF_PAGE)
    taken, last, given_all = 0, None, False

    def events():
        nonlocal taken, last, given_all
        for entry in entries:
            taken, last = taken + 1, entry.id
            yield entry.event, entry.accepted_at
        given_all = True

    report = bundle_check.whatif_in_child(texts, active[1] if active else {}, events(), env=context.rule_env,
                                          seconds=WHATIF_SECONDS,
                                          cpu_seconds=int(current_app.config["BUNDLE_CHECK_CPU_SECONDS"]))
    # Those the child did not take (its planning time ran out) are counted for the page's "of N", not read on:
    # decoding up to 10,000 webhook bodies only to count them held the web's GIL for seconds.
    left = 0 if given_all else event_history.count_since(connection, since, after=last, limit=WHATIF_EVENTS - taken,
                                                          page=WHATIF_PAGE)
    return report | {"logged": taken + left, "seconds": WHATIF_SECONDS}


@bp.get("/subscriptions")
def subscriptions_page():
    """The change feed's subscribers: state, patterns, and their newest deliveries with each attempt."""
    connection = get_redis()
    rows = [{"sub": sub, "deliveries": deliveries.listed(connection, sub.id, limit=10)}
            for sub in subscriptions.all_subscriptions(connection)]
    return render_template("ui/subscriptions.html", rows=rows)


@bp.post("/subscriptions/<sub_id>/deliveries/<delivery_id>/redeliver")
def redeliver(sub_id: str, delivery_id: str):
    """The redeliver button of a failed delivery: the same webhook-id and body, sent again."""
    try:
        found = deliveries.redeliver(get_redis(), sub_id, delivery_id)
    except deliveries.AttemptInFlight as exc:
        return redirect(url_for(".subscriptions_page", notice=f"Not queued: {exc}."))
    notice = "Queued again." if found else f"No delivery {delivery_id} of {sub_id}."
    return redirect(url_for(".subscriptions_page", notice=notice))


@bp.get("/poller")
def poller():
    """Per watched entity set: lag over the last hours (a chart), cursor, last poll (time, cost), held floods, and
    which polls fail now and why."""
    hours, polled = _hours(), poll_status(get_redis(), now=datetime.now(timezone.utc))
    whole = troubles(get_redis()).get(WHOLE)  # every poll of the workspace fails, before any set's own
    lag_sets = [s["entity_set"] for s in polled if s["watched"]]
    window, found = _history(hours, [f"poll_lag:{s}" for s in lag_sets])
    return render_template("ui/poller.html", sets=polled, lag_sets=lag_sets, hours=hours, windows=charts.WINDOWS,
                           lag=_lag_chart(found, lag_sets, window), whole=whole)


@bp.get("/workspaces")
def workspaces_page():
    """The operator's page: every workspace's state, rules version, last event, poll lag and queue."""
    _require_operator()
    rows = workspace_states(get_redis(), get_registry(), now=datetime.now(timezone.utc))
    return render_template("ui/workspaces.html", rows=rows)


@bp.post("/workspaces/<name>/pause")
def pause_workspace(name: str):
    """The pause button: the workspace's events are still accepted into its log, nothing of it runs."""
    return _set_paused(name, registry.pause, "Paused")


@bp.post("/workspaces/<name>/resume")
def resume_workspace(name: str):
    """The resume button: what waited runs, in order."""
    return _set_paused(name, registry.resume, "Resumed")


def _set_paused(name: str, action, done: str):
    _require_operator()
    try:
        action(get_redis(), name)
        notice = f"{done} {name}."
    except registry.UnknownWorkspace:
        notice = f"No workspace {name!r}."
    get_registry().refresh()  # every process follows within seconds; this one at once
    return redirect(url_for(".workspaces_page", notice=notice))


def _require_operator() -> None:
    # require_login already let in the workspace's admin; this page shows and acts on every workspace.
    if not is_operator_session():
        abort(403, "the workspaces page is the operator's: log in with OPERATOR_TOKEN")


def _created_since(hours: float | None) -> datetime | None:
    """The oldest creation time the runs page's `?hours=` shows; None (every run) for none, or for more hours than
    the clock holds (inf, 1e300: an OverflowError). A clamp rather than a 400: no run is older, so it asks for all."""
    if hours is None or not hours > 0:
        return None
    try:
        return datetime.now(timezone.utc) - timedelta(hours=hours)
    except OverflowError:
        return None


def _hours() -> int:
    """The hours the charts show (`?hours=`, one of charts.WINDOWS; DEFAULT_HOURS by default)."""
    hours = request.args.get("hours", type=int)
    return hours if hours in charts.WINDOWS else DEFAULT_HOURS


def _history(hours: int, names: list[str]) -> tuple[charts.Window, dict[str, dict[int, float]]]:
    """The chart window of the last `hours` and the per-minute values of the `names` series in it."""
    window = charts.Window.last(hours, now_minute=int(time.time() // 60))
    found = series.history(get_redis(), workspaces.current().prefix, names, now_minute=window.end,
                           span=window.minutes * window.count)
    return window, found


def _watched_sets() -> list[str]:
    return [s["entity_set"] for s in poll_status(get_redis(), now=datetime.now(timezone.utc)) if s["watched"]]


def _lag_chart(found: dict, lag_sets: list[str], window: charts.Window):
    return charts.lines([charts.Series(name, found[f"poll_lag:{name}"]) for name in lag_sets], window, unit=" s")


def _recent_failures(connection) -> list[dict]:
    """The newest failed runs of the last 24 h (at most FAILURES_SHOWN, among the newest FAILURES_SCAN runs)."""
    since = (datetime.now(timezone.utc) - RECENT).timestamp()
    ids = [i.decode() for i in connection.zrevrangebyscore(key("runs"), "+inf", since, start=0, num=FAILURES_SCAN)]
    failed = []
    for start in range(0, len(ids), 200):  # batches: most pages stop at the first
        raws = connection.mget([key(f"run:{i}") for i in ids[start:start + 200]])
        failed += [run for run in (decode_run(raw) for raw in raws if raw is not None) if run["status"] == "failed"]
        if len(failed) >= FAILURES_SHOWN:
            break
    return failed[:FAILURES_SHOWN]


def _rule_row(connection, rule, since: datetime) -> dict:
    ids = [i.decode() for i in connection.zrevrangebyscore(
        key(f"runs:rule:{rule.id}"), "+inf", since.timestamp(), start=0, num=PER_RULE_SCAN)]
    recent = [r for r in (load_run(connection, i) for i in ids) if r]
    last_id = connection.zrevrange(key(f"runs:rule:{rule.id}"), 0, 0)
    paused = connection.get(key(f"rule:paused:{rule.id}"))
    state = "paused" if paused is not None else "disabled" if not rule.enabled else rule.mode
    return {"rule": rule, "state": state, "paused_reason": paused.decode() if paused else "",
            "last": load_run(connection, last_id[0].decode()) if last_id else None,
            "runs_24h": len(recent), "failures_24h": sum(r["status"] == "failed" for r in recent)}


def _sessions(token_hash: str) -> list[str]:
    """The session cookies that prove `token_hash`'s token was given, the one to set first.

    A stolen cookie reveals nothing of the token. It is made from the token's hash (all the registry keeps of
    it) under the keys of SECRETS_KEY: made from the hash alone, anyone who reads Redis (a dump, a backup)
    could make every workspace's cookie. One per key, so a rotation of SECRETS_KEY ends no session early.
    """
    try:
        return get_keyring().tags(b"dashboard session\0" + token_hash.encode())
    except SecretsKeyError:  # no registry then: the hash is in no Redis, only in this process's settings
        return [hmac.new(token_hash.encode(), b"inloox-automation dashboard", hashlib.sha256).hexdigest()]
