"""Schedules with real processes: each tick fires once however many schedulers run; catch-up after downtime.

Ticks are made due by seeding the rule's last look (`schedule:last`) in Redis before the schedulers
start, as if they had been running until then; no test waits for the clock to reach a tick.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import redis
from workers import eventlog

from tests.support.bundled import large_bundle
from tests.support.processes import wait_until
from tests.support.stack import all_runs, write_rule
from workers import scheduler, workspaces

LAST_KEY = "ws:default:" + scheduler.LAST_KEY

RULE = """
id: {id}
description: Tell the team the time of every tick.
when:
  - schedule: "{cron}"
    catch_up: {catch_up}
then:
  - notify: "{{{{ env.TEAM_CHANNEL_URL }}}}"
    title: Tick
    body: "{id} fired for {{{{ schedule.time }}}}"
"""


def minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def seed_last_look(redis_url: str, **looks: datetime) -> redis.Redis:
    connection = redis.Redis.from_url(redis_url)
    connection.zadd(LAST_KEY, {rule_id.replace("_", "-"): moment.timestamp() for rule_id, moment in looks.items()})
    return connection


def queued_ticks(connection) -> list[tuple[str, str]]:
    events = [entry.event for entry in eventlog.waiting(connection, workspace="default")]
    return [(event["kind"], event["payload"]["time"]) for event in events]


def test_a_due_tick_fires_exactly_once_with_two_schedulers(stack, receiver, rules_dir, redis_url):
    write_rule(rules_dir, "every-minute", RULE.format(id="every-minute", cron="* * * * *", catch_up="skip"))
    tick = minute(datetime.now(timezone.utc))
    connection = seed_last_look(redis_url, every_minute=tick - timedelta(seconds=30))

    first, second = stack.scheduler("scheduler-1"), stack.scheduler("scheduler-2")
    wait_until(lambda: queued_ticks(connection), 20, "the tick's event")
    # A look after the tick (not "a second after it": a test started in a minute's first second saw the
    # tick fire at 0.5 s, and the schedulers, whose next tick was a minute ahead, looked no more).
    wait_until(lambda: connection.zscore(LAST_KEY, "every-minute") > tick.timestamp(), 10, "a look after the tick")
    time.sleep(1.0)  # both schedulers turn every 0.5 s: each has had its chance to fire the tick again
    first.stop()
    second.stop()

    # Each tick is accepted once (a minute may have turned meanwhile: that tick, too, only once).
    ticks = Counter(queued_ticks(connection))
    assert ticks[("every-minute", tick.isoformat().replace("+00:00", "Z"))] == 1
    assert set(ticks.values()) == {1}
    assert "fired schedule:every-minute:" in first.output() + second.output()

    stack.worker()
    wait_until(lambda: len(receiver.received) == len(ticks) and
               {r["status"] for r in all_runs(redis_url)} == {"succeeded"}, 20, "one notification per tick")
    # In either order: with two ticks (a minute turned), the worker may send the later one first.
    assert any(f"every-minute fired for {tick.isoformat().replace('+00:00', 'Z')}" in str(r["body"])
               for r in receiver.received), receiver.received
    assert len(all_runs(redis_url)) == len(ticks)


def test_after_downtime_skip_fires_nothing_and_latest_fires_the_last_missed_tick(stack, receiver, rules_dir,
                                                                                   redis_url):
    now = datetime.now(timezone.utc)
    missed = minute(now) - timedelta(minutes=10)  # an hourly tick ten minutes ago: well past the grace
    cron = f"{missed.minute} * * * *"
    for catch_up in ("skip", "latest"):
        write_rule(rules_dir, catch_up, RULE.format(id=f"catch-up-{catch_up}", cron=cron, catch_up=catch_up))
    down_since = now - timedelta(hours=3)  # the schedulers "stopped" three hours ago: three ticks missed
    connection = seed_last_look(redis_url, catch_up_skip=down_since, catch_up_latest=down_since)

    scheduler = stack.scheduler()
    wait_until(lambda: all(connection.zscore(LAST_KEY, r) > now.timestamp() for r in ("catch-up-skip", "catch-up-latest")),
               20, "the scheduler to look at both rules")
    scheduler.stop()

    assert queued_ticks(connection) == [("catch-up-latest", missed.isoformat().replace("+00:00", "Z"))]
    stack.worker()
    [message] = wait_until(lambda: receiver.received, 20, "the caught-up tick's notification")
    assert f"catch-up-latest fired for {missed.isoformat().replace('+00:00', 'Z')}" in str(message["body"])
    assert [r["rule_id"] for r in all_runs(redis_url)] == ["catch-up-latest"]


def test_a_schedule_on_a_date_that_never_comes_keeps_no_other_schedule_from_firing(stack, rules_dir, redis_url):
    # February 31st: five valid cron fields, and no such day. Its file sorts first, so its rule is looked at first.
    write_rule(rules_dir, "february-31", RULE.format(id="february-31", cron="0 9 31 2 *", catch_up="skip"))
    write_rule(rules_dir, "minutely", RULE.format(id="every-minute", cron="* * * * *", catch_up="skip"))
    tick = minute(datetime.now(timezone.utc))
    connection = seed_last_look(redis_url, february_31=tick - timedelta(seconds=30),
                                every_minute=tick - timedelta(seconds=30))

    scheduler = stack.scheduler()
    wait_until(lambda: queued_ticks(connection), 20, "the every-minute rule's tick")
    scheduler.stop()

    assert {rule_id for rule_id, _ in queued_ticks(connection)} == {"every-minute"}
    assert "february-31" in scheduler.output() and "never" in scheduler.output(), scheduler.output()[-3000:]


def cli(redis_url, sandbox, rules_dir):
    """`flask` commands in a second shell, as the stack's rules folder and Redis are configured."""
    from app import create_app

    app = create_app({"TESTING": True, "REDIS_URL": redis_url, "INLOOX_URL": sandbox.base_url,
                      "INLOOX_API_KEY": sandbox.token, "RULES_PATH": str(rules_dir), "INLOOX_REQUESTS_PER_SECOND": "0"})
    return app.test_cli_runner()


