"""Usage per workspace, per UTC day and per month: what a hosted plan bills and limits.

    ws:<name>:usage:<yyyy-mm-dd>   hash, kept KEEP_DAYS days after its day
    ws:<name>:usage:<yyyy-mm>      hash, the same counts for the whole month (what the limits read)

Fields of both:
    events:<source>           events accepted (webhook, inloox, chat, schedule, manual); counted by the
                              event log's append script, so only events really stored count
    runs                      runs started (stored for a matched rule, whatever became of them)
    billable_runs             runs that performed at least one InLoox write or notification; counted
                              once per run, in the script that stores its status and its `billed`
                              mark (exact: the monthly limit reads it)
    rule:<rule id>            billable runs of that rule
    inloox_requests:read      GET requests to InLoox (polling, scans and runs)
    inloox_requests:write     every other request to InLoox
    notifications             notify steps done
    deliveries                change-feed deliveries delivered

Everything but events and billable runs rides on the counters of workers/metrics.py: `usage_fields`
says which counter adds to which field, and the metrics batch writes them (no round trip of their own).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta, timezone

import redis

from workers.metering import expiry

SOURCES = ("webhook", "inloox", "chat", "schedule", "manual")
KEEP_DAYS = 400
DAY_TTL = (KEEP_DAYS + 1) * 86400
MONTH_TTL = (KEEP_DAYS + 32) * 86400
BILLABLE_VERBS = frozenset({"create", "update", "delete", "invoke", "notify"})
RULE = "rule:"


def day_key(workspace: str, day: date) -> str:
    """The hash of `workspace`'s usage on `day` (UTC)."""
    return f"ws:{workspace}:usage:{day.isoformat()}"


def month_key(workspace: str, month: str) -> str:
    """The hash of `workspace`'s usage in `month` ("yyyy-mm")."""
    return f"ws:{workspace}:usage:{month}"


def month_of(day: date) -> str:
    """"yyyy-mm" of `day`."""
    return day.isoformat()[:7]


def today(now: datetime | None = None) -> date:
    """The UTC day of `now` (default: the clock's)."""
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc).date()


def event_field(source: str) -> str:
    """The field counting accepted events of `source`."""
    return f"events:{source}"


def request_field(method: str) -> str:
    """The field counting an InLoox request sent with `method`."""
    return "inloox_requests:read" if method.upper() == "GET" else "inloox_requests:write"


def usage_fields(name: str, labels: Mapping[str, str]) -> tuple[str, ...]:
    """The usage fields a `workers.metrics` counter adds to (none for most counters)."""
    if name == "runs_started":
        return ("runs",)
    if name == "steps" and labels.get("verb") == "notify" and labels.get("status") == "done":
        return ("notifications",)
    if name == "deliveries" and labels.get("status") == "delivered":
        return ("deliveries",)
    return ()


def add(target, counts: Mapping[tuple[str, str], int], *, day: date) -> None:
    """Queue on `target` the counts {(workspace, field): n} for `day` and its month."""
    ttls = {}
    for (workspace, field), amount in counts.items():
        for key, ttl in ((day_key(workspace, day), DAY_TTL), (month_key(workspace, month_of(day)), MONTH_TTL)):
            target.hincrby(key, field, amount)
            ttls[key] = ttl
    for key, ttl in ttls.items():
        expiry.expire(target, key, ttl)


def is_billable(run: dict) -> bool:
    """True when the run performed at least one InLoox write or notification."""
    return any(s.get("status") == "done" and s.get("verb") in BILLABLE_VERBS for s in run.get("steps", ()))


def bill(workspace: str, run: dict, *, day: date) -> list[tuple[str, int, dict[str, int]]] | None:
    """Count `run` as billable once: marks it `billed` and returns its counts, [(hash, its TTL or 0, {field: 1})],
    the month's `billable_runs` first; None when the run is not billable (yet) or was counted before.

    The counts are written with the record that says `billed`, in one script (workers/runs.py `save_run`'s
    `counts`): a run's end shares a pipeline with others', and a connection lost in the middle of one leaves
    Redis with the commands sent before the cut. Counted apart from their mark, the counts of a run whose
    record was not stored were counted again when its event was handled again (the customer billed twice).
    """
    if run.get("billed") or not is_billable(run):
        return None
    run["billed"] = day.isoformat()
    fields = {"billable_runs": 1, RULE + run["rule_id"]: 1}
    month, daily = month_key(workspace, month_of(day)), day_key(workspace, day)
    return [(month, MONTH_TTL if expiry.due(month) else 0, fields), (daily, DAY_TTL if expiry.due(daily) else 0, fields)]


def days(first: date, last: date) -> list[date]:
    """Every day from `first` to `last`, both included."""
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def read_days(connection: redis.Redis, workspace: str, span: Iterable[date]) -> dict[date, dict[str, int]]:
    """{day: {field: count}} of `workspace` over `span` (one round trip)."""
    span = list(span)
    with connection.pipeline(transaction=False) as pipe:
        for day in span:
            pipe.hgetall(day_key(workspace, day))
        replies = pipe.execute()
    return {day: {k.decode(): int(v) for k, v in fields.items()} for day, fields in zip(span, replies)}


def read_month(connection: redis.Redis, workspace: str, month: str) -> dict[str, int]:
    """{field: count} of `workspace` in `month` ("yyyy-mm")."""
    return {k.decode(): int(v) for k, v in connection.hgetall(month_key(workspace, month)).items()}


def report(workspace: str, first: str, last: str, counts: Iterable[Mapping[str, int]]) -> dict:
    """The usage report (the API's JSON) of the summed `counts` from `first` to `last`."""
    total: dict[str, int] = {}
    for each in counts:
        for field, amount in each.items():
            total[field] = total.get(field, 0) + amount
    rules = sorted(((f[len(RULE):], n) for f, n in total.items() if f.startswith(RULE)), key=lambda r: (-r[1], r[0]))
    return {
        "workspace": workspace, "from": first, "to": last,
        "events": {source: total.get(event_field(source), 0) for source in SOURCES},
        "runs": total.get("runs", 0), "billable_runs": total.get("billable_runs", 0),
        "inloox_requests": {"read": total.get("inloox_requests:read", 0), "write": total.get("inloox_requests:write", 0)},
        "notifications": total.get("notifications", 0), "deliveries": total.get("deliveries", 0),
        "rules": [{"rule": rule, "billable_runs": n} for rule, n in rules],
    }


def over(connection: redis.Redis, workspace: str, first: date, last: date) -> dict:
    """The usage report of `workspace` from `first` to `last` (UTC days, both included)."""
    counted = read_days(connection, workspace, days(first, last))
    return report(workspace, first.isoformat(), last.isoformat(), counted.values())
