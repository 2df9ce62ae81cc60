"""workers/settings.py: which value each setting takes, from an environment alone (no files)."""
from __future__ import annotations

import pytest

from workers.settings import DEFAULTS, settings_from


def test_no_environment_gives_the_defaults_of_make_run():
    config = settings_from({})
    assert config["REDIS_URL"] == DEFAULTS["REDIS_URL"] == "redis://127.0.0.1:6390/0"
    assert config["INLOOX_URL"] == DEFAULTS["INLOOX_URL"] == "http://127.0.0.1:8090/api/odata/"
    assert config["INLOOX_API_KEY"] == "sandbox-engine-token"
    assert config["WEBHOOK_SOURCES"] == {}


@pytest.mark.parametrize("environ, name, expected", [
    ({"REDIS_PORT": "6491"}, "REDIS_URL", "redis://127.0.0.1:6491/0"),
    ({"REDIS_PORT": "6491", "REDIS_URL": "redis://cache.internal:6379/2"}, "REDIS_URL", "redis://cache.internal:6379/2"),
    ({"SANDBOX_PORT": "9190"}, "INLOOX_URL", "http://127.0.0.1:9190/api/odata/"),
    ({"SANDBOX_PORT": "9190", "INLOOX_URL": "https://app.inloox.com/api/odata/"}, "INLOOX_URL",
     "https://app.inloox.com/api/odata/"),
])
def test_a_port_alone_gives_the_url_make_run_builds_from_it(environ, name, expected):
    assert settings_from(environ)[name] == expected


def test_ports_are_not_settings_of_the_app():
    # rq-dashboard, mounted in the app, would take a REDIS_PORT in the app's config for its own.
    assert "REDIS_PORT" not in settings_from({"REDIS_PORT": "6491"})


def test_webhook_secrets_are_found_by_their_prefix():
    config = settings_from({"WEBHOOK_SECRET_FORMS": "whsec_new whsec_old", "WEBHOOK_SECRET_CRM_EU": "whsec_c"})
    assert config["WEBHOOK_SOURCES"] == {"forms": ["whsec_new", "whsec_old"], "crm-eu": ["whsec_c"]}


def test_the_poller_and_scheduler_settings_are_read_here_too():
    from workers.scheduler import settings_from as scheduler_settings

    config = settings_from({"POLL_SCAN_SECONDS": "60 Contact=30", "SCHEDULE_INTERVAL": "0.5"})
    assert (config["POLL_INTERVAL"], config["POLL_SCAN_SECONDS"]) == ("2", "60 Contact=30")
    assert scheduler_settings(config).interval == 0.5


@pytest.mark.parametrize("interval", ["5", "300"])
def test_a_tick_between_two_looks_of_the_scheduler_fires_whatever_its_interval(interval):
    from datetime import datetime, timedelta, timezone

    from engine.schedules import due_ticks
    from workers.scheduler import settings_from as scheduler_settings

    settings = scheduler_settings(settings_from({"SCHEDULE_INTERVAL": interval}))
    tick = datetime(2025, 4, 1, 9, tzinfo=timezone.utc)
    look = tick - timedelta(seconds=1)
    # The round after the one a second before the tick comes an interval later (a round takes its own time too).
    then = look + timedelta(seconds=settings.interval + 1)
    assert due_ticks("0 9 * * *", "UTC", last=look, now=then, grace=settings.grace) == [tick]


@pytest.mark.parametrize("text, seconds", [("5", 5.0), ("0", 0.0), ("30.5", 30.5)])
def test_a_feed_poll_reads_back_as_far_as_poll_overlap_seconds_says(text, seconds):
    """The 5 s a poll reads back before its cursor, for rows InLoox stamped before it committed, was fixed in the code:
    an account whose commits take longer (bulk imports) lost those changes, with nothing to turn."""
    from workers.poller.settings import poller_settings

    assert poller_settings(settings_from({"POLL_OVERLAP_SECONDS": text})).overlap == seconds


@pytest.mark.parametrize("text", ["-1", "nan", "3601", "soon"])
def test_a_poll_overlap_that_is_no_seconds_from_0_to_an_hour_stops_the_process_naming_it(text):
    from workers.poller.settings import poller_settings

    with pytest.raises(SystemExit, match="POLL_OVERLAP_SECONDS"):
        poller_settings(settings_from({"POLL_OVERLAP_SECONDS": text}))