BERLIN_DIGEST = RULE.format(id="morning-digest", cron="0 9 * * 1-5", catch_up="skip").replace(
    '    catch_up: skip\n', '    timezone: Europe/Berlin\n')


def test_rules_list_shows_a_schedule_rule_s_next_tick_in_its_time_zone(redis_url, sandbox, rules_dir):
    write_rule(rules_dir, "digest", BERLIN_DIGEST)
    write_rule(rules_dir, "every-minute", RULE.format(id="every-minute", cron="* * * * *", catch_up="skip"))

    listed = cli(redis_url, sandbox, rules_dir).invoke(args=["rules", "list"])

    assert listed.exit_code == 0, listed.output
    [digest] = [line for line in listed.output.splitlines() if line.startswith("morning-digest")]
    assert re.search(r"next tick \d{4}-\d\d-\d\dT09:00:00\+0[12]:00 \(Europe/Berlin\)$", digest), digest
    when = datetime.fromisoformat(digest.split("next tick ")[1].split(" ")[0])
    assert when.weekday() < 5 and when > datetime.now(timezone.utc)
    [minutely] = [line for line in listed.output.splitlines() if line.startswith("every-minute")]
    assert re.search(r"next tick \S+:00\+00:00 \(UTC\)$", minutely), minutely


def test_rules_run_tick_fires_the_next_tick_once_and_the_scheduler_not_again(stack, receiver, redis_url, sandbox,
                                                                             rules_dir):
    write_rule(rules_dir, "digest", BERLIN_DIGEST)
    runner = cli(redis_url, sandbox, rules_dir)

    fired = runner.invoke(args=["rules", "run", "morning-digest", "--tick"])
    assert fired.exit_code == 0, fired.output
    assert re.match(r"fired: the tick of \S+T09:00:00\+0[12]:00 \(Europe/Berlin\), event schedule:morning-digest:",
                    fired.output), fired.output
    connection = redis.Redis.from_url(redis_url)
    [(rule_id, time)] = queued_ticks(connection)
    assert rule_id == "morning-digest" and time == fired.output.split("schedule:morning-digest:")[1].split(",")[0]

    again = runner.invoke(args=["rules", "run", "morning-digest", "--tick"])
    assert again.exit_code == 0 and again.output.startswith("already fired before: the tick of"), again.output
    # `rules list` names the tick that is still to fire, not the one fired by hand (it listed that one before).
    listed = runner.invoke(args=["rules", "list"])
    [digest] = [line for line in listed.output.splitlines() if line.startswith("morning-digest")]
    shown = datetime.fromisoformat(digest.split("next tick ")[1].split(" ")[0])
    assert shown > datetime.fromisoformat(time.replace("Z", "+00:00")) and shown.hour == 9, digest
    # When that tick comes, the scheduler finds it fired: nothing more (its own path, `now` moved there).
    tick = datetime.fromisoformat(time.replace("Z", "+00:00"))
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token, rules_path=str(rules_dir))):
        seed_last_look(redis_url, morning_digest=tick - timedelta(seconds=30))
        from engine import load_rules
        assert scheduler.fire_due(connection, load_rules(rules_dir), now=tick + timedelta(seconds=5)) == []
    assert queued_ticks(connection) == [(rule_id, time)]

    stack.worker()
    [message] = wait_until(lambda: receiver.received, 20, "the tick's notification")
    assert f"morning-digest fired for {time}" in str(message["body"])


def test_rules_run_tick_refuses_a_rule_without_a_schedule(redis_url, sandbox, rules_dir):
    write_rule(rules_dir, "by-hand", "id: by-hand\nwhen: {manual: true}\nthen:\n  - notify: x\n    body: y\n")
    refused = cli(redis_url, sandbox, rules_dir).invoke(args=["rules", "run", "by-hand", "--tick"])
    assert refused.exit_code == 1 and "by-hand has no schedule trigger" in refused.output


def test_between_ticks_a_scheduler_asks_redis_nothing_and_still_fires_the_next_tick(redis_url, sandbox, rules_dir):
    """An idle workspace's hourly digest costs no Redis command per round; its tick still fires, once."""
    from engine import load_rules
    write_rule(rules_dir, "hourly", RULE.format(id="hourly", cron="0 * * * *", catch_up="skip"))
    ruleset = load_rules(rules_dir)
    connection = redis.Redis.from_url(redis_url)
    upcoming = scheduler.Upcoming()
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token, rules_path=str(rules_dir))):
        assert scheduler.fire_due(connection, ruleset, now=hour + timedelta(minutes=1), upcoming=upcoming) == []
        calls = lambda: sum(int(v["calls"]) for v in connection.info("commandstats").values())  # noqa: E731
        before = calls()
        for minutes in range(2, 60, 5):  # a round every few minutes of the hour
            assert scheduler.fire_due(connection, ruleset, now=hour + timedelta(minutes=minutes), upcoming=upcoming) == []
        assert calls() - before <= 1  # the INFO of the first calls() itself; before: two commands a round
        connection.delete(LAST_KEY)  # Redis lost it meanwhile (a restart without its data): the tick still fires
        next_hour = hour + timedelta(hours=1)
        assert scheduler.fire_due(connection, ruleset, now=next_hour + timedelta(seconds=3), upcoming=upcoming) == [
            f"schedule:hourly:{next_hour.isoformat().replace('+00:00', 'Z')}"]
        assert scheduler.fire_due(connection, ruleset, now=next_hour + timedelta(seconds=8), upcoming=upcoming) == []


def test_a_tick_fired_by_hand_weeks_ahead_keeps_its_claim_until_its_time_is_long_past(redis_url, sandbox, rules_dir):
    """`rules run --tick` on a yearly schedule: the claim must still stand when the scheduler reaches the tick."""
    month = (datetime.now(timezone.utc).month + 5) % 12 + 1  # six months ahead: far beyond the claim's week
    write_rule(rules_dir, "yearly", RULE.format(id="yearly-review", cron=f"0 9 1 {month} *", catch_up="skip"))

    fired = cli(redis_url, sandbox, rules_dir).invoke(args=["rules", "run", "yearly-review", "--tick"])
    assert fired.exit_code == 0 and fired.output.startswith("fired: the tick of "), fired.output

    time = fired.output.split("schedule:yearly-review:")[1].split(",")[0]
    tick = datetime.fromisoformat(time.replace("Z", "+00:00"))
    claim = redis.Redis.from_url(redis_url).ttl(f"ws:default:schedule:fired:yearly-review:{time}")
    # Until the tick and FIRED_TTL after it, as for a tick the scheduler fires itself.
    assert claim >= (tick - datetime.now(timezone.utc)).total_seconds() + scheduler.FIRED_TTL - 60, (claim, tick)


def test_a_rule_enabled_again_fires_no_tick_that_came_while_it_was_disabled(redis_url, sandbox, rules_dir):
    """`catch_up: latest` catches up a scheduler's downtime, not the time a person had the rule switched off."""
    from engine import load_rules
    text = RULE.format(id="hourly-latest", cron="0 * * * *", catch_up="latest")
    write_rule(rules_dir, "hourly", text)
    enabled = load_rules(rules_dir)
    write_rule(rules_dir, "hourly", text.replace("then:", "enabled: false\nthen:"))
    _away_two_hours_fires_nothing_after(redis_url, sandbox, rules_dir, enabled, load_rules(rules_dir))


def test_a_rule_deleted_and_added_again_fires_no_tick_from_the_time_it_was_gone(redis_url, sandbox, rules_dir):
    """A rule removed from the rules kept its last look in `schedule:last` (one entry per rule id ever); added again
    under the same id hours later, `catch_up: latest` fired the last tick of the time it did not exist."""
    from engine import load_rules
    write_rule(rules_dir, "hourly", RULE.format(id="hourly-latest", cron="0 * * * *", catch_up="latest"))
    with_rule = load_rules(rules_dir)
    (rules_dir / "hourly.yaml").unlink()
    write_rule(rules_dir, "other", RULE.format(id="daily", cron="0 3 * * *", catch_up="skip"))
    kept = _away_two_hours_fires_nothing_after(redis_url, sandbox, rules_dir, with_rule, load_rules(rules_dir))
    assert kept == [b"daily"]  # while it was gone, nothing of it was kept


def _away_two_hours_fires_nothing_after(redis_url, sandbox, rules_dir, present, away) -> list[bytes]:
    """The scheduler sees rule hourly-latest (`present`) at 0:01, then `away` (disabled, or gone) until 2:30, when
    it has `present` again: no tick of the two hours fires, the 3:00 tick fires once. Returns `schedule:last`'s
    members as the time away ended."""
    connection = redis.Redis.from_url(redis_url)
    upcoming = scheduler.Upcoming()
    # Yesterday at 10:00, not at this hour: run between 1:00 and 3:00 UTC, the two hours away held the 3:00 tick of
    # the `daily` rule beside it (`0 3 * * *`), which fired then.
    hour = datetime.now(timezone.utc).replace(hour=10, minute=0, second=0, microsecond=0) - timedelta(days=1)
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token, rules_path=str(rules_dir))):
        assert scheduler.fire_due(connection, present, now=hour + timedelta(minutes=1), upcoming=upcoming) == []
        # Away for two hours: the scheduler keeps turning, and the 1:00 and 2:00 ticks pass.
        for minutes in range(5, 150, 5):
            assert scheduler.fire_due(connection, away, now=hour + timedelta(minutes=minutes), upcoming=upcoming) == []
        kept = connection.zrange(LAST_KEY, 0, -1)
        # Back at 2:30: the 2:00 tick came while it was away; nothing fires, here or in a scheduler started afresh.
        assert scheduler.fire_due(connection, present, now=hour + timedelta(minutes=150), upcoming=upcoming) == []
        assert scheduler.fire_due(connection, present, now=hour + timedelta(minutes=151)) == []
        # The next tick fires on time, once.
        three = hour + timedelta(hours=3)
        assert scheduler.fire_due(connection, present, now=three + timedelta(seconds=2), upcoming=upcoming) == [
            f"schedule:hourly-latest:{three.isoformat().replace('+00:00', 'Z')}"]
    assert queued_ticks(connection) == [("hourly-latest", three.isoformat().replace("+00:00", "Z"))]
    return kept


def test_a_tick_and_the_rules_last_look_are_stored_together_or_not_at_all(redis_url, sandbox, rules_dir):
    """A connection lost right after a tick's event was stored left the rule's last look behind that tick: its claim
    lasts FIRED_TTL (7 days), and a scheduler back after longer, with `catch_up: latest` on a monthly rule, found the
    same tick still missed and fired it again. The tick and the look now go in one transaction."""
    from engine import load_rules
    from tests.support.cut import MidWriteCut
    write_rule(rules_dir, "hourly", RULE.format(id="hourly-latest", cron="0 * * * *", catch_up="latest"))
    ruleset = load_rules(rules_dir)
    direct = redis.Redis.from_url(redis_url)
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    direct.zadd(LAST_KEY, {"hourly-latest": (hour - timedelta(minutes=30)).timestamp()})
    direct.script_load(eventlog._APPEND_SCRIPT.script)  # as in a running deployment: no NOSCRIPT round first
    claim = f"ws:default:schedule:fired:hourly-latest:{hour.isoformat().replace('+00:00', 'Z')}"
    with MidWriteCut(direct.connection_pool.connection_kwargs["port"]) as proxy, \
            workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token,
                                                  rules_path=str(rules_dir))):
        connection = redis.Redis.from_url(proxy.url)
        proxy.arm(lambda command: b"schedule:fired:hourly-latest" in command, after=1)  # the tick's append, no more
        with pytest.raises(redis.ConnectionError):
            scheduler.fire_due(connection, ruleset, now=hour + timedelta(seconds=5))
        proxy.wait_cut()
    fired, look = direct.exists(claim), direct.zscore(LAST_KEY, "hourly-latest")
    assert (fired, look >= hour.timestamp()) in ((1, True), (0, False)), (fired, look)


def test_a_tick_whose_event_redis_refuses_fires_once_the_log_is_mended(redis_url, sandbox, rules_dir):
    """Redis runs every command of a MULTI even when one fails: the last look stored with a tick's event it refused
    (the log's key of another type) moved past the tick, and the tick never fired once the log was mended."""
    from engine import load_rules
    write_rule(rules_dir, "hourly", RULE.format(id="hourly", cron="0 * * * *", catch_up="latest"))
    ruleset = load_rules(rules_dir)
    connection = redis.Redis.from_url(redis_url)
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    connection.zadd(LAST_KEY, {"hourly": (hour - timedelta(minutes=30)).timestamp()})
    log = eventlog.stream_key("default")
    connection.set(log, "not a stream")
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token, rules_path=str(rules_dir))):
        with pytest.raises(redis.ResponseError):
            scheduler.fire_due(connection, ruleset, now=hour + timedelta(seconds=5))
        connection.delete(log)
        assert scheduler.fire_due(connection, ruleset, now=hour + timedelta(seconds=10)) == [
            f"schedule:hourly:{hour.isoformat().replace('+00:00', 'Z')}"]
    assert queued_ticks(connection) == [("hourly", hour.isoformat().replace("+00:00", "Z"))]


@pytest.mark.parametrize("catch_up, noticed", [("latest", 40), ("skip", 31)])
def test_a_schedule_edited_mid_interval_fires_no_tick_its_old_schedule_did_not_have(redis_url, sandbox, rules_dir,
                                                                                   catch_up, noticed):
    """Between ticks a scheduler writes no last look, so `schedule:last` is the time of the rule's last tick: an hourly
    rule edited to `30 * * * *` at 9:40 found its 9:30 tick "missed" since 9:00 and fired it (`latest`; with `skip`,
    edited at 9:31, within the grace), a tick that came while the rule's schedule had none and the scheduler ran."""
    from engine import load_rules
    write_rule(rules_dir, "report", RULE.format(id="report", cron="0 * * * *", catch_up=catch_up))
    hourly = load_rules(rules_dir)
    write_rule(rules_dir, "report", RULE.format(id="report", cron="30 * * * *", catch_up=catch_up))
    half_past = load_rules(rules_dir)
    connection = redis.Redis.from_url(redis_url)
    upcoming = scheduler.Upcoming()
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
    with workspaces.using(workspaces.Workspace("default", sandbox.base_url, sandbox.token, rules_path=str(rules_dir))):
        assert scheduler.fire_due(connection, hourly, now=hour - timedelta(seconds=58), upcoming=upcoming) == []
        fired = scheduler.fire_due(connection, hourly, now=hour + timedelta(seconds=2), upcoming=upcoming)
        assert fired == [f"schedule:report:{hour.isoformat().replace('+00:00', 'Z')}"]
        # Rounds every 5 s until the edit is noticed: the old schedule has no tick meanwhile.
        for seconds in range(7, noticed * 60, 5):
            now = hour + timedelta(seconds=seconds)
            assert scheduler.fire_due(connection, hourly, now=now, upcoming=upcoming) == []
        edited = hour + timedelta(minutes=noticed, seconds=2)
        assert scheduler.fire_due(connection, half_past, now=edited, upcoming=upcoming) == []
        # The new schedule's first tick after the edit fires on time, once.
        next_tick = hour + timedelta(hours=1, minutes=30)
        assert scheduler.fire_due(connection, half_past, now=next_tick + timedelta(seconds=2), upcoming=upcoming) == [
            f"schedule:report:{next_tick.isoformat().replace('+00:00', 'Z')}"]
        assert scheduler.fire_due(connection, half_past, now=next_tick + timedelta(seconds=7), upcoming=upcoming) == []


def test_a_large_bundle_compiling_for_one_workspace_holds_up_no_other_workspaces_tick(stack, sandbox, tmp_path,
                                                                                      redis_url):
    """One customer's first round after activating a 1 MB bundle compiles it (seconds of CPU): another customer's due
    tick fires meanwhile, and the first customer's own due tick fires once its rules are compiled, once."""
    from workers import bundles

    quick = tmp_path / "quick"
    quick.mkdir()
    write_rule(quick, "every-minute", RULE.format(id="every-minute", cron="* * * * *", catch_up="skip"))
    # big first: a round takes the workspaces in this order (and by name), so a compile on the loop came before quick.
    (tmp_path / "workspaces.yaml").write_text(
        f"workspaces:\n  big:\n    inloox_url: {sandbox.base_url}\n    inloox_api_key: {sandbox.token}\n"
        f"  quick:\n    inloox_url: {sandbox.base_url}\n    inloox_api_key: {sandbox.token}\n    rules: {quick}\n")
    stack.env.update(WORKSPACES_FILE=str(tmp_path / "workspaces.yaml"))
    connection = redis.Redis.from_url(redis_url)
    files = {**large_bundle(), "ping.yaml": RULE.format(id="ping", cron="* * * * *", catch_up="skip")}
    began = time.monotonic()
    assert isinstance(bundles.upload(connection, "ws:big:", files), bundles.Version)  # validated: its YAML parsed
    parsing = time.monotonic() - began  # most of what a compile costs (~4-7 s here)
    tick = minute(datetime.now(timezone.utc))
    for name, rule_id in (("quick", "every-minute"), ("big", "ping")):
        connection.zadd(f"ws:{name}:{scheduler.LAST_KEY}", {rule_id: (tick - timedelta(seconds=30)).timestamp()})

    process = stack.scheduler()
    wait_until(lambda: "every 0.5s" in process.output(), 30, "the scheduler's start")
    started = time.monotonic()
    wait_until(lambda: ticks_of(connection, "quick"), 60, "quick's tick")
    took = time.monotonic() - started
    assert took < parsing / 3, f"quick's tick took {took:.1f} s; the bundle parsed in {parsing:.1f} s"
    assert not ticks_of(connection, "big"), "quick's tick fired only after big's rules were compiled"
    wait_until(lambda: ticks_of(connection, "big"), 60, "big's tick, once its rules are compiled")
    wait_until(lambda: connection.zscore(f"ws:big:{scheduler.LAST_KEY}", "ping") > tick.timestamp(), 10, "a look after")
    time.sleep(1.0)  # two more rounds: each could have fired the tick again
    process.stop()
    ticks = Counter(ticks_of(connection, "big"))  # a minute may have turned meanwhile: that tick, too, only once
    assert ticks[("ping", tick.isoformat().replace("+00:00", "Z"))] == 1 and set(ticks.values()) == {1}, ticks


def ticks_of(connection, workspace: str) -> list[tuple[str, str]]:
    """The (rule id, tick time) of the workspace's accepted schedule events."""
    events = [entry.event for entry in eventlog.waiting(connection, workspace=workspace)]
    return [(event["kind"], event["payload"]["time"]) for event in events if event["source"] == "schedule"]
